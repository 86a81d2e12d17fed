"""The Pub/Sub topology every deployment shares: topic and subscription names, ack deadline,
retry and dead-letter policy.

The numbers live in ``topology.json`` beside this module, which terraform reads with
``jsondecode(file(...))``: the local stack and production are equal by construction.

Why these numbers (a GPU cold start must never dead-letter a page):

* ``ack_deadline_seconds = 600`` is Pub/Sub's maximum and, for push, also the HTTP timeout.
  The worker's whole in-request budget is ``ack_deadline - request_budget_margin`` = 540 s,
  so a reply always reaches Pub/Sub before it gives up on the request.
* Within one delivery the OCR client retries connection errors, 429 and 5xx with jittered
  exponential backoff for up to 540 s. A Cloud Run L4 cold start is 30-90 s (minutes under
  load), so one delivery normally outlasts it.
* If it does not, the worker answers 503 and Pub/Sub redelivers after 10..600 s of backoff.
  Ten delivery attempts cover at least 10 x 540 s of in-request retrying plus the backoff
  between them: well over 90 minutes of a GPU service refusing work before a page is
  dead-lettered. Only a service that stays down that long sends pages to the dead-letter
  topic, where ``ocrpipe dlq replay`` puts them back.

Retention, chosen together (the pages topic, both subscriptions, the page images), so that
no page is lost however long the backlog (docs/OPERATIONS.md, "Retention and what it
costs", has the prices):

* ``message_retention_seconds`` = 31 days, Pub/Sub's maximum, on the pages subscription: a
  backlog up to a month old (about 1.6 million pages per L4 at 0.6 pages/s) waits in
  Pub/Sub. Past it, nothing is lost either: the reconciler (ocrpipe/splitter/reconcile.py,
  scheduled in production) publishes again every page whose newest message is older than
  this and that has no result. Unacknowledged messages kept over 24 h are billed as storage,
  about $0.27 per GiB-month: a page message is about 400 bytes, so a million waiting pages
  cost about $0.10 a month.
* ``dead_letter_retention_seconds`` = 7 days on the dead-letter subscription: dead letters
  raise an alert and wait for ``ocrpipe dlq replay``; one nobody replays is published again
  by the reconciler once its first message is a retention old.
* ``pages_topic_retention_seconds`` = 7 days on the pages topic: the push subscription can
  seek back a week and receive again what it acknowledged (after a worker deploy that
  acknowledged pages without writing them). Every published message is stored: about
  $0.02 a week per million pages.
* ``page_image_retention_days`` = 45: page images must outlive every message that can name
  them, which may wait out the pages subscription, then the dead-letter subscription, and
  be replayed (31 + 7 + 2 = 40 days, :attr:`Topology.image_needed_seconds`; a test checks
  it), plus 5 days of slack: a page published again within 5 days of its split (after an
  incident or a restart) keeps its image as it is. Later, the reconciler rewrites the image
  in place before it publishes the page again (a server-side copy: its age starts again),
  and renders it again if it is gone. Images cost GCS storage: 120 KB a text page, 475 KB a
  scanned one (docs/PERFORMANCE.md), so 45 days of a million text pages (120 GB, 180
  GB-months) cost about $3.60 at $0.020 per GB-month, scanned ones about $14: about 2 % of
  their OCR (about $650 per million pages on an L4).

The local stack keeps the same numbers except where the emulator refuses them: it keeps a
subscription's messages for at most 7 days (ocrpipe/local/pubsub_admin.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TOPOLOGY_FILE = Path(__file__).with_name("topology.json")


@dataclass(frozen=True)
class Topology:
    pages_topic: str
    pages_push_subscription: str
    dead_letter_topic: str
    dead_letter_subscription: str
    documents_topic: str  # one message per document reaching a terminal state
    local_notifications_topic: str  # local stack only: fake-gcs-server's finalize events
    local_notifications_subscription: str  # local stack only: read by the Eventarc stand-in
    ack_deadline_seconds: int
    retry_minimum_backoff_seconds: int
    retry_maximum_backoff_seconds: int
    max_delivery_attempts: int
    dead_letter_ack_deadline_seconds: int  # the CLI leases dead letters itself (dlq.py)
    publish_timeout_seconds: int  # a publish confirmed within this, or it failed
    message_retention_seconds: int  # the pages subscription's
    dead_letter_retention_seconds: int  # the dead-letter subscription's
    pages_topic_retention_seconds: int  # lets the pages subscription seek back this far
    request_budget_margin_seconds: int
    page_image_retention_days: int

    @property
    def image_needed_seconds(self) -> int:
        """How long a page image must outlive the publish of a message naming it: the
        message may wait out the pages subscription, then the dead-letter subscription, and
        be replayed (two days for that)."""
        return self.message_retention_seconds + self.dead_letter_retention_seconds + 2 * 86400

    @property
    def request_budget_seconds(self) -> int:
        """How long one push request may spend before it must answer."""
        return self.ack_deadline_seconds - self.request_budget_margin_seconds


@cache
def load_topology() -> Topology:
    raw = json.loads(TOPOLOGY_FILE.read_text(encoding="utf-8"))
    raw.pop("_comment", None)
    return Topology(**raw)
