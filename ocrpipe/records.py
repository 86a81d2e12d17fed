"""The JSON records ocrpipe writes next to its Markdown (pure: build and parse only).

* the manifest, written once by the splitter when it knows the page count;
* error records, for a rejected input (``error.json``) or a page that failed for good
  (``pages/00007.error.json``): a stable ``reason`` code, a message a person understands,
  and where the input came from;
* the document index (``document.json``), written by the worker beside ``document.md``:
  for every page its state, the reason if it failed, and the byte range ``[start, end)`` of
  its text in ``document.md``, its ``provenance`` (the OCR client's usage: model,
  temperature, finish_reason, attempts, prompt_tokens, completion_tokens, ocr_seconds;
  null when unknown, e.g. a page that failed to render), plus the generation and page
  digest of the ``document.md`` it describes (compare them before slicing);
* ``<key>/@latest.json``: the newest finished generation of one input name, at a name that
  never changes (:func:`latest_record`).

A page's usage is kept as custom metadata of its Markdown or error record
(:data:`USAGE_KEY`), written in the same request as the object, and read back from the
listing when the document is assembled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ocrpipe.assemble import PageSpan
from ocrpipe.naming import DocumentRef

RECORD_VERSION = 1
USAGE_KEY = "ocrpipe-usage"  # custom metadata of a page result: the OCR usage, as JSON

Usage = dict[str, str | int | float]  # OcrUsage.as_dict()


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
    doc: DocumentRef,
    markdown_name: str,
    generation: int,
    digest: str,
    spans: tuple[PageSpan, ...],
    provenance: Mapping[int, Usage | None] | None = None,
) -> bytes:
    """``document.json``; ``provenance`` maps page -> its OCR usage (None: unknown)."""
    provenance = provenance or {}
    pages: list[dict[str, Any]] = []
    for span in spans:
        entry: dict[str, Any] = {
            "page": span.page,
            "state": span.state,
            "start": span.start,
            "end": span.end,
            "provenance": provenance.get(span.page),
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


def parse_index_reasons(data: bytes) -> dict[int, str]:
    """Page -> reason of every failed page in a ``document.json``."""
    try:
        pages = json.loads(data)["pages"]
        return {
            int(p["page"]): str(p.get("reason", "unknown"))
            for p in pages
            if p.get("state") == "failed"
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def usage_metadata(usage: Usage) -> dict[str, str]:
    """The custom metadata that keeps a page result's OCR usage."""
    return {USAGE_KEY: json.dumps(usage, sort_keys=True, separators=(",", ":"))}


def parse_usage(metadata: Mapping[str, str]) -> Usage | None:
    """The usage kept by :func:`usage_metadata`, or None if there is none (or it is not
    a flat object of strings and numbers)."""
    raw = metadata.get(USAGE_KEY)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    usage: Usage = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            return None
        usage[str(key)] = item
    return usage


@dataclass(frozen=True)
class Latest:
    """What ``<key>/@latest.json`` records: the generation and the state it says."""

    generation: int
    state: str
    pages_digest: str | None


def latest_record(
    doc: DocumentRef,
    *,
    state: str,
    folder: str,
    document_md: str | None,
    document_json: str | None,
    error: str | None,
    pages_digest: str | None,
    now: float | None = None,
) -> bytes:
    """``<key>/@latest.json``: where the newest finished generation of an input is.
    ``folder``, ``document_md``, ``document_json`` and ``error`` are object URIs
    (:func:`ocrpipe.naming.object_uri`; ``error`` for a rejected input, the other two for an
    assembled one; null otherwise)."""
    return _dump(
        {
            "schema_version": RECORD_VERSION,
            "source": _source(doc),
            "state": state,
            "folder": folder,
            "document_md": document_md,
            "document_json": document_json,
            "error": error,
            "pages_digest": pages_digest,
            "updated": time.time() if now is None else now,
        }
    )


def parse_latest(data: bytes) -> Latest | None:
    """The generation and state a latest.json records, or None if it cannot be read."""
    try:
        raw = json.loads(data)
        digest = raw.get("pages_digest")
        return Latest(
            int(raw["source"]["generation"]),
            str(raw["state"]),
            str(digest) if digest is not None else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def render_failure_record(reason: str, message: str) -> bytes:
    return json.dumps({"reason": reason, "message": message}, ensure_ascii=False).encode()


def parse_render_failure(data: bytes) -> tuple[str, str]:
    """(reason, message) of a render failure record; ``unknown`` where it cannot be read."""
    try:
        raw = json.loads(data)
        return str(raw["reason"]), str(raw["message"])
    except (ValueError, KeyError, TypeError):
        return "unknown", "the render failure record cannot be read"
