"""Submitting files and folders to the input bucket (``ocrpipe submit PATH...``).

A file given by name becomes ``<prefix><file name>``. A folder is walked recursively; its
files become ``<prefix><path relative to the folder>`` (with ``/``), and hidden files and
folders (a name starting with ``.``) are skipped. A file whose bytes are already in the
bucket under its name (same CRC32C, or MD5, as GCS keeps them) is not uploaded again, so
submitting a folder twice costs one listing and no new documents; ``force`` uploads it
anyway (a new generation: the document is processed again).

Uploads run in a thread pool through the :class:`~ocrpipe.storage.ObjectStore` protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ocrpipe.operations.batch_status import listing_prefix
from ocrpipe.storage import ObjectInfo, ObjectStore, file_checksums

UPLOAD_THREADS = 8
CONTENT_TYPES = {
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".webp": "image/webp",
}


class DuplicateName(ValueError):
    """Two local files would get the same object name; the message names both."""


def content_type(path: Path) -> str:
    """Only a hint for people browsing the bucket: the splitter reads the content."""
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


@dataclass(frozen=True)
class LocalFile:
    path: Path
    name: str  # object name in the input bucket
    size: int


def collect(paths: Sequence[Path], prefix: str = "") -> list[LocalFile]:
    """The files to submit, in name order. Raises :class:`DuplicateName`."""
    found: dict[str, LocalFile] = {}
    for root in paths:
        if root.is_dir():
            entries = [(path, path.relative_to(root).as_posix()) for path in _walk(root)]
        else:
            entries = [(root, root.name)]
        for path, relative in entries:
            name = prefix + relative
            if name in found and found[name].path != path:
                raise DuplicateName(f"{found[name].path} and {path} would both be {name!r}")
            found[name] = LocalFile(path, name, path.stat().st_size)
    return [found[name] for name in sorted(found)]


def _walk(root: Path) -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        files += [here / n for n in sorted(names) if not n.startswith(".") and (here / n).is_file()]
    return files


@dataclass(frozen=True)
class Submitted:
    file: LocalFile
    generation: int | None  # None: not uploaded (unchanged, or a dry run)
    unchanged: bool


@dataclass(frozen=True)
class SubmitReport:
    files: tuple[Submitted, ...]
    dry_run: bool

    @property
    def uploaded(self) -> list[Submitted]:
        return [s for s in self.files if not s.unchanged]

    @property
    def unchanged(self) -> list[Submitted]:
        return [s for s in self.files if s.unchanged]

    @property
    def names(self) -> list[str]:
        return [s.file.name for s in self.files]


def submit(
    store: ObjectStore,
    bucket: str,
    files: Sequence[LocalFile],
    *,
    force: bool = False,
    dry_run: bool = False,
    threads: int = UPLOAD_THREADS,
    on_file: Callable[[Submitted], None] = lambda _: None,
) -> SubmitReport:
    """Upload ``files`` that are not already in ``bucket`` with the same bytes.

    One listing (under the files' common prefix; without one, a ``stat`` per file) gives
    the existing objects' checksums. ``on_file`` is called from the pool as each file is
    uploaded or found unchanged.
    """
    names = {f.name for f in files}
    common = listing_prefix(names)
    existing: dict[str, ObjectInfo] = {}
    if files and not force and common:
        existing = {i.name: i for i in store.list(bucket, common) if i.name in names}

    def one(local: LocalFile) -> Submitted:
        if force:
            current = None
        elif common:
            current = existing.get(local.name)
        else:  # no shared prefix: a listing could be the whole bucket, ask per file
            current = store.stat(bucket, local.name)
        if current is not None and _same_content(local, current):
            result = Submitted(local, None, unchanged=True)
        elif dry_run:
            result = Submitted(local, None, unchanged=False)
        else:
            with local.path.open("rb") as handle:
                generation = store.upload(bucket, local.name, handle, content_type(local.path))
            result = Submitted(local, generation, unchanged=False)
        on_file(result)
        return result

    if not files:
        return SubmitReport((), dry_run)
    with ThreadPoolExecutor(max_workers=min(threads, len(files))) as pool:
        return SubmitReport(tuple(pool.map(one, files)), dry_run)


def _same_content(local: LocalFile, remote: ObjectInfo) -> bool:
    if remote.size != local.size or not (remote.crc32c or remote.md5):
        return False
    md5, crc32c = file_checksums(local.path)
    return crc32c == remote.crc32c if remote.crc32c else md5 == remote.md5
