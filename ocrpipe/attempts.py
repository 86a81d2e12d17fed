"""The one writer of attempt records (:class:`ocrpipe.records.Attempt`): the worker's for a
delivery it nacks, the operator's for a page ``retry --failed-only`` or ``dlq replay``
queues again. Each record is its own object, created once, under the page's
``attempts/`` folder (:func:`ocrpipe.naming.attempt_record_name`), its content also in its
custom metadata so that a listing answers ``status`` and ``report``.
"""

from __future__ import annotations

import time
from dataclasses import replace

from ocrpipe import naming, records
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore


def write_attempt(
    store: ObjectStore,
    settings: Settings,
    doc: naming.DocumentRef,
    attempt: records.Attempt,
    *,
    now_ns: int | None = None,
) -> records.Attempt:
    """Create ``attempt``'s record for ``doc``, timed ``now_ns`` (default: now); returns
    the attempt with that time."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    attempt = replace(attempt, created=now_ns / 1e9)
    store.write(
        settings.output_bucket,
        naming.attempt_record_name(doc, attempt.page, now_ns, attempt.kind),
        records.attempt_record(doc, attempt),
        "application/json",
        if_generation_match=0,
        metadata=records.attempt_metadata(attempt),
    )
    return attempt


def record_requeued(
    store: ObjectStore,
    settings: Settings,
    doc: naming.DocumentRef,
    page: int,
    kind: str,
    *,
    source: str = "",
    usage: records.Usage | None = None,
) -> records.Attempt:
    """Page ``page`` was queued again (``kind``: ``records.RETRIED`` or ``REPLAYED``).
    ``source`` names what it replaces (the deleted error record, ``name#generation``, or
    the replayed message's id); ``usage`` is what that earlier result cost."""
    return write_attempt(store, settings, doc, records.Attempt(page, kind, message_id=source,
                                                               usage=usage))  # fmt: skip
