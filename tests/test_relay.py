"""The local stack's push relay without servers: the envelope it posts is the one Pub/Sub
push sends (the worker reads it as such), and it acks exactly what production push acks."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from ocrpipe.local.relay import Delivery, acked, push_envelope
from ocrpipe.messages import PushEnvelope
from ocrpipe.settings import Settings

SUBSCRIPTION = "projects/local-project/subscriptions/ocrpipe-pages-push"
PUBLISHED = datetime(2026, 12, 2, 7, 40, 32, 152000, tzinfo=UTC)


def delivery(attempt: int | None = 3) -> Delivery:
    return Delivery(b'{"page": 1}', {"doc_id": "d1"}, "1234", PUBLISHED, attempt)


def test_envelope_is_the_wrapped_push_format() -> None:
    body = push_envelope(delivery(), SUBSCRIPTION)
    assert body == {
        "message": {
            "data": base64.b64encode(b'{"page": 1}').decode(),
            "attributes": {"doc_id": "d1"},
            "messageId": "1234",
            "message_id": "1234",
            "publishTime": "2026-12-02T07:40:32.152000Z",
            "publish_time": "2026-12-02T07:40:32.152000Z",
        },
        "subscription": SUBSCRIPTION,
        "deliveryAttempt": 3,
    }


def test_worker_reads_the_envelope_as_a_push() -> None:
    envelope = PushEnvelope.model_validate(push_envelope(delivery(), SUBSCRIPTION))
    assert envelope.delivery_attempt == 3
    assert envelope.message.message_id == "1234"
    assert envelope.message.publish_time == PUBLISHED
    assert base64.b64decode(envelope.message.data) == b'{"page": 1}'


def test_no_delivery_attempt_without_a_dead_letter_policy() -> None:
    assert "deliveryAttempt" not in push_envelope(delivery(None), SUBSCRIPTION)


@pytest.mark.parametrize(
    ("status", "ack"),
    [(102, True), (200, True), (201, True), (202, True), (204, True), (203, False),
     (400, False), (404, False), (429, False), (500, False), (503, False)],
)  # fmt: skip
def test_acks_what_production_push_acks(status: int, ack: bool) -> None:
    assert acked(status) is ack


def test_deliveries_in_flight_default_to_the_workers_ocr_requests() -> None:
    assert Settings(ocr_max_in_flight=48).delivery_max_in_flight == 48
    assert (
        Settings(ocr_max_in_flight=48, local_delivery_max_in_flight=8).delivery_max_in_flight == 8
    )
