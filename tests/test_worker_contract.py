"""The worker app through Starlette's test client, with real push envelopes, an in-memory
store and a scripted OCR server."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from starlette.testclient import TestClient

from ocr_worker.app import create_app
from ocrpipe import naming, records
from ocrpipe.messages import PageMessage
from ocrpipe.naming import DocumentRef
from ocrpipe.operations.status import invalid_messages
from ocrpipe.storage import ObjectInfo
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pushes import WORKER_SETTINGS, push_envelope, ready_document
from tests.fakes import RecordingStore, ScriptedOcrServer, completion


def with_usage(response: httpx.Response, completion_tokens: int) -> httpx.Response:
    """``response`` with the usage vLLM reports."""
    body = json.loads(response.content)
    body["usage"] = {"prompt_tokens": 2145, "completion_tokens": completion_tokens}
    return httpx.Response(response.status_code, json=body)


def test_pages_then_document(client: TestClient, store: MemoryStore) -> None:
    doc, messages = ready_document(store)
    assert client.post("/", json=push_envelope(messages[1])).status_code == 204
    assert store.stat("out", naming.document_markdown_name(doc)) is None
    assert client.post("/", json=push_envelope(messages[0])).status_code == 204
    assert store.read("out", naming.page_markdown_name(doc, 1)) == b"image 1"
    assert store.read("out", naming.document_markdown_name(doc)).decode() == (
        "<!-- page 1 -->\n\nimage 1\n\n<!-- page 2 -->\n\nimage 2\n"
    )


def test_a_duplicate_delivery_writes_nothing_twice(
    client: TestClient, store: MemoryStore, server: ScriptedOcrServer, publisher: MemoryPublisher
) -> None:
    doc, messages = ready_document(store, pages=1)
    for _ in range(3):
        assert client.post("/", json=push_envelope(messages[0])).status_code == 204
    assert len(server.requests) == 1
    output_writes = [name for bucket, name in store.writes if bucket == "out"]
    assert sorted(output_writes) == sorted(
        [
            naming.manifest_name(doc),  # the splitter's, from ready_document()
            naming.page_markdown_name(doc, 1),
            naming.document_markdown_name(doc),
            naming.document_index_name(doc),
            naming.latest_name(doc.name),
        ]
    )
    assert [topic for topic, _ in publisher.published] == [WORKER_SETTINGS.documents_topic]


def test_ocr_unavailable_nacks_with_503_and_writes_only_why(store: MemoryStore) -> None:
    down = ScriptedOcrServer([httpx.Response(503)])
    settings = WORKER_SETTINGS.model_copy(update={"ocr_budget_s": 1.5})
    with TestClient(
        create_app(settings, store=store, ocr=down.client(), publisher=MemoryPublisher())
    ) as test_client:
        doc, messages = ready_document(store, pages=1)
        assert test_client.post("/", json=push_envelope(messages[0])).status_code == 503
    written = [n for b, n in store.writes if b == "out" and not n.endswith("manifest.json")]
    assert [n.startswith(naming.page_attempts_prefix(doc, 1)) for n in written] == [True]


def test_a_nacked_delivery_records_why_which_delivery_and_what_its_requests_cost(
    store: MemoryStore,
) -> None:
    """A loop (tokens spent), then the server is down until the budget ends: nacked. The
    record says so, counts this message's deliveries when push does not, and knows the last
    delivery before the dead-letter topic."""
    flaky = ScriptedOcrServer(
        [with_usage(completion("la " * 50, "length"), 50), httpx.Response(503)]
    )
    settings = WORKER_SETTINGS.model_copy(update={"ocr_budget_s": 1.5})
    with TestClient(
        create_app(settings, store=store, ocr=flaky.client(), publisher=MemoryPublisher())
    ) as test_client:
        doc, messages = ready_document(store, pages=1)
        for body in (
            push_envelope(messages[0]),
            push_envelope(messages[0]),
            push_envelope(messages[0]) | {"deliveryAttempt": 10},
        ):
            assert test_client.post("/", json=body).status_code == 503
    prefix = naming.page_attempts_prefix(doc, 1)
    kept = [
        records.parse_attempt(i.metadata)
        for i in sorted(store.list("out", prefix), key=lambda i: i.name)
    ]
    assert [(a.kind, a.reason.split(":")[0], a.delivery, a.dead_lettered) for a in kept if a] == [
        ("failed_delivery", "ocr_unavailable", 1, False),
        ("failed_delivery", "ocr_unavailable", 2, False),
        ("failed_delivery", "ocr_unavailable", 10, True),
    ]
    first = kept[0]
    assert first is not None and first.usage is not None
    assert first.usage["completion_tokens"] == 50 and int(first.usage["attempts"]) >= 2
    body = json.loads(
        store.read("out", sorted(n for n in store.names("out") if n.startswith(prefix))[0])
    )
    assert body["page"] == 1 and body["max_deliveries"] == 10 and "503" in body["message"]


def test_a_page_that_loops_forever_gets_an_error_record_and_an_ack(store: MemoryStore) -> None:
    looping = ScriptedOcrServer([completion("la " * 50, "repetition")])
    with TestClient(
        create_app(WORKER_SETTINGS, store=store, ocr=looping.client(), publisher=MemoryPublisher())
    ) as test_client:
        doc, messages = ready_document(store, pages=1)
        assert test_client.post("/", json=push_envelope(messages[0])).status_code == 204
    record = json.loads(store.read("out", naming.page_error_name(doc, 1)))
    assert record["reason"] == "ocr_repetition_loop" and record["page"] == 1
    assert "Page 1 failed" in store.read("out", naming.document_markdown_name(doc)).decode()


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"message": {"data": "bm9wZQ=="}}'])
def test_an_undecodable_delivery_is_kept_and_acked(
    client: TestClient, store: MemoryStore, body: bytes
) -> None:
    assert client.post("/", content=body).status_code == 204
    (kept,) = [n for n in store.names("out") if n.startswith("_invalid-messages/")]
    assert json.loads(store.read("out", kept))["reason"] == "bad_message"


def test_a_page_of_a_superseded_generation_is_dropped(
    client: TestClient, store: MemoryStore, server: ScriptedOcrServer
) -> None:
    doc, messages = ready_document(store, pages=1)
    store.put("in", "docs/a.pdf", b"%PDF-1.7 newer", "application/pdf")
    assert client.post("/", json=push_envelope(messages[0])).status_code == 204
    assert server.requests == []
    assert store.stat("out", naming.page_markdown_name(doc, 1)) is None


def test_health(client: TestClient) -> None:
    assert client.get("/health").status_code == 200


def test_two_instances_finishing_the_last_pages_at_once_assemble_exactly_once() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from ocrpipe.worker.page_work import complete_document

    store = MemoryStore()
    doc, _ = ready_document(store, pages=2)
    store.put("out", naming.page_markdown_name(doc, 1), b"one")
    store.put("out", naming.page_markdown_name(doc, 2), b"two")
    publisher = MemoryPublisher()
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: complete_document(doc, 2, store, WORKER_SETTINGS, publisher), range(8)
            )
        )
    assert sorted(results) == [False] * 7 + [True]
    final = naming.document_markdown_name(doc)
    assert [name for _, name in store.writes].count(final) == 1


class CountingStore(MemoryStore):
    """Counts the object entries that listings return (what GCS bills and we parse)."""

    def __init__(self) -> None:
        super().__init__()
        self.listed = 0

    def list(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        found = super().list(bucket, prefix)
        self.listed += len(found)
        return found


def test_a_long_document_is_assembled_once_at_its_last_page_without_quadratic_listing() -> None:
    import random

    from ocrpipe.worker.page_work import complete_document

    pages = 1000
    store = CountingStore()
    doc = DocumentRef("in", "long.pdf", store.put("in", "long.pdf", b"%PDF-1.7"))
    order = list(range(1, pages + 1))
    random.Random(5).shuffle(order)
    publisher = MemoryPublisher()
    results = []
    for page in order:
        store.put("out", naming.page_markdown_name(doc, page), f"page {page}".encode())
        results.append(complete_document(doc, pages, store, WORKER_SETTINGS, publisher, page=page))
    assert results == [False] * (pages - 1) + [True]
    text = store.read("out", naming.document_markdown_name(doc)).decode()
    assert text.count("<!-- page ") == pages and "page 1000" in text
    # Listing everything after every page would list ~pages^2/2 = 500,000 entries.
    assert store.listed < 150_000, store.listed


def refused(store: MemoryStore) -> list[dict[str, object]]:
    """The records of refused or undecodable deliveries, as an operator finds them."""
    names = sorted(n for n in store.names("out") if n.startswith("_invalid-messages/"))
    return [json.loads(store.read("out", n)) for n in names]


def forged(message: PageMessage, **changes: object) -> PageMessage:
    fields = {**message.model_dump(), **changes}
    return PageMessage(**fields)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("image_in_another_bucket", "foreign_image"),
        ("image_of_another_document", "foreign_image"),
        ("image_of_another_page", "foreign_image"),
        ("extension_not_the_mime_type", "foreign_image"),
        ("source_in_another_bucket", "foreign_source"),
        ("page_count_not_the_manifest", "page_count_mismatch"),
        ("oversized_image", "page_image_too_large"),
    ],
)
def test_a_message_the_splitter_did_not_write_is_refused_recorded_and_never_read(
    tamper: str, reason: str, store: RecordingStore, server: ScriptedOcrServer
) -> None:
    doc, messages = ready_document(store, pages=2)
    first = messages[0]
    if tamper == "image_in_another_bucket":
        store.put("secrets", "payroll.png", b"salaries", "image/png")
        bad = forged(first, image_uri="gs://secrets/payroll.png")
    elif tamper == "image_of_another_document":
        other = naming.page_image_name("dffffffffffffffffffffff", 1, "png")
        store.put("work", other, b"someone else's page", "image/png")
        bad = forged(first, image_uri=f"gs://work/{other}")
    elif tamper == "image_of_another_page":
        bad = forged(first, image_uri=messages[1].image_uri)
    elif tamper == "extension_not_the_mime_type":
        bad = forged(first, image_mime="image/jpeg")
    elif tamper == "source_in_another_bucket":
        elsewhere = DocumentRef("elsewhere", "docs/a.pdf", doc.generation)
        store.put("elsewhere", "docs/a.pdf", b"%PDF-1.7 ...")
        bad = forged(first, source_bucket="elsewhere", doc_id=elsewhere.doc_id)
    elif tamper == "page_count_not_the_manifest":
        bad = forged(first, page_count=1)
    else:
        assert first.image_uri is not None
        image = first.image_uri.split("/", 3)[3]
        store.put("work", image, b"x" * (WORKER_SETTINGS.page_image_limit + 1), "image/png")
        bad = first
    reads_before = len(store.reads)
    with TestClient(
        create_app(WORKER_SETTINGS, store=store, ocr=server.client(), publisher=MemoryPublisher())
    ) as test_client:
        assert test_client.post("/", json=push_envelope(bad)).status_code == 204
    assert server.requests == []
    read_since = store.reads[reads_before:]
    assert not [r for r in read_since if r[0] in ("work", "secrets")], read_since
    assert not [n for n in store.names("out") if "/pages/" in n or n.endswith("document.md")]
    [record] = refused(store)
    assert record["reason"] == reason and record["message"]
    assert record["doc_id"] == bad.doc_id and record["page"] == bad.page
    body = record["body_base64"]
    assert isinstance(body, str)
    assert json.loads(base64.b64decode(body))["message"]["messageId"] == "1"
    # ...and an operator sees it in `ocrpipe status`.
    shown = invalid_messages(store, WORKER_SETTINGS)
    assert shown.count == 1 and shown.newest[0].reason == reason
    assert (shown.newest[0].doc_id, shown.newest[0].page) == (bad.doc_id, bad.page)


def test_a_message_of_a_newer_schema_is_nacked_and_nothing_is_dropped(
    client: TestClient, store: MemoryStore, server: ScriptedOcrServer
) -> None:
    _, messages = ready_document(store, pages=1)
    data = {**json.loads(messages[0].encode()), "schema_version": 99, "new_field": 1}
    body = push_envelope(messages[0])
    body["message"]["data"] = base64.b64encode(json.dumps(data).encode()).decode()
    assert client.post("/", json=body).status_code == 503
    assert refused(store) == [] and server.requests == []
    assert not [n for b, n in store.writes if b == "out" and "/pages/" in n]


def test_a_replay_whose_page_image_expired_ends_with_a_page_error_record(
    client: TestClient, store: MemoryStore, server: ScriptedOcrServer
) -> None:
    doc, messages = ready_document(store, pages=1)
    assert messages[0].image_uri is not None
    store.delete("work", messages[0].image_uri.split("/", 3)[3])  # the lifecycle rule ran
    assert client.post("/", json=push_envelope(messages[0])).status_code == 204
    assert server.requests == []
    record = json.loads(store.read("out", naming.page_error_name(doc, 1)))
    assert record["reason"] == "page_image_expired" and record["page"] == 1
    assert "Page 1 failed" in store.read("out", naming.document_markdown_name(doc)).decode()
