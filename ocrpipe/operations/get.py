"""Results as files: each document's newest finished Markdown, downloaded into a folder that
mirrors the input names (``ocrpipe get``).

``reports/q1.pdf`` becomes ``DIR/reports/q1.md``; with ``pages``, its pages are
``DIR/reports/q1/pages/00001.md``...; with ``record``, ``document.json`` (the worker's
machine-readable record, where it exists) becomes ``DIR/reports/q1.json``.

The whole download is planned before the first byte moves (:func:`plan`, pure). Paths are
made safe on every disk by :mod:`ocrpipe.operations.local_paths`, and no two documents
share a file, a file and a folder, or one's ``pages/`` folder, even on a disk that ignores
letter case or Unicode form. Where two would, both move, by the same rule every time, and
the plan says so (:class:`Renamed`): first each keeps its extension (``q1.pdf`` and
``q1.png`` become ``q1.pdf.md`` and ``q1.png.md``), then each gets ``~`` and a hash of its
name (``Report.pdf~1a2b3c4d.md``); a document that still clashes is not written, and is
reported.

A bbox model's figures come along (unless ``figures`` is off): a page's figures go beside
its pages, ``DIR/reports/q1/pages/00001.figure-1.png``, so a downloaded page's links work as
they are, and the links of the local ``q1.md``, which sits beside that folder, are moved into
it (``q1/pages/00001.figure-1.png``, :mod:`ocrpipe.figure_links`); so are the byte ranges of
its ``q1.json``. The local tree renders offline in any Markdown viewer.

"Finished" means the generation has ``document.md`` (done or partial): while a new upload
of a name is being processed, the previous generation's result is the one fetched. A local
file whose bytes already match the object (its MD5, or CRC32C, as GCS keeps them) is not
downloaded again; one that differs is replaced, and counted as such. Each file is written
to a temporary file of its own in its target folder and renamed, so an interrupted run
leaves no half file. A document that cannot be written (a local folder in the way, an
object rebuilt since the listing) is reported with its reason; the others are written.
Nothing is written outside the folder given, not even through a symbolic link in it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal
from urllib.parse import quote

from ocrpipe import figure_links, naming, records
from ocrpipe.errors import ObjectMissing, OcrpipeError
from ocrpipe.listing import DocumentObjects, scan_prefix
from ocrpipe.operations import local_paths
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectInfo, ObjectStore, file_checksums

DOWNLOAD_THREADS = 8
Action = Literal["downloaded", "replaced", "unchanged", "failed"]


@dataclass(frozen=True)
class Wanted:
    """One object to bring, and where."""

    name: str  # input name of its document
    info: ObjectInfo
    path: Path
    # Figure links to move in the local copy (document.md's), or, with ``markdown``, the
    # document.md whose moved links a document.json's byte ranges follow.
    relink: Mapping[str, str] | None = None
    markdown: str | None = None


@dataclass(frozen=True)
class Missing:
    """A document not written, and why."""

    name: str
    why: str


@dataclass(frozen=True)
class Renamed:
    """A document written somewhere else than its name minus extension, and why."""

    name: str
    path: Path  # its Markdown file
    why: str


@dataclass(frozen=True)
class Plan:
    dest: Path
    wanted: tuple[Wanted, ...]
    missing: tuple[Missing, ...] = ()
    renamed: tuple[Renamed, ...] = ()


@dataclass(frozen=True)
class GetReport:
    fetched: tuple[tuple[Wanted, Action], ...]
    missing: tuple[Missing, ...]  # no Markdown to fetch, or no path of its own
    failed: tuple[Missing, ...] = ()  # one reason per document some file of which failed
    renamed: tuple[Renamed, ...] = ()

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


@dataclass(frozen=True)
class _Chosen:
    doc: naming.DocumentRef
    objects: dict[str, ObjectInfo]


def plan(
    documents: Iterable[DocumentObjects],
    settings: Settings,
    dest: Path,
    *,
    pages: bool = False,
    record: bool = False,
    figures: bool = True,
) -> Plan:
    """Which objects go to which local files, for every document at once (pure: no I/O)."""
    missing: list[Missing] = []
    chosen: dict[str, _Chosen] = {}
    for document in documents:
        doc = document.latest_finished(settings)
        if doc is None:
            missing.append(Missing(document.name, _why_missing(document, settings)))
        else:
            chosen[document.name] = _Chosen(doc, dict(document.generations[doc.generation]))

    def files(name: str, level: int) -> list[tuple[ObjectInfo, PurePosixPath]]:
        doc, objects = chosen[name].doc, chosen[name].objects
        base = local_paths.stem(name, level)
        out = [(objects[naming.document_markdown_name(doc)], _sibling(base, ".md"))]
        if record and (info := objects.get(naming.document_json_name(doc))) is not None:
            out.append((info, _sibling(base, ".json")))
        prefix = naming.pages_prefix(doc)
        for figure in _figures(chosen[name], figures):
            out.append((objects[figure.name], base / "pages" / figure.basename))
        if pages:
            for number in sorted(naming.parse_page_listing(list(objects), prefix).done):
                info = objects[naming.page_markdown_name(doc, number)]
                out.append((info, base / "pages" / info.name[len(prefix) :]))
        return out

    def layout(name: str, level: int) -> local_paths.Layout:
        has_pages = pages or bool(_figures(chosen[name], figures))
        owned = (local_paths.stem(name, level) / "pages",) if has_pages else ()
        return local_paths.Layout(tuple(path for _, path in files(name, level)), owned)

    levels = dict.fromkeys(chosen, 0)
    cause: dict[str, local_paths.Clash] = {}  # the clash that moved it last
    while clashes := local_paths.find_clashes({n: layout(n, lv) for n, lv in levels.items()}):
        for name, clash in clashes.items():
            cause[name] = clash
            levels[name] = local_paths.next_level(name, levels[name])
            if levels[name] >= local_paths.LEVELS:
                del levels[name]
                missing.append(Missing(name, f"no local path of its own: {clash.why}"))
    wanted: list[Wanted] = []
    renamed: list[Renamed] = []
    for name, level in sorted(levels.items()):
        base = local_paths.stem(name, level)
        moves = {
            naming.figure_link_from_document(f.basename): quote(f"{base.name}/pages/{f.basename}")
            for f in _figures(chosen[name], figures)
        }
        found = [
            _wanted(name, info, dest / path, chosen[name].doc, moves)
            for info, path in files(name, level)
        ]
        wanted += found
        if name in cause:
            renamed.append(Renamed(name, found[0].path, cause[name].why))
        elif local_paths.stem(name, 0) != local_paths.plain(name):
            why = "escaped (%XX) or shortened to be a name every disk keeps as written"
            renamed.append(Renamed(name, found[0].path, why))
    return Plan(dest, tuple(wanted), tuple(sorted(missing, key=lambda m: m.name)), tuple(renamed))


def _figures(chosen: _Chosen, wanted: bool) -> list[naming.FigureObject]:
    """A bbox model's figures of the chosen generation, by page and number."""
    if not wanted:
        return []
    found = naming.parse_figure_names(chosen.objects, naming.pages_prefix(chosen.doc))
    return [found[key] for key in sorted(found)]


def _wanted(
    name: str, info: ObjectInfo, path: Path, doc: naming.DocumentRef, moves: Mapping[str, str]
) -> Wanted:
    """``info`` to ``path``; document.md and document.json with the figure links moved."""
    markdown = naming.document_markdown_name(doc)
    if moves and info.name == markdown:
        return Wanted(name, info, path, moves)
    if moves and info.name == naming.document_json_name(doc):
        return Wanted(name, info, path, moves, markdown)
    return Wanted(name, info, path)


def _sibling(base: PurePosixPath, extension: str) -> PurePosixPath:
    return base.with_name(base.name + extension)


def _why_missing(document: DocumentObjects, settings: Settings) -> str:
    if document.generation is None:
        return "no such document"
    doc = document.doc(settings, document.generation)
    if naming.document_error_name(doc) in document.generations.get(doc.generation, {}):
        return "rejected (see `ocrpipe status NAME`)"
    return "not finished yet"


class _Outside(Exception):
    """A folder on the way is a symbolic link out of the destination."""


def get_results(
    store: ObjectStore,
    settings: Settings,
    planned: Plan,
    *,
    threads: int = DOWNLOAD_THREADS,
    on_file: Callable[[Wanted, Action], None] = lambda *_: None,
) -> GetReport:
    """Download what :func:`plan` chose, skipping files already identical; ``on_file`` is
    called from the pool as each file is done (or has failed). A file that fails is
    reported with its document; the others are still downloaded."""
    root = planned.dest
    if planned.wanted:
        root.mkdir(parents=True, exist_ok=True)

    def fetch(item: Wanted) -> tuple[Wanted, Action, str]:
        why = ""
        fetch_one = _fetch_one if item.relink is None else _fetch_relinked
        try:
            action: Action = fetch_one(store, settings.output_bucket, item, root)
        except ObjectMissing:
            action, why = "failed", "it changed while downloading: run `ocrpipe get` again"
        except _Outside as exc:
            action, why = "failed", str(exc)
        except OSError as exc:
            action, why = "failed", f"cannot write {item.path}: {exc.strerror or exc}"
        except OcrpipeError as exc:
            action, why = "failed", str(exc)
        on_file(item, action)
        return item, action, why

    outcomes: list[tuple[Wanted, Action, str]] = []
    if planned.wanted:
        with ThreadPoolExecutor(max_workers=min(threads, len(planned.wanted))) as pool:
            outcomes = list(pool.map(fetch, planned.wanted))
    failed: dict[str, str] = {}
    for item, action, why in outcomes:
        if action == "failed":
            failed.setdefault(item.name, why)
    return GetReport(
        tuple((item, action) for item, action, _ in outcomes if action != "failed"),
        planned.missing,
        tuple(Missing(name, why) for name, why in sorted(failed.items())),
        planned.renamed,
    )


def _fetch_one(store: ObjectStore, bucket: str, item: Wanted, root: Path) -> Action:
    if _same_bytes(item.path, item.info):
        return "unchanged"
    folder = item.path.parent
    _check_inside(folder, root)
    folder.mkdir(parents=True, exist_ok=True)
    replacing = item.path.exists() or item.path.is_symlink()
    handle, partial = tempfile.mkstemp(prefix=".ocrpipe-", suffix=".part", dir=folder)
    os.close(handle)
    try:
        store.download(bucket, item.info.name, Path(partial), generation=item.info.generation)
        Path(partial).replace(item.path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return "replaced" if replacing else "downloaded"


def _fetch_relinked(store: ObjectStore, bucket: str, item: Wanted, root: Path) -> Action:
    """A document.md (or its document.json) whose local copy has its figure links moved:
    read, changed, and written only if the local file differs."""
    assert item.relink is not None
    folder = item.path.parent
    _check_inside(folder, root)
    folder.mkdir(parents=True, exist_ok=True)
    data = _read_at(store, bucket, item.info.name, item.info.generation, folder)
    if item.markdown is None:
        data, _ = figure_links.relink_bytes(data, item.relink)
    else:
        generation = records.index_generation(data)
        markdown = _read_at(store, bucket, item.markdown, generation, folder)
        _, edits = figure_links.relink_bytes(markdown, item.relink)
        data = records.shift_index_spans(data, lambda at: figure_links.shift(at, edits))
    if item.path.is_file() and item.path.read_bytes() == data:
        return "unchanged"
    replacing = item.path.exists() or item.path.is_symlink()
    handle, partial = tempfile.mkstemp(prefix=".ocrpipe-", suffix=".part", dir=folder)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    try:
        Path(partial).replace(item.path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return "replaced" if replacing else "downloaded"


def _read_at(
    store: ObjectStore, bucket: str, name: str, generation: int | None, folder: Path
) -> bytes:
    """Object ``name`` at ``generation`` (None: the current one), through a temporary file
    in ``folder``. Raises ObjectMissing if that generation is gone."""
    handle, temporary = tempfile.mkstemp(prefix=".ocrpipe-", suffix=".read", dir=folder)
    os.close(handle)
    try:
        store.download(bucket, name, Path(temporary), generation=generation)
        return Path(temporary).read_bytes()
    finally:
        Path(temporary).unlink(missing_ok=True)


def _check_inside(folder: Path, root: Path) -> None:
    """Refuse a folder that a symbolic link inside ``root`` would put outside it."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.resolve().is_relative_to(root.resolve()):
        raise _Outside(f"{existing} leads out of {root} (a symbolic link): not followed")


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
    planned = plan(documents, settings, Path())
    missing = list(planned.missing)
    for item in planned.wanted:
        try:
            sink.write(store.read(settings.output_bucket, item.info.name))
        except ObjectMissing:
            missing.append(Missing(item.name, "it changed while reading: run `ocrpipe get` again"))
    sink.flush()
    return missing
