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
  digest of the ``document.md`` it describes (compare them before slicing); with a bbox
  model, its ``figures`` (page, figure number, object name, box in pixels of the page image
  and normalised) and, in each page's provenance, how many figures it has and which
  references were left as text (:func:`figure_report`);
* ``<key>/@latest.json``: the newest finished generation of one input name, at a name that
  never changes (:func:`latest_record`);
* attempt records (``attempts/00007/<ns>.<kind>.json``, :class:`Attempt`): a page's history
  on the way to its result, one object per event, created once. The worker writes one for
  every delivery it nacks (``failed_delivery``: why, which delivery of how many before the
  dead-letter topic, and what its OCR requests cost); ``ocrpipe retry --failed-only`` writes
  one for each failed page it re-queues (``retried``, keeping the usage of the error record
  it deletes) and ``ocrpipe dlq replay`` one for each page it replays (``replayed``). So
  ``status`` tells a page that is retrying or dead-lettered from one that is queued, and
  ``report`` counts the work that left no page result.

A page's usage is kept as custom metadata of its Markdown or error record
(:data:`USAGE_KEY`), written in the same request as the object, and read back from the
listing when the document is assembled. So are, with a bbox model, the figures a page links
(:data:`PAGE_FIGURES_KEY`, on its Markdown) and where each figure was cut from
(:data:`FIGURE_KEY`, on the figure). GCS allows 8 KiB of custom metadata per object: a page
records at most 50 figures (:data:`ocrpipe.worker.figure_refs.MAX_FIGURES`) and lists at
most :data:`MAX_NOT_CROPPED_LISTED` references left as text, with their count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ocrpipe.assemble import PageSpan
from ocrpipe.naming import DocumentRef

RECORD_VERSION = 1
USAGE_KEY = "ocrpipe-usage"  # custom metadata of a page result: the OCR usage, as JSON
PAGE_FIGURES_KEY = "ocrpipe-figures"  # of a page's Markdown: its figures, what was left
FIGURE_KEY = "ocrpipe-figure"  # of a figure: its box and the page image's size
MAX_NOT_CROPPED_LISTED = 20
_TARGET_CHARS = 100
ATTEMPT_KEY = "ocrpipe-attempt"  # custom metadata of an attempt record: the record, as JSON
FAILED_DELIVERY = "failed_delivery"
RETRIED = "retried"
REPLAYED = "replayed"
ATTEMPT_KINDS = (FAILED_DELIVERY, RETRIED, REPLAYED)
_METADATA_MESSAGE_CHARS = 300  # GCS keeps at most 8 KiB of custom metadata per object

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
    provenance: Mapping[int, Mapping[str, Any] | None] | None = None,
    figures: Sequence[FigureEntry] | None = None,
) -> bytes:
    """``document.json``; ``provenance`` maps page -> its OCR usage (None: unknown), with
    its :func:`figure_report` for a bbox model's page; ``figures`` (None: not a bbox model)
    lists every figure the pages link."""
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
    record: dict[str, Any] = {
        "schema_version": RECORD_VERSION,
        "doc_id": doc.doc_id,
        "source": _source(doc),
        "document": {"name": markdown_name, "generation": generation, "pages_digest": digest},
        "page_count": len(spans),
        "pages": pages,
    }
    if figures is not None:
        record["figures"] = [figure.as_dict() for figure in figures]
    return _dump(record)


# --- figures (a bbox model's) -----------------------------------------------------------------


@dataclass(frozen=True)
class FigureBox:
    """Where a figure was cut from, as its own metadata records it."""

    box: tuple[int, int, int, int]  # pixels of the page image: left, top, right, bottom
    box_normalized: tuple[float, float, float, float]  # as the model wrote it (0-1000)
    image_size: tuple[int, int]  # the page image's width and height


@dataclass(frozen=True)
class FigureEntry:
    """One figure in ``document.json``; ``where`` is None if its record cannot be read."""

    page: int
    figure: int
    name: str  # the object's name in the output bucket
    where: FigureBox | None

    def as_dict(self) -> dict[str, Any]:
        where = self.where
        return {
            "page": self.page,
            "figure": self.figure,
            "name": self.name,
            "box": list(where.box) if where else None,
            "box_normalized": list(where.box_normalized) if where else None,
            "image_size": list(where.image_size) if where else None,
        }


def figure_metadata(where: FigureBox) -> dict[str, str]:
    """The custom metadata of a figure object."""
    value = {
        "box": list(where.box),
        "box_normalized": [_number(v) for v in where.box_normalized],
        "image_size": list(where.image_size),
    }
    return {FIGURE_KEY: json.dumps(value, separators=(",", ":"))}


def parse_figure_metadata(metadata: Mapping[str, str]) -> FigureBox | None:
    try:
        raw = json.loads(metadata[FIGURE_KEY])
        box = tuple(int(v) for v in raw["box"])
        normalized = tuple(float(v) for v in raw["box_normalized"])
        size = tuple(int(v) for v in raw["image_size"])
    except (KeyError, ValueError, TypeError):
        return None
    if len(box) != 4 or len(normalized) != 4 or len(size) != 2:
        return None
    return FigureBox(box, normalized, size)


@dataclass(frozen=True)
class PageFigures:
    """What a bbox model's page records of its figures."""

    figures: tuple[int, ...]  # the figure numbers its Markdown links
    not_cropped: tuple[tuple[int, str, str], ...]  # (reference number, target, reason)
    not_cropped_count: int  # all of them; only the first few are listed


def page_figures_metadata(
    figures: Sequence[int], not_cropped: Sequence[tuple[int, str, str]]
) -> dict[str, str]:
    """The custom metadata of a bbox model's page Markdown (also when it has no figure)."""
    listed = [
        [ordinal, target[:_TARGET_CHARS], reason]
        for ordinal, target, reason in not_cropped[:MAX_NOT_CROPPED_LISTED]
    ]
    value = {"figures": list(figures), "not_cropped": listed, "not_cropped_count": len(not_cropped)}
    return {PAGE_FIGURES_KEY: json.dumps(value, ensure_ascii=False, separators=(",", ":"))}


def parse_page_figures(metadata: Mapping[str, str]) -> PageFigures | None:
    raw_value = metadata.get(PAGE_FIGURES_KEY)
    if raw_value is None:
        return None
    try:
        raw = json.loads(raw_value)
        figures = tuple(int(n) for n in raw["figures"])
        listed = tuple((int(o), str(t), str(r)) for o, t, r in raw["not_cropped"])
        count = int(raw["not_cropped_count"])
    except (KeyError, ValueError, TypeError):
        return None
    return PageFigures(figures, listed, count)


def figure_report(page: PageFigures) -> dict[str, Any]:
    """What a page's provenance says of its figures in ``document.json``."""
    return {
        "figures": len(page.figures),
        "figures_not_cropped": [
            {"reference": ordinal, "target": target, "reason": reason}
            for ordinal, target, reason in page.not_cropped
        ],
        "figures_not_cropped_count": page.not_cropped_count,
    }


def index_generation(data: bytes) -> int | None:
    """The generation of the ``document.md`` a ``document.json`` describes."""
    try:
        return int(json.loads(data)["document"]["generation"])
    except (ValueError, KeyError, TypeError):
        return None


def shift_index_spans(data: bytes, shift: Callable[[int], int]) -> bytes:
    """``document.json`` with each page's byte range moved by ``shift`` (for a copy of
    ``document.md`` whose figure links were moved: :mod:`ocrpipe.figure_links`)."""
    record = json.loads(data)
    for page in record["pages"]:
        page["start"], page["end"] = shift(page["start"]), shift(page["end"])
    return _dump(record)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


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


@dataclass(frozen=True)
class Attempt:
    """One event in a page's history on the way to its result (see the module docstring).

    ``delivery`` is which delivery of the message failed (Pub/Sub's ``deliveryAttempt``, or
    the worker's own count when push does not say), ``max_deliveries`` how many the
    subscription makes before it dead-letters the message; ``usage`` what the event's OCR
    requests cost (a failed delivery's, or a retried page's deleted error record's)."""

    page: int
    kind: str  # one of ATTEMPT_KINDS
    reason: str = ""
    message: str = ""
    delivery: int | None = None
    max_deliveries: int | None = None
    message_id: str = ""
    usage: Usage | None = None
    created: float = 0.0

    @property
    def dead_lettered(self) -> bool:
        """A failed delivery that was the message's last before the dead-letter topic."""
        return (
            self.kind == FAILED_DELIVERY
            and self.delivery is not None
            and self.max_deliveries is not None
            and self.delivery >= self.max_deliveries
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "page": self.page,
            "kind": self.kind,
            "reason": self.reason,
            "message": self.message,
            "delivery": self.delivery,
            "max_deliveries": self.max_deliveries,
            "dead_lettered": self.dead_lettered,
            "message_id": self.message_id,
            "usage": self.usage,
            "created": self.created,
        }


def attempt_record(doc: DocumentRef, attempt: Attempt) -> bytes:
    """The body of an attempt record."""
    return _dump(
        {"schema_version": RECORD_VERSION, "doc_id": doc.doc_id, "source": _source(doc)}
        | attempt.as_dict()
    )


def attempt_metadata(attempt: Attempt) -> dict[str, str]:
    """The custom metadata of an attempt record: the record itself (its message cut short),
    so that a listing answers status and report without reading the objects."""
    fields = attempt.as_dict()
    fields["message"] = attempt.message[:_METADATA_MESSAGE_CHARS]
    del fields["dead_lettered"]
    return {ATTEMPT_KEY: json.dumps(fields, sort_keys=True, separators=(",", ":"))}


def parse_attempt(metadata: Mapping[str, str]) -> Attempt | None:
    """The attempt kept by :func:`attempt_metadata`, or None if there is none or it cannot
    be read."""
    try:
        raw = json.loads(metadata[ATTEMPT_KEY])
        usage = raw.get("usage")
        return Attempt(
            page=int(raw["page"]),
            kind=str(raw["kind"]),
            reason=str(raw.get("reason", "")),
            message=str(raw.get("message", "")),
            delivery=_optional_int(raw.get("delivery")),
            max_deliveries=_optional_int(raw.get("max_deliveries")),
            message_id=str(raw.get("message_id", "")),
            usage=parse_usage({USAGE_KEY: json.dumps(usage)}) if usage is not None else None,
            created=float(raw.get("created", 0.0)),
        )
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
