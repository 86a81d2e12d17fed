"""One JSON object per line on stdout, with the fields Cloud Logging understands.

Request context (trace, doc_id, page) lives in a ContextVar, set once at the boundary of
each request or event and picked up by every log line below it::

    with log_context(doc_id="d1f…", page=3, trace=trace_from_headers(headers, project)):
        logger.info("page written", extra={"duration_ms": 812})
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_context: ContextVar[dict[str, Any]] = ContextVar("ocrpipe_log_context", default={})  # noqa: B039

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_EXTRA_FIELDS = ("duration_ms", "error_class", "reason", "attempt", "status")
_MAX_FIELD = 2000
_ESCAPES = {c: f"\\u{c:04x}" for c in (*range(0x7F, 0xA0), 0x2028, 0x2029)}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def trace_from_headers(headers: Mapping[str, str], project: str) -> str | None:
    """``projects/P/traces/T`` from ``traceparent`` or ``X-Cloud-Trace-Context``."""
    trace_id = ""
    if parent := headers.get("traceparent"):
        parts = parent.split("-")
        if len(parts) >= 2:
            trace_id = parts[1]
    elif cloud := headers.get("x-cloud-trace-context"):
        trace_id = cloud.split("/", 1)[0]
    if not trace_id or not trace_id.isalnum() or len(trace_id) > 64:
        return None
    return f"projects/{project}/traces/{trace_id}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = _context.get()
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": _clip(record.getMessage()),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        if trace := context.get("trace"):
            entry["logging.googleapis.com/trace"] = trace
        labels = {k: str(context[k]) for k in ("doc_id", "page", "service") if k in context}
        if labels:
            entry["logging.googleapis.com/labels"] = labels
        for name in _EXTRA_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        # json.dumps escapes C0 control characters; DEL, C1 controls (a terminal's 8-bit CSI)
        # and the Unicode line separators are escaped too, so nothing from an input (an
        # object name, say) can break a line, forge one, or reach a terminal as a control.
        return json.dumps(entry, ensure_ascii=False, default=str).translate(_ESCAPES)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_FIELD else text[:_MAX_FIELD] + "…"


def configure_logging(level: str = "INFO", service: str = "") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "google", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    if service:
        _context.set({**_context.get(), "service": service})
