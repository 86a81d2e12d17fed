"""Results as files: each document's newest finished Markdown, downloaded into a folder that
mirrors the input names (``ocrpipe get``).

``reports/q1.pdf`` becomes ``DIR/reports/q1.md``; with ``pages``, its pages are
``DIR/reports/q1/pages/00001.md``...; with ``record``, ``document.json`` (the worker's
machine-readable record, where it exists) becomes ``DIR/reports/q1.json``. Two inputs that
differ only by extension (``q1.pdf``, ``q1.png``) keep it: ``q1.pdf.md``, ``q1.png.md``.

"Finished" means the generation has ``document.md`` (done or partial): while a new upload
of a name is being processed, the previous generation's result is the one fetched. A local
file whose bytes already match the object (its MD5, or CRC32C, as GCS keeps them) is not
downloaded again. Files are written to a temporary name and renamed, so an interrupted run
leaves no half file.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from ocrpipe import naming
from ocrpipe.operations.batch_status import DocumentObjects, scan_prefix
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectInfo, ObjectStore, file_checksums

DOWNLOAD_THREADS = 8
Action = Literal["downloaded", "unchanged"]


@dataclass(frozen=True)
class Wanted:
    """One object to bring, and where."""

    name: str  # input name of its document
    info: ObjectInfo
    path: Path


@dataclass(frozen=True)
class Missing:
    name: str
    why: str


@dataclass(frozen=True)
class GetReport:
    fetched: tuple[tuple[Wanted, Action], ...]
    missing: tuple[Missing, ...]

    def count(self, action: Action) -> int:
        return sum(1 for _, done in self.fetched if done == action)


def find_documents(
    store: ObjectStore,
    settings: Settings,
    *,
    names: Collection[str] = (),
    prefix: str | None = None,
) -> list[DocumentObjects]:
    """The documents named, and every document under ``prefix``: two listings for the
    prefix, two per name."""
    found: dict[str, DocumentObjects] = {}
    if prefix is not None:
        found.update((d.name, d) for d in scan_prefix(store, settings, prefix))
    for name in names:
        if name not in found:
            scanned = scan_prefix(store, settings, name, names=[name])
            found[name] = scanned[0] if scanned else DocumentObjects(name, None, {})
    return [found[name] for name in sorted(found)]


def local_stem(name: str) -> PurePosixPath | None:
    """``'a/b.pdf'`` -> ``a/b``; None for a name that is no safe relative path (an empty,
    ``.`` or ``..`` segment, a leading ``/``, a NUL)."""
    parts = name.split("/")
    if "\x00" in name or any(part in ("", ".", "..") for part in parts):
        return None
    path = PurePosixPath(name)
    return path.with_suffix("") if path.suffix else path


def plan(
    documents: Iterable[DocumentObjects],
    settings: Settings,
    dest: Path,
    *,
    pages: bool = False,
    record: bool = False,
) -> tuple[list[Wanted], list[Missing]]:
    """Which objects go to which local files (pure: no I/O)."""
    wanted: list[Wanted] = []
    missing: list[Missing] = []
    chosen: list[tuple[DocumentObjects, naming.DocumentRef, PurePosixPath]] = []
    for document in documents:
        doc = document.latest_finished(settings)
        stem = local_stem(document.name)
        if doc is None:
            missing.append(Missing(document.name, _why_missing(document, settings)))
        elif stem is None:
            missing.append(Missing(document.name, "its name cannot be a local file path"))
        else:
            chosen.append((document, doc, stem))
    clashes = Counter(stem for _, _, stem in chosen)
    for document, doc, stem in chosen:
        if clashes[stem] > 1:  # q1.pdf and q1.png: keep the extension
            stem = PurePosixPath(document.name)
        objects = document.generations[doc.generation]
        base = dest / stem
        wanted.append(
            Wanted(
                document.name,
                objects[naming.document_markdown_name(doc)],
                base.with_name(base.name + ".md"),
            )
        )
        if record and (info := objects.get(naming.document_json_name(doc))) is not None:
            wanted.append(Wanted(document.name, info, base.with_name(base.name + ".json")))
        if pages:
            prefix = naming.pages_prefix(doc)
            done = naming.parse_page_listing(list(objects), prefix).done
            for number in sorted(done):
                info = objects[naming.page_markdown_name(doc, number)]
                wanted.append(
                    Wanted(document.name, info, base / "pages" / info.name[len(prefix) :])
                )
    return wanted, missing


def _why_missing(document: DocumentObjects, settings: Settings) -> str:
    if document.generation is None:
        return "no such document"
    doc = document.doc(settings, document.generation)
    if naming.document_error_name(doc) in document.generations.get(doc.generation, {}):
        return "rejected (see `ocrpipe status NAME`)"
    return "not finished yet"


def get_results(
    store: ObjectStore,
    settings: Settings,
    wanted: Sequence[Wanted],
    missing: Sequence[Missing] = (),
    *,
    threads: int = DOWNLOAD_THREADS,
    on_file: Callable[[Wanted, Action], None] = lambda *_: None,
) -> GetReport:
    """Download what :func:`plan` chose, skipping files already identical; ``on_file`` is
    called from the pool as each file is done."""

    def fetch(item: Wanted) -> tuple[Wanted, Action]:
        action = _fetch_one(store, settings.output_bucket, item)
        on_file(item, action)
        return item, action

    if not wanted:
        return GetReport((), tuple(missing))
    with ThreadPoolExecutor(max_workers=min(threads, len(wanted))) as pool:
        fetched = tuple(pool.map(fetch, wanted))
    return GetReport(fetched, tuple(missing))


def _fetch_one(store: ObjectStore, bucket: str, item: Wanted) -> Action:
    if _same_bytes(item.path, item.info):
        return "unchanged"
    item.path.parent.mkdir(parents=True, exist_ok=True)
    partial = item.path.with_name(f".{item.path.name}.{os.getpid()}.part")
    try:
        store.download(bucket, item.info.name, partial, generation=item.info.generation)
        partial.replace(item.path)
    finally:
        partial.unlink(missing_ok=True)
    return "downloaded"


def _same_bytes(path: Path, info: ObjectInfo) -> bool:
    """Whether the local file already holds the object (by size, then checksum)."""
    try:
        if not path.is_file() or path.stat().st_size != info.size:
            return False
    except OSError:
        return False
    if not (info.md5 or info.crc32c):
        return False  # nothing to compare with: download again
    md5, crc32c = file_checksums(path)
    return md5 == info.md5 if info.md5 else crc32c == info.crc32c


def write_markdown(
    store: ObjectStore,
    settings: Settings,
    documents: Iterable[DocumentObjects],
    sink: BinaryIO,
) -> list[Missing]:
    """Each document's newest finished Markdown to ``sink`` (standard output), in name
    order, one after the other; what has none is returned."""
    wanted, missing = plan(documents, settings, Path())
    for item in wanted:
        sink.write(store.read(settings.output_bucket, item.info.name))
    sink.flush()
    return missing
