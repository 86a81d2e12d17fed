"""Where everything lives. Pure functions, no I/O.

A document is one generation of one input object: ``gs://input/report.pdf#1712345678``.
Its ``doc_id`` is a short hash of that triple, so a new upload of the same name is a new
document and never mixes pages with the old one.

Output bucket, per document (``<key>`` is the input name made safe, see :func:`name_key`)::

    <key>/@<generation>/manifest.json        the page plan, written once by the splitter
    <key>/@<generation>/pages/00001.md       one per page, written once by the worker
    <key>/@<generation>/pages/00001.error.json   a page that failed for good
    <key>/@<generation>/document.md          all pages in order, written once
    <key>/@<generation>/error.json           the whole input was rejected (bad input)

Work bucket: ``pages/<doc_id>/00001.png`` (rendered page images).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

PAGE_DIGITS = 5
MAX_KEY_BYTES = 800
_KEY_HEAD_BYTES = 700
# Only letters, digits and '-_.' survive encoding; '@' and '~' are always escaped, so they
# act as markers: '@' starts the generation segment, '~' joins a shortened key to its hash.
_PAGE_MD = re.compile(r"^(\d+)\.md$")
_PAGE_ERR = re.compile(r"^(\d+)\.error\.json$")


@dataclass(frozen=True)
class DocumentRef:
    """One generation of one input object."""

    bucket: str
    name: str
    generation: int

    @property
    def doc_id(self) -> str:
        digest = hashlib.sha256(f"gs://{self.bucket}/{self.name}#{self.generation}".encode())
        return "d" + digest.hexdigest()[:23]

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}#{self.generation}"


def name_key(name: str) -> str:
    """Map any legal GCS object name to a safe, unique key inside the output bucket.

    Each path segment is percent-encoded, so ``..``, ``.`` and empty segments cannot climb
    out of a prefix, and the result is ASCII. The mapping is injective: a key too long for
    GCS keeps its first bytes and gets a hash of the full name after a ``~``, a character
    that an encoded name never contains.
    """
    segments = []
    for segment in name.split("/"):
        encoded = quote(segment, safe="").replace("~", "%7E")
        if encoded in ("", ".", ".."):
            encoded = "%2E" * len(encoded) if encoded else "%00"
        segments.append(encoded)
    key = "/".join(segments)
    if len(key) > MAX_KEY_BYTES:
        head = _trim_partial_escape(key[:_KEY_HEAD_BYTES])
        key = f"{head}~{hashlib.sha256(name.encode()).hexdigest()[:32]}"
    return key


def _trim_partial_escape(text: str) -> str:
    """Drop a ``%`` escape cut in half at the end of ``text``."""
    cut = text.rfind("%")
    return text[:cut] if cut >= len(text) - 2 else text


def key_to_name(key: str) -> str | None:
    """Inverse of :func:`name_key` for keys that were not shortened."""
    if "~" in key:
        return None
    return "/".join("" if seg == "%00" else unquote(seg) for seg in key.split("/"))


def document_prefix(name: str) -> str:
    """Prefix of every generation of one input name: ``<key>/@``."""
    return f"{name_key(name)}/@"


def output_prefix(doc: DocumentRef) -> str:
    return f"{document_prefix(doc.name)}{doc.generation}/"


def manifest_name(doc: DocumentRef) -> str:
    return output_prefix(doc) + "manifest.json"


def document_markdown_name(doc: DocumentRef) -> str:
    return output_prefix(doc) + "document.md"


def document_error_name(doc: DocumentRef) -> str:
    return output_prefix(doc) + "error.json"


def pages_prefix(doc: DocumentRef) -> str:
    return output_prefix(doc) + "pages/"


def page_markdown_name(doc: DocumentRef, page: int) -> str:
    return f"{pages_prefix(doc)}{page:0{PAGE_DIGITS}d}.md"


def page_error_name(doc: DocumentRef, page: int) -> str:
    return f"{pages_prefix(doc)}{page:0{PAGE_DIGITS}d}.error.json"


def page_image_name(doc_id: str, page: int, extension: str) -> str:
    return f"pages/{doc_id}/{page:0{PAGE_DIGITS}d}.{extension}"


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
