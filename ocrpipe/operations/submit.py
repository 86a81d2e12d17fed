"""Submitting files and folders to the input bucket (``ocrpipe submit PATH...``).

A file given by name becomes ``<prefix><file name>``. A folder is walked recursively; its
files become ``<prefix><path relative to the folder>`` (with ``/``), and hidden files and
folders (a name starting with ``.``) are skipped. A file whose bytes are already in the
bucket under its name (same CRC32C, or MD5, as GCS keeps them) is not uploaded again, so
submitting a folder twice costs one listing and no new documents; ``force`` uploads it
anyway (a new generation: the document is processed again).

Every file is checked before the first upload (:func:`collect`): it must be a regular file
that opens for reading, and its name one GCS accepts (:func:`ocrpipe.naming.
object_name_problem`). Inside a folder, a symbolic link (to a file or a folder) is not
followed unless ``follow_symlinks``, so a link to ``~/.ssh`` never leaves the machine; a
path given on the command line is followed, as the user named it. What is skipped is
returned with the reason (:class:`Skipped`). A file that still fails at upload time (it
vanished meanwhile) is reported in :attr:`SubmitReport.failed` and the others go on.

Uploads run in a thread pool through the :class:`~ocrpipe.storage.ObjectStore` protocol.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ocrpipe import naming
from ocrpipe.errors import OcrpipeError
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


@dataclass(frozen=True)
class Skipped:
    """A path not submitted, and why. ``problem``: a file meant to go that could not (the
    command exits 1); otherwise skipped by rule (a link not followed, a FIFO)."""

    path: Path
    why: str
    problem: bool


@dataclass(frozen=True)
class Collected:
    files: list[LocalFile]  # in name order
    skipped: list[Skipped] = field(default_factory=list)


LINK_NOT_FOLLOWED = "a symbolic link: not followed (give --follow-symlinks to follow it)"


def collect(paths: Sequence[Path], prefix: str = "", *, follow_symlinks: bool = False) -> Collected:
    """The files to submit, each checked, and what is skipped. Raises
    :class:`DuplicateName`."""
    found: dict[str, LocalFile] = {}
    skipped: list[Skipped] = []
    for root in paths:
        entries = _walk(root, follow_symlinks, skipped) if root.is_dir() else [(root, root.name)]
        for path, relative in entries:
            name = prefix + relative
            checked = _check(path, name)
            if isinstance(checked, Skipped):
                skipped.append(checked)
                continue
            if name in found and found[name].path != path:
                raise DuplicateName(f"{found[name].path} and {path} would both be {name!r}")
            found[name] = checked
    return Collected([found[name] for name in sorted(found)], skipped)


def _check(path: Path, name: str) -> LocalFile | Skipped:
    problem = naming.object_name_problem(name)
    if problem is not None:
        return Skipped(path, problem, problem=True)
    try:
        info = path.stat()
    except FileNotFoundError:
        why = "a symbolic link to nothing" if path.is_symlink() else "it no longer exists"
        return Skipped(path, why, problem=True)
    except OSError as exc:
        return Skipped(path, f"cannot read it: {exc.strerror or exc}", problem=True)
    if not stat.S_ISREG(info.st_mode):
        return Skipped(path, "not a regular file (a FIFO, socket or device)", problem=False)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return Skipped(path, f"cannot read it: {exc.strerror or exc}", problem=True)
    return LocalFile(path, name, info.st_size)


def _walk(root: Path, follow: bool, skipped: list[Skipped]) -> list[tuple[Path, str]]:
    """Visible files under ``root`` with their ``/`` path relative to it. Symbolic links
    are skipped unless ``follow``; a followed link to a folder already walked (a loop) is
    skipped all the same."""
    files = []
    walked = {os.path.realpath(root)}
    for folder, dirs, names in os.walk(root, followlinks=follow):
        here = Path(folder)
        keep = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            path = here / name
            if path.is_symlink():
                real = os.path.realpath(path)
                if not follow:
                    skipped.append(Skipped(path, LINK_NOT_FOLLOWED, problem=False))
                    continue
                if real in walked:
                    why = "a symbolic link to a folder walked already (a loop): skipped"
                    skipped.append(Skipped(path, why, problem=False))
                    continue
                walked.add(real)
            keep.append(name)
        dirs[:] = keep
        for name in sorted(n for n in names if not n.startswith(".")):
            path = here / name
            if path.is_symlink() and not follow:
                skipped.append(Skipped(path, LINK_NOT_FOLLOWED, problem=False))
            else:
                files.append((path, path.relative_to(root).as_posix()))
    return files


@dataclass(frozen=True)
class Submitted:
    file: LocalFile
    generation: int | None  # None: not uploaded (unchanged, or a dry run)
    unchanged: bool


@dataclass(frozen=True)
class Failed:
    file: LocalFile
    why: str


@dataclass(frozen=True)
class SubmitReport:
    files: tuple[Submitted, ...]  # uploaded, or found unchanged
    dry_run: bool
    failed: tuple[Failed, ...] = ()

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

    def one(local: LocalFile) -> Submitted | Failed:
        try:
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
        except OSError as exc:
            return Failed(local, f"{local.path}: {exc.strerror or exc}")
        except OcrpipeError as exc:
            return Failed(local, str(exc))
        on_file(result)
        return result

    if not files:
        return SubmitReport((), dry_run)
    with ThreadPoolExecutor(max_workers=min(threads, len(files))) as pool:
        outcomes = list(pool.map(one, files))
    return SubmitReport(
        tuple(o for o in outcomes if isinstance(o, Submitted)),
        dry_run,
        tuple(o for o in outcomes if isinstance(o, Failed)),
    )


def _same_content(local: LocalFile, remote: ObjectInfo) -> bool:
    if remote.size != local.size or not (remote.crc32c or remote.md5):
        return False
    md5, crc32c = file_checksums(local.path)
    return crc32c == remote.crc32c if remote.crc32c else md5 == remote.md5
