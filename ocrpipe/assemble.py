"""Assemble a document's Markdown from its pages, and the index that says where each page
is in it (pure).

Pages are joined in order, each introduced by an HTML comment that keeps its number and is
invisible when the Markdown is rendered::

    <!-- page 1 -->
    …

    <!-- page 2 -->
    …

The markers are for people. A page's text is kept byte for byte as the model wrote it, so
it may contain ``<!-- page 7 -->`` itself: programs use the byte ranges of
``document.json`` (:class:`PageSpan`), never the markers. (With a bbox model, the page's
Markdown links its figures instead of the model's references, and the worker moves those
links to the pages' folder before it assembles: :mod:`ocrpipe.figure_links`.)

A page that failed for good keeps its place with a visible note, so the document stays
aligned with the PDF.

A document records which page results it was built from: :func:`results_digest` of the
(page, state, object generation) set, kept in document.md's custom metadata. A page result
that lands later changes the digest, and the worker builds the document again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ocrpipe import naming
from ocrpipe.naming import PageResult
from ocrpipe.storage import ObjectInfo

DIGEST_KEY = "ocrpipe-pages-digest"  # document.md's metadata: the results it is built from
DOCUMENT_GENERATION_KEY = "ocrpipe-document-generation"  # document.json's: what it describes


def page_separator(page: int) -> str:
    return f"<!-- page {page} -->"


@dataclass(frozen=True)
class PageSpan:
    """Where page ``page``'s text is in document.md: bytes ``[start, end)``."""

    page: int
    state: str  # "done" or "failed"
    start: int
    end: int
    reason: str | None = None  # why a failed page failed


@dataclass(frozen=True)
class Assembly:
    markdown: bytes
    spans: tuple[PageSpan, ...]


def assemble(
    page_count: int, pages: Mapping[int, str], failed: Mapping[int, str] | None = None
) -> Assembly:
    """Join ``pages`` (number -> Markdown) in order; ``failed`` maps number -> reason."""
    failed = failed or {}
    out = bytearray()
    spans = []
    for number in range(1, page_count + 1):
        if number in pages:
            body, state, reason = pages[number], "done", None
        elif number in failed:
            body, state, reason = (
                f"> **Page {number} failed** ({failed[number]})",
                "failed",
                failed[number],
            )
        else:
            raise ValueError(f"page {number} has neither Markdown nor an error record")
        if number > 1:
            out += b"\n"
        out += f"{page_separator(number)}\n".encode()
        data = body.encode()
        if data:
            out += b"\n"
        start = len(out)
        out += data
        spans.append(PageSpan(number, state, start, len(out), reason))
        if data and not data.endswith(b"\n"):
            out += b"\n"
    return Assembly(bytes(out), tuple(spans))


def assemble_document(
    page_count: int, pages: Mapping[int, str], failed: Mapping[int, str] | None = None
) -> str:
    """The text of :func:`assemble`."""
    return assemble(page_count, pages, failed).markdown.decode()


def results_digest(results: Mapping[int, PageResult]) -> str:
    """Names the set of page results a document is built from (hex, 32 characters)."""
    text = "\n".join(
        f"{r.page}:{r.state}:{r.generation}" for r in sorted(results.values(), key=_page)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _page(result: PageResult) -> int:
    return result.page


def assembly_stale(
    document: ObjectInfo | None, objects: Iterable[ObjectInfo], pages_prefix: str, page_count: int
) -> bool:
    """True if ``document`` (document.md) exists and was built from other page results than
    those in ``objects``. A document assembled before digests were kept counts as current."""
    if document is None:
        return False
    built_from = document.metadata.get(DIGEST_KEY)
    if built_from is None:
        return False
    results = naming.page_results(
        [(info.name, info.generation) for info in objects], pages_prefix, page_count
    )
    return built_from != results_digest(results)
