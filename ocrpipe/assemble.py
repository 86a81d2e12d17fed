"""Assemble a document's Markdown from its pages (pure).

Pages are joined in order, each introduced by an HTML comment that keeps its number and is
invisible when the Markdown is rendered::

    <!-- page 1 -->
    …

    <!-- page 2 -->
    …

A page that failed for good keeps its place with a visible note, so the document stays
aligned with the PDF.
"""

from __future__ import annotations

from collections.abc import Mapping


def page_separator(page: int) -> str:
    return f"<!-- page {page} -->"


def assemble_document(
    page_count: int, pages: Mapping[int, str], failed: Mapping[int, str] | None = None
) -> str:
    """Join ``pages`` (number -> Markdown) in order; ``failed`` maps number -> reason."""
    failed = failed or {}
    parts = []
    for number in range(1, page_count + 1):
        if number in pages:
            body = pages[number].strip()
        elif number in failed:
            body = f"> **Page {number} failed** ({failed[number]})"
        else:
            raise ValueError(f"page {number} has neither Markdown nor an error record")
        parts.append(
            f"{page_separator(number)}\n\n{body}\n" if body else f"{page_separator(number)}\n"
        )
    return "\n".join(parts)
