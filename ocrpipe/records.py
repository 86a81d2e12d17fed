"""The JSON records ocrpipe writes next to its Markdown (pure: build and parse only).

* the manifest, written once by the splitter when it knows the page count;
* error records, for a rejected input (``error.json``) or a page that failed for good
  (``pages/00007.error.json``): a stable ``reason`` code, a message a person understands,
  and where the input came from;
* the document index (``document.json``), written by the worker beside ``document.md``:
  for every page its state, the reason if it failed, and the byte range ``[start, end)`` of
  its text in ``document.md``, plus the generation and page digest of the ``document.md``
  it describes (compare them before slicing).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ocrpipe.assemble import PageSpan
from ocrpipe.naming import DocumentRef

RECORD_VERSION = 1


def manifest_record(doc: DocumentRef, page_count: int, *, now: float | None = None) -> bytes:
    return _dump(
        {
            "schema_version": RECORD_VERSION,
            "doc_id": doc.doc_id,
            "source": _source(doc),
            "page_count": page_count,
            "created": time.time() if now is None else now,
        }
    )


def error_record(
    doc: DocumentRef,
    reason: str,
    message: str,
    *,
    page: int | None = None,
    now: float | None = None,
) -> bytes:
    record: dict[str, Any] = {
        "schema_version": RECORD_VERSION,
        "doc_id": doc.doc_id,
        "source": _source(doc),
        "reason": reason,
        "message": message,
        "created": time.time() if now is None else now,
    }
    if page is not None:
        record["page"] = page
    return _dump(record)


def document_index_record(
    doc: DocumentRef, markdown_name: str, generation: int, digest: str, spans: tuple[PageSpan, ...]
) -> bytes:
    pages: list[dict[str, Any]] = []
    for span in spans:
        entry: dict[str, Any] = {
            "page": span.page,
            "state": span.state,
            "start": span.start,
            "end": span.end,
        }
        if span.reason is not None:
            entry["reason"] = span.reason
        pages.append(entry)
    return _dump(
        {
            "schema_version": RECORD_VERSION,
            "doc_id": doc.doc_id,
            "source": _source(doc),
            "document": {"name": markdown_name, "generation": generation, "pages_digest": digest},
            "page_count": len(spans),
            "pages": pages,
        }
    )


@dataclass(frozen=True)
class Manifest:
    doc_id: str
    page_count: int
    created: float


def parse_manifest(data: bytes) -> Manifest:
    raw = json.loads(data)
    return Manifest(str(raw["doc_id"]), int(raw["page_count"]), float(raw.get("created", 0)))


def _source(doc: DocumentRef) -> dict[str, Any]:
    return {"bucket": doc.bucket, "name": doc.name, "generation": doc.generation}


def _dump(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, indent=2, sort_keys=True).encode() + b"\n"


def parse_error_reason(data: bytes) -> str:
    """The ``reason`` of an error record, or ``"unknown"`` if it cannot be read."""
    try:
        return str(json.loads(data)["reason"])
    except (ValueError, KeyError, TypeError):
        return "unknown"
