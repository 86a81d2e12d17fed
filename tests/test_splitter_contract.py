"""The splitter through functions_framework.create_app with real finalize CloudEvents."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from functions_framework import create_app

from ocrpipe import naming
from ocrpipe.messages import PageMessage
from ocrpipe.naming import DocumentRef
from ocrpipe.settings import Settings
from ocrpipe.testing import inputs as make
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pdfs import text_pdf
from tests import splitter_source
from tests.fakes import SPLITTER_SERVICES, RecordingStore

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out", render_processes=1)
SOURCE = Path(splitter_source.__file__)


def finalized(bucket: str, name: str, generation: int, size: int) -> CloudEvent:
    return CloudEvent(
        {
            "type": "google.cloud.storage.object.v1.finalized",
            "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
            "subject": f"objects/{name}",
            "id": "4242",
            "time": "2026-11-26T10:00:00Z",
            "datacontenttype": "application/json",
        },
        {
            "kind": "storage#object",
            "bucket": bucket,
            "name": name,
            "generation": str(generation),
            "size": str(size),
            "contentType": "application/pdf",
        },
    )


@pytest.fixture
def fakes() -> Iterator[tuple[MemoryStore, MemoryPublisher]]:
    store, publisher = MemoryStore(), MemoryPublisher()
    SPLITTER_SERVICES.append((SETTINGS, store, publisher))
    yield store, publisher
    SPLITTER_SERVICES.clear()


@pytest.fixture
def client() -> Any:
    app = create_app(target="on_finalize", source=str(SOURCE), signature_type="cloudevent")  # type: ignore[no-untyped-call]
    return app.test_client()


def post(client: Any, event: CloudEvent, mode: str = "binary") -> int:
    headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    status: int = client.post("/", headers=headers, data=body).status_code
    return status


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_pdf_becomes_page_images_and_one_message_per_page(
    fakes: tuple[MemoryStore, MemoryPublisher], client: Any, mode: str
) -> None:
    store, publisher = fakes
    data, _ = text_pdf(3)
    generation = store.put("in", "reports/q1.pdf", data, "application/pdf")
    assert post(client, finalized("in", "reports/q1.pdf", generation, len(data)), mode) == 200

    doc = DocumentRef("in", "reports/q1.pdf", generation)
    messages = [PageMessage.decode(m.data) for topic, m in publisher.published]
    assert {topic for topic, _ in publisher.published} == {SETTINGS.pages_topic}
    assert [m.page for m in messages] == [1, 2, 3]
    assert all(m.doc_id == doc.doc_id and m.page_count == 3 for m in messages)
    attributes = [m.attributes for _, m in publisher.published]
    assert attributes[0]["doc_id"] == doc.doc_id and attributes[2]["page"] == "3"
    for message in messages:
        assert message.image_uri is not None
        bucket, _, name = message.image_uri.removeprefix("gs://").partition("/")
        assert store.read(bucket, name).startswith(b"\x89PNG")
    manifest = json.loads(store.read("out", naming.manifest_name(doc)))
    assert manifest["page_count"] == 3 and manifest["source"]["generation"] == generation


def test_a_stale_event_publishes_nothing(
    fakes: tuple[MemoryStore, MemoryPublisher], client: Any
) -> None:
    store, publisher = fakes
    data, _ = text_pdf(1)
    old = store.put("in", "a.pdf", data, "application/pdf")
    store.put("in", "a.pdf", data, "application/pdf")
    assert post(client, finalized("in", "a.pdf", old, len(data))) == 200
    assert publisher.published == []


def test_a_file_that_is_not_a_pdf_gets_an_error_record(
    fakes: tuple[MemoryStore, MemoryPublisher], client: Any
) -> None:
    store, publisher = fakes
    generation = store.put("in", "fake.pdf", b"hello, I am text", "application/pdf")
    assert post(client, finalized("in", "fake.pdf", generation, 16)) == 200
    record = json.loads(
        store.read("out", naming.document_error_name(DocumentRef("in", "fake.pdf", generation)))
    )
    assert record["reason"] == "not_a_pdf"
    assert record["source"] == {"bucket": "in", "name": "fake.pdf", "generation": generation}
    [(topic, note)] = publisher.published  # no page; the rejection is announced
    assert topic == SETTINGS.documents_topic
    assert (note.attributes["state"], json.loads(note.data)["reason"]) == ("failed", "not_a_pdf")


def test_objects_in_other_buckets_are_ignored(
    fakes: tuple[MemoryStore, MemoryPublisher], client: Any
) -> None:
    store, publisher = fakes
    assert post(client, finalized("elsewhere", "a.pdf", 1, 10)) == 200
    assert publisher.published == [] and list(store.names("out")) == []


def test_a_split_writes_only_the_manifest_in_the_output_bucket_and_never_lists_it() -> None:
    """The splitter may write ``manifest.json``, ``error.json`` and (for a rejected input)
    ``@latest.json`` in the output bucket and nothing else, and never lists it: pages and
    documents are the worker's (and production IAM grants the splitter exactly that). Page
    2 fails to render, the path that used to write a page error record and assemble the
    document from the splitter."""
    store, publisher = RecordingStore(), MemoryPublisher()
    SPLITTER_SERVICES.append((SETTINGS, store, publisher))
    try:
        app = create_app(target="on_finalize", source=str(SOURCE), signature_type="cloudevent")  # type: ignore[no-untyped-call]
        client = app.test_client()
        one = make.missing_page_pdf(["one", "two"], missing=2)
        only = make.missing_page_pdf(["only"], missing=1)
        for name, data in (("two.pdf", one), ("only.pdf", only), ("bad.pdf", b"dear diary")):
            generation = store.put("in", name, data, "application/pdf")
            assert post(client, finalized("in", name, generation, len(data))) == 200
    finally:
        SPLITTER_SERVICES.clear()
    written = {name.rsplit("/", 1)[1] for bucket, name in store.writes if bucket == "out"}
    assert written == {"manifest.json", "error.json", "@latest.json"}
    latest = [n for b, n in store.writes if b == "out" and n.endswith("/@latest.json")]
    assert latest == [naming.latest_name("bad.pdf")]
    assert [prefix for bucket, prefix in store.listings if bucket == "out"] == []
    # Every page still reaches the worker, the ones that failed to render included.
    to_pages = [p for p in publisher.published if p[0] == SETTINGS.pages_topic]
    pages = sorted((m.source_name, m.page) for m in map(decode, to_pages))
    assert pages == [("only.pdf", 1), ("two.pdf", 1), ("two.pdf", 2)]


def decode(published: tuple[str, Any]) -> PageMessage:
    return PageMessage.decode(published[1].data)
