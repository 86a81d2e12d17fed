from __future__ import annotations

import base64
import json

import pytest

from ocrpipe.errors import BadMessage, NewerSchema, push_status_for
from ocrpipe.messages import PageMessage, PushEnvelope, StorageObjectData
from ocrpipe.naming import DocumentRef

DOC = DocumentRef("in", "a.pdf", 42)


def page_message(**overrides: object) -> PageMessage:
    fields: dict[str, object] = {
        "doc_id": DOC.doc_id,
        "source_bucket": "in",
        "source_name": "a.pdf",
        "source_generation": 42,
        "page": 2,
        "page_count": 3,
        "image_uri": "gs://work/pages/x/00002.png",
        "image_mime": "image/png",
    }
    fields.update(overrides)
    return PageMessage.model_validate(fields)


def test_round_trip_keeps_every_field_and_the_schema_version() -> None:
    message = page_message()
    decoded = PageMessage.decode(message.encode())
    assert decoded == message
    assert json.loads(message.encode())["schema_version"] == 1
    assert message.attributes() == {
        "doc_id": DOC.doc_id,
        "page": "2",
        "source_generation": "42",
        "schema_version": "1",
    }


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"page": 4}, "beyond page_count"),
        ({"page": 0}, "page"),
        ({"doc_id": "d" + "0" * 23}, "doc_id does not match"),
        ({"image_uri": "https://x/y.png"}, "image_uri"),
        ({"image_mime": "image/gif"}, "image_mime"),
        ({"schema_version": 0}, "schema_version"),
        ({"image_uri": None}, "needs image_uri and image_mime"),
        ({"render_failure": {"reason": "page_render_failed", "message": "x"}}, "has no image"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_messages_are_rejected_with_the_reason(
    overrides: dict[str, object], complaint: str
) -> None:
    body = json.loads(page_message().encode())
    body.update(overrides)
    with pytest.raises(BadMessage, match=complaint) as info:
        PageMessage.decode(json.dumps(body).encode())
    assert info.value.reason == "bad_message"


def test_a_page_that_failed_to_render_travels_without_an_image_as_version_2() -> None:
    failure = {"reason": "page_render_timeout", "message": "slow"}
    message = page_message(
        image_uri=None, image_mime=None, schema_version=2, render_failure=failure
    )
    body = json.loads(message.encode())
    assert body["schema_version"] == 2 and "image_uri" not in body
    assert PageMessage.decode(message.encode()) == message
    with pytest.raises(BadMessage, match="render_failure needs schema_version 2"):
        PageMessage.decode(json.dumps({**body, "schema_version": 1}).encode())
    # An ordinary page stays version 1, byte for byte what version-1 workers read.
    assert "render_failure" not in json.loads(page_message().encode())


def test_a_newer_schema_version_is_retryable_not_bad() -> None:
    body = {**json.loads(page_message().encode()), "schema_version": 3, "new": True}
    with pytest.raises(NewerSchema) as info:
        PageMessage.decode(json.dumps(body).encode())
    assert push_status_for(info.value) == 503


def test_garbage_is_a_bad_message() -> None:
    with pytest.raises(BadMessage):
        PageMessage.decode(b"\xff not json")


def test_push_envelope_decodes_data() -> None:
    message = page_message()
    body = json.dumps(
        {
            "message": {
                "data": base64.b64encode(message.encode()).decode(),
                "messageId": "7",
                "attributes": message.attributes(),
                "publishTime": "2026-01-01T00:00:00Z",
            },
            "subscription": "projects/p/subscriptions/s",
        }
    ).encode()
    envelope = PushEnvelope.parse(body)
    assert envelope.message.message_id == "7"
    assert PageMessage.decode(envelope.data()) == message
    assert envelope.delivery_attempt is None  # the emulator never sends it


@pytest.mark.parametrize("body", [b"{}", b"[]", b"nope", b'{"message": {"data": "%%%"}}'])
def test_bad_envelopes(body: bytes) -> None:
    with pytest.raises(BadMessage):
        PushEnvelope.parse(body).data()


def test_storage_object_data_from_the_json_api() -> None:
    data = StorageObjectData.model_validate(
        {
            "bucket": "in",
            "name": "a.pdf",
            "generation": "42",
            "size": "10",
            "kind": "storage#object",
        }
    )
    assert data.document == DOC
