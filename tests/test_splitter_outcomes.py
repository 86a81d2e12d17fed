"""What the splitter answers Eventarc: 200 (acknowledged, never retried) for bad input once
its error record is written, 500 (retried) for trouble a retry can fix."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from functions_framework import create_app

from ocrpipe import naming
from ocrpipe.errors import StorageUnavailable
from ocrpipe.pubsub import OutgoingMessage
from ocrpipe.settings import Settings
from ocrpipe.testing import inputs as make
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pdfs import text_pdf
from tests.fakes import SPLITTER_SERVICES
from tests.test_splitter_contract import SOURCE, finalized

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out", render_processes=1)


class PubSubDown:
    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        raise StorageUnavailable("pubsub.googleapis.com: 503")


@pytest.fixture
def client() -> Iterator[Any]:
    app = create_app(target="on_finalize", source=str(SOURCE), signature_type="cloudevent")  # type: ignore[no-untyped-call]
    yield app.test_client()
    SPLITTER_SERVICES.clear()


def post(client: Any, store: MemoryStore, name: str, data: bytes) -> int:
    generation = store.put("in", name, data)
    headers, body = to_binary(finalized("in", name, generation, len(data)))
    status: int = client.post("/", headers=headers, data=body).status_code
    return status


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.pdf", b"", "empty_file"),
        ("locked.pdf", make.encrypted_pdf("pw"), "pdf_encrypted"),
        ("a.docx", make.docx_like(), "unsupported_type"),
    ],
)
def test_bad_input_is_acknowledged(client: Any, name: str, data: bytes, reason: str) -> None:
    store = MemoryStore()
    SPLITTER_SERVICES.append((SETTINGS, store, MemoryPublisher()))
    assert post(client, store, name, data) == 200
    doc = naming.DocumentRef("in", name, store.stat("in", name).generation)  # type: ignore[union-attr]
    assert json.loads(store.read("out", naming.document_error_name(doc)))["reason"] == reason


def test_pubsub_trouble_is_retried_and_the_retry_finishes(client: Any) -> None:
    store = MemoryStore()
    data, _ = text_pdf(2, lines=1)
    SPLITTER_SERVICES.append((SETTINGS, store, PubSubDown()))
    assert post(client, store, "a.pdf", data) == 500
    publisher = MemoryPublisher()
    SPLITTER_SERVICES.append((SETTINGS, store, publisher))
    generation = store.stat("in", "a.pdf").generation  # type: ignore[union-attr]
    headers, body = to_binary(finalized("in", "a.pdf", generation, len(data)))
    assert client.post("/", headers=headers, data=body).status_code == 200
    assert len(publisher.published) == 2
