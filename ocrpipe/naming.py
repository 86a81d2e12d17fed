"""Where everything lives. Pure functions, no I/O.

A document is one generation of one input object: ``gs://input/report.pdf#1712345678``.
Its ``doc_id`` is a short hash of that triple, so a new upload of the same name is a new
document and never mixes pages with the old one.

Output bucket, per document (``<key>`` is the input name made safe, see :func:`name_key`)::

    <key>/@<generation>/manifest.json        the page plan, written once by the splitter
    <key>/@<generation>/pages/00001.md       one per page, written once by the worker
    <key>/@<generation>/pages/00001.error.json   a page that failed for good
    <key>/@<generation>/pages/00001.figure-1.png a figure cropped from page 1 (a bbox
                                             model's; .jpg for a JPEG page), written once
                                             by the worker before the page's Markdown
    <key>/@<generation>/document.md          all pages in order, by the worker; rebuilt
                                             when a page result lands that it lacks
    <key>/@<generation>/document.json        where each page's text is in document.md
    <key>/@<generation>/error.json           the whole input was rejected (bad input)
    <key>/@<generation>/attempts/00001/<ns>.<kind>.json   what happened to page 1 on the
                                             way: a delivery that failed (the worker),
                                             a retry or a replay of it (the operator)
    <key>/@latest.json                       the newest finished generation of the input:
                                             a name that never changes, to poll
    _invalid-messages/<yyyymmdd>/<ns>.json   a delivery the worker refused or could not read

The splitter writes only ``manifest.json``, ``error.json`` and, for a rejected input,
``@latest.json`` there; everything else is the worker's. A segment starting with ``@`` is
reserved: :func:`name_key` escapes it in user names, so ``@latest.json`` and ``@<gen>``
never collide with an input's own name.

Work bucket: ``pages/<doc_id>/00001.png`` (rendered page images, see
:mod:`ocrpipe.splitter.split_lease` for the splitter's own records next to them).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

PAGE_DIGITS = 5
MAX_KEY_BYTES = 800
_KEY_HEAD_BYTES = 700
# ``%`` is always escaped, so a ``%`` that does not start a two-digit escape is ours: a
# segment that is only ``%`` stands for an empty segment, and ``%~`` joins a shortened key to
# the hash of its full name.
_EMPTY_SEGMENT = "%"
_SHORTENED = "%~"
_IMAGE = re.compile(r"^(\d+)\.(png|jpg)$")
_FAILED = re.compile(r"^(\d+)\.failed\.json$")
_PUBLISHED = re.compile(r"^published-(\d+)-(\d+)$")
_REPUBLISHED = re.compile(r"^republished-(\d+)-(\d+)-\d+$")
_LEASE = re.compile(r"^lease-(\d+)$")
_PAGE_MD = re.compile(r"^(\d+)\.md$")
_PAGE_ERR = re.compile(r"^(\d+)\.error\.json$")
_FIGURE = re.compile(r"^(\d+)\.figure-(\d+)\.(png|jpg)$")
_ATTEMPT = re.compile(r"^(\d+)/(\d+)\.([a-z_]+)\.json$")
_ESCAPES = re.compile(r"(?:%[0-9A-F]{2})+")


@dataclass(frozen=True)
class DocumentRef:
    """One generation of one input object."""

    bucket: str
    name: str
    generation: int

    @property
    def doc_id(self) -> str:
        digest = hashlib.sha256(self.uri.encode())
        return "d" + digest.hexdigest()[:23]

    def source_fields(self) -> dict[str, str | int]:
        """The fields that name this document in the messages (page and documents topic)."""
        return {
            "doc_id": self.doc_id,
            "source_bucket": self.bucket,
            "source_name": self.name,
            "source_generation": self.generation,
        }

    @property
    def uri(self) -> str:
        return object_uri(self.bucket, self.name, self.generation)


MAX_OBJECT_NAME_BYTES = 1024


def object_name_problem(name: str) -> str | None:
    """Why GCS would refuse ``name`` as an object name, or None: 1 to 1024 bytes of valid
    Unicode (UTF-8), no carriage return or line feed, not ``.`` or ``..``, not under
    ``.well-known/acme-challenge/`` (GCS's documented naming requirements)."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8 (GCS names are Unicode text)"
    if size == 0 or size > MAX_OBJECT_NAME_BYTES:
        return f"GCS names are 1 to {MAX_OBJECT_NAME_BYTES} bytes long, this one is {size}"
    if "\r" in name or "\n" in name:
        return "GCS names cannot hold a carriage return or a line feed"
    if name in (".", ".."):
        return "GCS names cannot be . or .."
    if name.startswith(".well-known/acme-challenge/"):
        return "GCS names cannot start with .well-known/acme-challenge/"
    return None


def name_key(name: str) -> str:
    """Map any legal GCS object name to a safe, unique key inside the output bucket.

    The key keeps the name as the user typed it (spaces, accents, every script) and escapes,
    as ``%XX`` of their UTF-8 bytes, only what must be escaped:

    * ``%`` itself, so every ``%`` in a key is an escape or one of the two markers above;
    * ``@`` at the start of a segment, which would read as a generation folder (``@<gen>``);
    * ``.`` and ``..`` segments (``%2E``, ``%2E%2E``) and empty segments (``%``), so a key
      never climbs out of its prefix and never holds ``//``;
    * control characters (C0, DEL, C1) and U+FFFE / U+FFFF, which GCS forbids or advises
      against (carriage return and line feed are forbidden).

    The mapping is injective: a key too long for GCS keeps its first bytes and gets a hash of
    the full name after ``%~``, which no escaped name contains.
    """
    key = "/".join(_segment_key(segment) for segment in name.split("/"))
    if len(key.encode()) > MAX_KEY_BYTES:
        head = key.encode()[:_KEY_HEAD_BYTES].decode(errors="ignore")
        key = f"{_trim_partial_escape(head)}{_SHORTENED}{_name_hash(name)}"
    return key


def _segment_key(segment: str) -> str:
    if segment == "":
        return _EMPTY_SEGMENT
    if segment in (".", ".."):
        return "%2E" * len(segment)
    escaped = "".join(_escape(char) if _must_escape(char) else char for char in segment)
    return "%40" + escaped[1:] if escaped.startswith("@") else escaped


def _must_escape(char: str) -> bool:
    code = ord(char)
    return char == "%" or code < 0x20 or 0x7F <= code <= 0x9F or code in (0xFFFE, 0xFFFF)


def _escape(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode())


def _name_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def _trim_partial_escape(text: str) -> str:
    """Drop a ``%`` escape cut in half at the end of ``text``."""
    cut = text.rfind("%")
    return text[:cut] if cut >= len(text) - 2 else text


def key_to_name(key: str) -> str | None:
    """Inverse of :func:`name_key` for keys that were not shortened."""
    if _SHORTENED in key:
        return None
    return "/".join(_segment_name(segment) for segment in key.split("/"))


def _segment_name(segment: str) -> str:
    if segment == _EMPTY_SEGMENT:
        return ""
    # Each run of escapes stands for the UTF-8 bytes of one or more characters.
    return _ESCAPES.sub(lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode(), segment)


def document_prefix(name: str) -> str:
    """Prefix of every generation of one input name: ``<key>/@``."""
    return f"{name_key(name)}/@"


def output_prefix(doc: DocumentRef) -> str:
    return f"{document_prefix(doc.name)}{doc.generation}/"


LATEST_SUFFIX = "/@latest.json"


def latest_name(name: str) -> str:
    """``<key>/@latest.json``: the newest finished generation of input ``name``."""
    return f"{name_key(name)}{LATEST_SUFFIX}"


def manifest_name(doc: DocumentRef) -> str:
    return output_prefix(doc) + "manifest.json"


def document_markdown_name(doc: DocumentRef) -> str:
    return output_prefix(doc) + "document.md"


def document_index_name(doc: DocumentRef) -> str:
    """``document.json``: where each page's text sits in ``document.md``, for programs."""
    return output_prefix(doc) + "document.json"


def document_error_name(doc: DocumentRef) -> str:
    return output_prefix(doc) + "error.json"


PAGES_FOLDER = "pages/"  # where the pages are, relative to document.md


def pages_prefix(doc: DocumentRef) -> str:
    return output_prefix(doc) + PAGES_FOLDER


def page_group_prefix(doc: DocumentRef, group: int) -> str:
    """The prefix of pages ``100 * group`` to ``100 * group + 99``: their 5-digit numbers
    share the first 3 digits."""
    return f"{pages_prefix(doc)}{group:0{PAGE_DIGITS - 2}d}"


def page_markdown_name(doc: DocumentRef, page: int) -> str:
    return f"{pages_prefix(doc)}{page:0{PAGE_DIGITS}d}.md"


def page_error_name(doc: DocumentRef, page: int) -> str:
    return f"{pages_prefix(doc)}{page:0{PAGE_DIGITS}d}.error.json"


def figure_basename(page: int, number: int, extension: str) -> str:
    """``00001.figure-2.png``: figure 2 of page 1, beside the page's Markdown. It is also the
    link to the figure from the page's Markdown; :func:`figure_link_from_document` is the
    link from ``document.md``."""
    return f"{page:0{PAGE_DIGITS}d}.figure-{number}.{extension}"


def page_figure_name(doc: DocumentRef, page: int, number: int, extension: str) -> str:
    return pages_prefix(doc) + figure_basename(page, number, extension)


def figure_link_from_document(basename: str) -> str:
    """The link to a figure from ``document.md``, which is one folder above the pages."""
    return PAGES_FOLDER + basename


@dataclass(frozen=True)
class FigureObject:
    page: int
    number: int
    name: str  # the object's full name
    basename: str  # its name inside pages/: the link from the page's Markdown


def parse_figure_names(names: Iterable[str], prefix: str) -> dict[tuple[int, int], FigureObject]:
    """(page, figure number) -> the figure object, from object names under ``pages/``."""
    figures: dict[tuple[int, int], FigureObject] = {}
    for full in names:
        if not full.startswith(prefix):
            continue
        base = full[len(prefix) :]
        if match := _FIGURE.match(base):
            page, number = int(match.group(1)), int(match.group(2))
            figures[(page, number)] = FigureObject(page, number, full, base)
    return figures


def attempts_prefix(doc: DocumentRef) -> str:
    """Where the records of a document's page attempts are (:mod:`ocrpipe.records`)."""
    return output_prefix(doc) + "attempts/"


def page_attempts_prefix(doc: DocumentRef, page: int) -> str:
    return f"{attempts_prefix(doc)}{page:0{PAGE_DIGITS}d}/"


def attempt_record_name(doc: DocumentRef, page: int, time_ns: int, kind: str) -> str:
    """One event in page ``page``'s history: ``attempts/00007/<time_ns>.<kind>.json``,
    created once (the time in nanoseconds keeps names apart and in order)."""
    return f"{page_attempts_prefix(doc, page)}{time_ns}.{kind}.json"


@dataclass(frozen=True)
class AttemptName:
    page: int
    time_ns: int
    kind: str


def parse_attempt_name(name: str, prefix: str) -> AttemptName | None:
    """The page, time and kind in an :func:`attempt_record_name` under ``prefix``."""
    if not name.startswith(prefix):
        return None
    match = _ATTEMPT.match(name[len(prefix) :])
    if match is None:
        return None
    return AttemptName(int(match.group(1)), int(match.group(2)), match.group(3))


def work_prefix(doc_id: str) -> str:
    """Everything the splitter keeps for one document in the work bucket."""
    return f"pages/{doc_id}/"


def page_image_name(doc_id: str, page: int, extension: str) -> str:
    return f"{work_prefix(doc_id)}{page:0{PAGE_DIGITS}d}.{extension}"


def render_failure_name(doc_id: str, page: int) -> str:
    """A page the splitter could not render (work bucket)."""
    return f"{work_prefix(doc_id)}{page:0{PAGE_DIGITS}d}.failed.json"


def published_marker_name(doc_id: str, first: int, last: int) -> str:
    """Pages ``first..last`` were published (work bucket; created once)."""
    return f"{work_prefix(doc_id)}published-{first:0{PAGE_DIGITS}d}-{last:0{PAGE_DIGITS}d}"


def republished_marker_name(doc_id: str, first: int, last: int, stamp_ms: int) -> str:
    """Pages ``first..last`` were published again by the reconciler at ``stamp_ms`` (work
    bucket; one per batch and run, so a page's messages can be dated)."""
    pages = f"{first:0{PAGE_DIGITS}d}-{last:0{PAGE_DIGITS}d}"
    return f"{work_prefix(doc_id)}republished-{pages}-{stamp_ms}"


def publish_times(objects: Iterable[tuple[str, float]], doc_id: str) -> dict[int, float]:
    """Page -> when its newest message was published, from ``(name, time)`` pairs of the
    work bucket's ``published-`` and ``republished-`` markers (their creation times)."""
    prefix = work_prefix(doc_id)
    times: dict[int, float] = {}
    for name, when in objects:
        base = name[len(prefix) :] if name.startswith(prefix) else ""
        match = _PUBLISHED.match(base) or _REPUBLISHED.match(base)
        if match is None:
            continue
        for page in range(int(match.group(1)), int(match.group(2)) + 1):
            times[page] = max(when, times.get(page, when))
    return times


def first_attempt_name(doc_id: str) -> str:
    return f"{work_prefix(doc_id)}first-attempt"


def lease_name(doc_id: str, number: int) -> str:
    return f"{work_prefix(doc_id)}lease-{number:04d}"


@dataclass(frozen=True)
class WorkState:
    """What the work bucket holds for one document (see :mod:`ocrpipe.splitter.split_lease`)."""

    images: dict[int, str]  # page -> object name of its image
    published: frozenset[int]
    leases: tuple[int, ...]  # lease numbers, ascending
    failed: dict[int, str] = field(default_factory=dict)  # page -> its render failure record


def parse_work_listing(names: Iterable[str], doc_id: str) -> WorkState:
    """Sort the object names under :func:`work_prefix` into images, render failures,
    published ranges and leases."""
    prefix = work_prefix(doc_id)
    images: dict[int, str] = {}
    published: set[int] = set()
    leases: list[int] = []
    failed: dict[int, str] = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        base = name[len(prefix) :]
        if match := _IMAGE.match(base):
            images[int(match.group(1))] = name
        elif match := _FAILED.match(base):
            failed[int(match.group(1))] = name
        elif match := _PUBLISHED.match(base):
            published.update(range(int(match.group(1)), int(match.group(2)) + 1))
        elif match := _LEASE.match(base):
            leases.append(int(match.group(1)))
    return WorkState(images, frozenset(published), tuple(sorted(leases)), failed)


def image_mime(name: str) -> ImageMime:
    """The MIME type of a page image the splitter wrote, from its extension."""
    return _MIME_BY_EXTENSION[name.rsplit(".", 1)[-1].lower()]


ImageMime = Literal["image/png", "image/jpeg"]
IMAGE_EXTENSIONS: dict[str, str] = {"image/png": "png", "image/jpeg": "jpg"}  # the splitter's
_MIME_BY_EXTENSION: dict[str, ImageMime] = {"png": "image/png", "jpg": "image/jpeg"}


def page_image_uri(work_bucket: str, doc_id: str, page: int, mime: str) -> str:
    """The only image a page message may name: the splitter's, for that document and page,
    with the extension of its MIME type."""
    return f"gs://{work_bucket}/{page_image_name(doc_id, page, IMAGE_EXTENSIONS[mime])}"


GS_URI_PATTERN = r"^gs://[^/]+/.+"  # what a page message's image_uri must look like


def split_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/name`` -> ``("bucket", "name")``."""
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return bucket, name


INVALID_MESSAGES_PREFIX = "_invalid-messages/"


def invalid_message_name(day: str, time_ns: int) -> str:
    """Output-bucket record of a refused delivery; ``day`` is ``yyyymmdd`` (UTC)."""
    return f"{INVALID_MESSAGES_PREFIX}{day}/{time_ns}.json"


@dataclass(frozen=True)
class PageListing:
    """Which pages of a document have Markdown and which have error records."""

    done: frozenset[int]
    failed: frozenset[int]


def parse_page_listing(names: list[str], prefix: str) -> PageListing:
    """Sort object names under ``pages/`` into done and failed page numbers."""
    done: set[int] = set()
    failed: set[int] = set()
    for full in names:
        if not full.startswith(prefix):
            continue
        base = full[len(prefix) :]
        if match := _PAGE_MD.match(base):
            done.add(int(match.group(1)))
        elif match := _PAGE_ERR.match(base):
            failed.add(int(match.group(1)))
    return PageListing(frozenset(done), frozenset(failed - done))


def object_uri(bucket: str, name: str, generation: int | None = None) -> str:
    """``gs://bucket/name`` (``#generation``): the one place a ``gs://`` URI is built."""
    uri = f"gs://{bucket}/{name}"
    return uri if generation is None else f"{uri}#{generation}"


@dataclass(frozen=True)
class PageResult:
    """The object that holds one page's outcome: its Markdown, or else its error record."""

    page: int
    state: str  # "done" or "failed"
    name: str
    generation: int


def page_results(
    objects: Iterable[tuple[str, int]], prefix: str, page_count: int
) -> dict[int, PageResult]:
    """Page -> its result, from ``(name, generation)`` pairs under ``pages/``. Markdown wins
    over an error record (a retried page that succeeded may have both for a moment)."""
    results: dict[int, PageResult] = {}
    for full, generation in objects:
        if not full.startswith(prefix):
            continue
        base = full[len(prefix) :]
        if match := _PAGE_MD.match(base):
            state = "done"
        elif match := _PAGE_ERR.match(base):
            state = "failed"
        else:
            continue
        page = int(match.group(1))
        if not 1 <= page <= page_count or (state == "failed" and page in results):
            continue
        results[page] = PageResult(page, state, full, generation)
    return results


def generation_from_prefix(rest: str) -> int | None:
    """``'1712/…'`` (the part after ``<key>/@``) -> 1712."""
    head = rest.split("/", 1)[0]
    return int(head) if head.isdigit() else None


def document_json_name(doc: DocumentRef) -> str:
    """The machine-readable record beside ``document.md`` (when the worker writes one)."""
    return output_prefix(doc) + "document.json"


_OUTPUT_NAME = re.compile(r"^(.+?)/@(\d+)/(.*)$", re.DOTALL)


def split_output_name(name: str) -> tuple[str, int, str] | None:
    """``'<key>/@<generation>/<rest>'`` -> (key, generation, rest); None for other names.

    A key's segments never start with ``@`` (it is escaped there), so the first
    ``/@<digits>/`` is the generation segment.
    """
    match = _OUTPUT_NAME.match(name)
    if match is None:
        return None
    return match.group(1), int(match.group(2)), match.group(3)


def key_prefix(prefix: str) -> str:
    """An output-bucket prefix under which the key of every input name that starts with
    ``prefix`` lies: one listing of it finds a whole folder's output.

    It may also cover a few other keys (a prefix ending in dots stops at the last ``/``,
    because a whole ``.`` or ``..`` segment is escaped differently from a longer one);
    callers match keys exactly.
    """
    if not prefix:
        return ""
    head, _, partial = prefix.rpartition("/")
    if partial.strip(".") == "":
        return name_key(head) + "/" if head or prefix.startswith("/") else ""
    probe = name_key(prefix + "x")  # 'x' encodes as itself; the key of a longer name
    if not probe.endswith("x"):  # shortened (it ends with a hex hash): only its head is shared
        return _trim_partial_escape(probe[: _KEY_HEAD_BYTES - 1])
    return probe[:-1]
