"""How far the splitter got with a document, kept in the work bucket next to its page images.

The splitter may die halfway (instance lost, out of memory) and Eventarc then delivers the
event again; a finalize event may also arrive twice. The work bucket says what is done::

    pages/<doc_id>/00001.png                  a rendered page (created once)
    pages/<doc_id>/00002.failed.json          a page that could not be rendered (reason,
                                              message; created once, so a retry does
                                              not render it again)
    pages/<doc_id>/published-00001-00100      pages 1..100 are published (created once,
                                              right after the publish was confirmed)
    pages/<doc_id>/lease-0001                 an attempt is splitting until "expires"
    pages/<doc_id>/first-attempt              when the first attempt started (created once)
    pages/<doc_id>/republished-00001-00100-T  the reconciler published pages 1..100 again at
                                              T (ms): their messages had been lost
                                              (:mod:`ocrpipe.splitter.reconcile`)

An image alone does not mean "published": an image uploaded just before a crash is
published by the next attempt without being rendered again. Pages inside a ``published``
range are never published again. A crash between a batch's publish and its marker is the
one case where pages go out twice: at most one batch (:data:`ocrpipe.pubsub.PUBLISH_BATCH`
pages) per crash, which the worker absorbs (it writes each page once).

The lease keeps two attempts from publishing at the same time (a duplicate event, or a
retry while an attempt that Cloud Run timed out is still running): a second attempt finds
a live lease and fails retryably, so Eventarc tries again later. A lease lasts longer than
an attempt may run (its time budget, one page timeout and a margin), the holder publishes
only while its lease will outlive the publish, and releases it when it stops; a crashed
attempt's lease only delays the retry until it expires (11 minutes by default).

Eventarc retries a failed event for 24 hours and then drops it. A document whose attempts
keep running out of time (hostile pages each just under the render timeout) would then
never get a record and show "running" forever. So the first attempt's start is kept, and
an attempt that starts more than ``split_deadline_s`` (20 h) later, with pages still
unpublished, ends the document with ``split_timeout`` (:func:`check_split_deadline`).
"""

from __future__ import annotations

import json

from ocrpipe.errors import BadInput, ObjectMissing, RetryableError
from ocrpipe.naming import WorkState, first_attempt_name, lease_name
from ocrpipe.storage import ObjectStore


def acquire_lease(
    store: ObjectStore, bucket: str, doc_id: str, state: WorkState, *, now: float, ttl_s: float
) -> str:
    """Create the next lease object, or raise :class:`RetryableError` while another
    attempt's lease is alive (Eventarc retries later). Returns the lease's name."""
    number = 1
    if state.leases:
        expires = lease_expiry(store, bucket, doc_id, state)
        if expires > now:
            raise RetryableError(
                f"another attempt is splitting this document (lease until {expires:.0f})",
                reason="split_in_progress",
            )
        number = state.leases[-1] + 1
    name = lease_name(doc_id, number)
    body = json.dumps({"expires": now + ttl_s}).encode()
    if not store.create(bucket, name, body, "application/json"):
        raise RetryableError(
            "another attempt took the lease on this document first", reason="split_in_progress"
        )
    return name


def lease_expiry(store: ObjectStore, bucket: str, doc_id: str, state: WorkState) -> float:
    """When the newest lease of the document expires (0 if there is none, it was released
    since the listing, or it cannot be read: never block forever on a guess)."""
    if not state.leases:
        return 0.0
    try:
        return float(
            json.loads(store.read(bucket, lease_name(doc_id, state.leases[-1])))["expires"]
        )
    except ObjectMissing:
        return 0.0
    except (ValueError, KeyError, TypeError):
        return 0.0


def first_attempt_started(store: ObjectStore, bucket: str, doc_id: str, *, now: float) -> float:
    """When the first attempt at splitting this document started: ``now`` for the first
    attempt (which records it), the recorded time for every later one."""
    name = first_attempt_name(doc_id)
    body = json.dumps({"started": now}).encode()
    if store.create(bucket, name, body, "application/json"):
        return now
    try:
        return float(json.loads(store.read(bucket, name))["started"])
    except ObjectMissing:
        return now  # deleted since (the bucket's lifecycle): count from here
    except (ValueError, KeyError, TypeError):
        return now  # unreadable: never end a document on a guess


def check_split_deadline(
    store: ObjectStore,
    bucket: str,
    doc_id: str,
    state: WorkState,
    page_count: int,
    *,
    now: float,
    deadline_s: float,
) -> None:
    """Record the first attempt's start, or raise :class:`BadInput` (``split_timeout``)
    when this attempt starts more than ``deadline_s`` after it with pages still
    unpublished. A duplicate event for a finished split (every page inside a
    ``published`` range) passes."""
    waited = now - first_attempt_started(store, bucket, doc_id, now=now)
    if waited <= deadline_s:
        return
    missing = [p for p in range(1, page_count + 1) if p not in state.published]
    if not missing:
        return
    raise BadInput(
        f"the document could not be split in {waited / 3600:.1f} h of attempts"
        f" (limit {deadline_s / 3600:g} h, below Eventarc's 24 h of retries):"
        f" {len(missing)} of {page_count} pages were never published",
        reason="split_timeout",
    )
