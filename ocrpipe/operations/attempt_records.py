"""The operator's attempt records (:mod:`ocrpipe.records`): a page put back in the queue.

``ocrpipe retry --failed-only`` and ``ocrpipe dlq replay`` each leave one per page they
queue again, after the worker's records of its failed deliveries: so ``status`` shows the
page queued, not retrying or dead-lettered. A retried page's record keeps the usage of the
error record the retry deletes, so ``report`` still counts what its OCR requests cost; its
``message_id`` names that error record (``name#generation``), so a retry run twice counts
it once.
"""

from __future__ import annotations

import time

from ocrpipe import naming, records
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore


def record_requeued(
    store: ObjectStore,
    settings: Settings,
    doc: naming.DocumentRef,
    page: int,
    kind: str,
    *,
    reason: str = "",
    message: str = "",
    source: str = "",
    usage: records.Usage | None = None,
    now_ns: int | None = None,
) -> records.Attempt:
    """Write page ``page``'s record of kind ``records.RETRIED`` or ``records.REPLAYED``."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    attempt = records.Attempt(
        page=page,
        kind=kind,
        reason=reason,
        message=message,
        message_id=source,
        usage=usage,
        created=now_ns / 1e9,
    )
    store.write(
        settings.output_bucket,
        naming.attempt_record_name(doc, page, now_ns, kind),
        records.attempt_record(doc, attempt),
        "application/json",
        if_generation_match=0,
        metadata=records.attempt_metadata(attempt),
    )
    return attempt
