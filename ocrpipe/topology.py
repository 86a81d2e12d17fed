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

Page images in the work bucket must outlive every message that can still name them: a
message may wait ``message_retention_seconds`` (7 days) on the push subscription, as long
again on the dead-letter subscription, and then be replayed. The work bucket's lifecycle
(terraform/storage.tf) deletes images after ``page_image_retention_days`` = 16: the two
retentions plus two days for the replay (a test checks the sum).
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
    message_retention_seconds: int
    request_budget_margin_seconds: int
    page_image_retention_days: int

    @property
    def request_budget_seconds(self) -> int:
        """How long one push request may spend before it must answer."""
        return self.ack_deadline_seconds - self.request_budget_margin_seconds


@cache
def load_topology() -> Topology:
    raw = json.loads(TOPOLOGY_FILE.read_text(encoding="utf-8"))
    raw.pop("_comment", None)
    return Topology(**raw)
