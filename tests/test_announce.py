"""Told when a document is done: one notification per terminal state on the documents topic,
at least once (a failed publish nacks, the redelivery announces), and ``@latest.json``, which
only ever moves forward. Also each page's provenance in document.json."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.testclient import TestClient

from ocr_worker.app import create_app
from ocrpipe import announce, naming, notifications, records
from ocrpipe.errors import StorageUnavailable
from ocrpipe.messages import PageMessage
from ocrpipe.operations.retry import plan_unfinished_pages, requeue
from ocrpipe.pubsub import OutgoingMessage
from ocrpipe.storage import ObjectInfo
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pushes import WORKER_SETTINGS, push_envelope, ready_document
from ocrpipe.testing.waiting import QUIET_S
from ocrpipe.worker.ocr_client import OcrClient, OcrParams, OcrResult
from ocrpipe.worker.page_work import KeyedLocks, complete_document, process_page
from tests.fakes import ScriptedOcrServer, completion, echo_image


@dataclass
class FlakyPublisher:
    """A :class:`~ocrpipe.pubsub.Publisher` whose first ``fail_times`` publishes fail the
    way Pub/Sub's adapter does."""

    fail_times: int
    inner: MemoryPublisher = field(default_factory=MemoryPublisher)
    calls: int = 0

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise StorageUnavailable("publishing failed: deadline exceeded")
        return self.inner.publish_all(topic, messages)


def notes(publisher: MemoryPublisher) -> list[dict[str, object]]:
    """The document notifications published, decoded (each checked against its schema)."""
    found = []
    for topic, message in publisher.published:
        assert topic == WORKER_SETTINGS.documents_topic
        note = notifications.DocumentNotification.model_validate_json(message.data)
        assert message.attributes == note.attributes()
        found.append(json.loads(message.data))
    return found


def latest(store: MemoryStore, name: str) -> dict[str, object]:
    return dict(json.loads(store.read("out", naming.latest_name(name))))


def test_a_document_is_announced_once_when_done_and_latest_json_points_at_it(
    store: MemoryStore, server: ScriptedOcrServer, publisher: MemoryPublisher, client: TestClient
) -> None:
    doc, messages = ready_document(store, pages=2)
    assert client.post("/", json=push_envelope(messages[0])).status_code == 204
    assert publisher.published == []  # not finished yet: nothing said
    for message in (messages[1], messages[1], messages[0]):  # the last page, then duplicates
        assert client.post("/", json=push_envelope(message)).status_code == 204
    [note] = notes(publisher)
    assert (note["doc_id"], note["state"], note["pages_done"]) == (doc.doc_id, "done", 2)
    assert note["outputs"]["document_md"] == f"gs://out/{naming.document_markdown_name(doc)}"  # type: ignore[index]
    record = latest(store, doc.name)
    assert record["source"] == {"bucket": "in", "name": doc.name, "generation": doc.generation}
    assert record["state"] == "done" and record["error"] is None
    assert record["document_md"] == note["outputs"]["document_md"]  # type: ignore[index]
    assert record["document_json"] == f"gs://out/{naming.document_index_name(doc)}"
    info = store.stat("out", naming.document_markdown_name(doc))
    assert info is not None and record["pages_digest"] == info.metadata["ocrpipe-pages-digest"]


@pytest.mark.parametrize(
    ("looping", "state"), [((), "done"), ((2,), "partial"), ((1, 2, 3), "failed")]
)
def test_one_notification_per_terminal_state(
    store: MemoryStore, publisher: MemoryPublisher, looping: tuple[int, ...], state: str
) -> None:
    def reply(body: dict[str, object]) -> object:
        response = echo_image(body)
        if int(response.json()["choices"][0]["message"]["content"].split()[-1]) in looping:
            return completion("la " * 20, "repetition")
        return response

    server = ScriptedOcrServer([reply])  # type: ignore[list-item]
    doc, messages = ready_document(store, pages=3)
    with TestClient(
        create_app(WORKER_SETTINGS, store=store, ocr=server.client(), publisher=publisher)
    ) as client:
        for message in messages:
            assert client.post("/", json=push_envelope(message)).status_code == 204
    [note] = notes(publisher)
    assert (note["state"], note["pages_failed"]) == (state, len(looping))
    assert note["reason"] == ("ocr_repetition_loop" if looping else None)
    assert latest(store, doc.name)["state"] == state


def test_a_failed_publish_nacks_and_the_redelivery_announces(
    store: MemoryStore, server: ScriptedOcrServer
) -> None:
    flaky = FlakyPublisher(fail_times=1)
    doc, [message] = ready_document(store, pages=1)
    with TestClient(
        create_app(WORKER_SETTINGS, store=store, ocr=server.client(), publisher=flaky)
    ) as client:
        assert client.post("/", json=push_envelope(message)).status_code == 503
        assert store.stat("out", naming.document_markdown_name(doc)) is not None
        assert store.stat("out", naming.latest_name(doc.name)) is None  # the outbox is open
        assert client.post("/", json=push_envelope(message)).status_code == 204  # redelivery
        assert client.post("/", json=push_envelope(message)).status_code == 204  # and a duplicate
    assert len(server.requests) == 1  # the page was OCR'd once
    [note] = notes(flaky.inner)
    assert note["doc_id"] == doc.doc_id and note["state"] == "done"
    assert latest(store, doc.name)["state"] == "done"


def test_a_document_rebuilt_after_a_retry_is_announced_again_with_its_new_state() -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    doc, messages = ready_document(store, pages=2)
    looping = ScriptedOcrServer([completion("la " * 20, "repetition")])

    def deliver(message: PageMessage, ocr: ScriptedOcrServer) -> None:
        asyncio.run(
            process_page(message, store, ocr.client(), WORKER_SETTINGS, publisher, deadline=1e12)
        )

    deliver(messages[0], ScriptedOcrServer([echo_image]))
    deliver(messages[1], looping)
    assert [n["state"] for n in notes(publisher)] == ["partial"]
    first_digest = latest(store, doc.name)["pages_digest"]

    plan = plan_unfinished_pages(store, WORKER_SETTINGS, doc.name)  # `ocrpipe retry --failed-only`
    retried = MemoryPublisher()
    requeue(plan, store, retried, WORKER_SETTINGS)
    [(_, again)] = retried.published
    deliver(PageMessage.decode(again.data), ScriptedOcrServer([echo_image]))
    assert [n["state"] for n in notes(publisher)] == ["partial", "done"]
    record = latest(store, doc.name)
    assert record["state"] == "done" and record["pages_digest"] != first_digest


def test_a_page_that_failed_to_render_finishes_and_announces_without_provenance() -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    doc, _ = ready_document(store, pages=1)
    store.put("work", naming.render_failure_name(doc.doc_id, 1),
              records.render_failure_record("page_render_failed", "boom"))  # fmt: skip
    message = PageMessage.failed_render(doc, 1, 1, "page_render_failed", "boom")
    never = ScriptedOcrServer([completion("never asked")])
    asyncio.run(
        process_page(message, store, never.client(), WORKER_SETTINGS, publisher, deadline=1e12)
    )
    [note] = notes(publisher)
    assert (note["state"], note["reason"]) == ("failed", "page_render_failed")
    index = json.loads(store.read("out", naming.document_index_name(doc)))
    assert index["pages"][0]["provenance"] is None and never.requests == []


class RecordingOcr(OcrClient):
    """The real OCR client, remembering what it returned (usage included) per image."""

    def __init__(self, http: httpx.AsyncClient, params: OcrParams) -> None:
        super().__init__(http, params)
        self.returned: dict[bytes, OcrResult] = {}

    async def ocr_page(self, image: bytes, mime: str, *, deadline: float) -> OcrResult:
        result = await super().ocr_page(image, mime, deadline=deadline)
        self.returned[image] = result
        return result


def test_document_json_gives_each_page_the_provenance_the_ocr_client_returned() -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    doc, messages = ready_document(store, pages=3)
    loops_once = {"n": 0}

    def reply(body: dict[str, object]) -> object:
        response = echo_image(body)
        if response.json()["choices"][0]["message"]["content"] == "image 2":
            loops_once["n"] += 1
            if loops_once["n"] == 1:  # page 2 loops at the first temperature, then works
                return completion("la " * 20, "repetition")
        if response.json()["choices"][0]["message"]["content"] == "image 3":
            return completion("la " * 20, "repetition")  # page 3 loops at every temperature
        return response

    server = ScriptedOcrServer([reply])  # type: ignore[list-item]
    http = httpx.AsyncClient(transport=httpx.MockTransport(server), base_url="http://ocr")
    ocr = RecordingOcr(http, OcrParams.from_settings(WORKER_SETTINGS))
    for message in messages:
        asyncio.run(process_page(message, store, ocr, WORKER_SETTINGS, publisher, deadline=1e12))

    index = json.loads(store.read("out", naming.document_index_name(doc)))
    by_page = {entry["page"]: entry for entry in index["pages"]}
    for page in (1, 2):
        usage = ocr.returned[f"image {page}".encode()].usage.as_dict()
        assert by_page[page]["provenance"] == usage
    assert by_page[2]["provenance"]["attempts"] == 2
    assert by_page[2]["provenance"]["temperature"] == WORKER_SETTINGS.ocr_temperatures[1]
    spent = by_page[3]["provenance"]  # failed for good, but the tokens were spent: billed
    assert by_page[3]["state"] == "failed" and spent is not None
    assert spent["attempts"] == len(WORKER_SETTINGS.ocr_temperatures)
    assert spent["finish_reason"] == "repetition" and spent["model"] == WORKER_SETTINGS.ocr_model
    # The model's text stays byte-exact beside its provenance.
    markdown = store.read("out", naming.document_markdown_name(doc))
    assert markdown[by_page[1]["start"] : by_page[1]["end"]] == b"image 1"


# --- latest.json only moves forward ----------------------------------------------------


def finished(store: MemoryStore, name: str, generation: int) -> naming.DocumentRef:
    """A one-page document of generation ``generation`` of ``name``, every page done."""
    doc = naming.DocumentRef("in", name, generation)
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, 1))
    store.put("out", naming.page_markdown_name(doc, 1), f"generation {generation}".encode())
    return doc


def test_an_older_generation_finishing_after_a_newer_one_does_not_move_latest() -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    old, new = finished(store, "a.pdf", 5), finished(store, "a.pdf", 9)
    complete_document(new, 1, store, WORKER_SETTINGS, publisher)
    assert latest(store, "a.pdf")["source"]["generation"] == 9  # type: ignore[index]
    complete_document(old, 1, store, WORKER_SETTINGS, publisher)  # late
    record = latest(store, "a.pdf")
    assert record["source"]["generation"] == 9  # type: ignore[index]
    assert record["document_md"] == f"gs://out/{naming.document_markdown_name(new)}"
    # Both were announced: subscribers keep the newest source_generation per input.
    assert [n["source_generation"] for n in notes(publisher)] == [9, 5]
    # A newer generation rejected as a whole moves it forward.
    rejected = naming.DocumentRef("in", "a.pdf", 12)
    note = notifications.rejected(rejected, "out", reason="not_a_pdf")
    announce.announce(note, None, store, WORKER_SETTINGS, publisher)
    assert latest(store, "a.pdf")["state"] == "failed"
    assert latest(store, "a.pdf")["error"] == note.outputs.error


class RacingStore(MemoryStore):
    """Holds the first write of latest.json by each of two threads until both have read it:
    both decide from the same state, so exactly one precondition must fail."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=QUIET_S)
        self.held: set[int] = set()
        self.lost = 0

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str,
        *,
        if_generation_match: int,
        metadata: Mapping[str, str] | None = None,
    ) -> int | None:
        me = threading.get_ident()
        if name.endswith("/@latest.json") and me not in self.held:
            self.held.add(me)
            self.barrier.wait()
        written = super().write(
            bucket, name, data, content_type,
            if_generation_match=if_generation_match, metadata=metadata,
        )  # fmt: skip
        if written is None and name.endswith("/@latest.json"):
            self.lost += 1
        return written


@pytest.mark.parametrize("first", ["older", "newer"])
def test_two_generations_recording_latest_at_once_leave_the_newer(first: str) -> None:
    store = RacingStore()
    old, new = naming.DocumentRef("in", "a.pdf", 5), naming.DocumentRef("in", "a.pdf", 9)
    order = [old, new] if first == "older" else [new, old]

    def record(doc: naming.DocumentRef) -> bool:
        note = notifications.assembled(doc, "out", page_count=1, failed_reasons={})
        return announce.advance_latest(doc, note, f"digest-{doc.generation}", store, "out")

    with ThreadPoolExecutor(2) as pool:
        wrote = dict(zip((d.generation for d in order), pool.map(record, order), strict=True))
    assert store.lost == 1  # the race happened, and the precondition caught it
    assert latest(store, "a.pdf")["source"]["generation"] == 9  # type: ignore[index]
    assert wrote[9] is True


# --- latest.json and the documents topic never go backwards within a generation ----------


class Paused:
    """Holds instance A's thread at one point until the test lets it go on."""

    def __init__(self) -> None:
        self.owner: int | None = None
        self.reached = threading.Event()
        self.go_on = threading.Event()
        self.used = False

    def here(self) -> None:
        if threading.get_ident() == self.owner and not self.used:
            self.used = True
            self.reached.set()
            assert self.go_on.wait(QUIET_S), "the test never let instance A go on"


@dataclass
class PausedPublisher:
    """Instance A's publisher: its first publish waits, as a slow Pub/Sub call does."""

    pause: Paused
    inner: MemoryPublisher

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        self.pause.here()
        return self.inner.publish_all(topic, messages)


class PausedStore(MemoryStore):
    """A store whose first read of latest.json by instance A waits: A has built its
    announcement from the page results it listed and is about to record it."""

    def __init__(self, pause: Paused) -> None:
        super().__init__()
        self.pause = pause

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        if name.endswith("/@latest.json"):
            self.pause.here()
        return super().stat(bucket, name)


@pytest.mark.parametrize("where", ["publishing", "recording"])
def test_an_announcement_of_older_page_results_never_replaces_a_newer_one(where: str) -> None:
    """Two worker instances: A assembles a document whose page 2 failed and is slow to
    announce it (paused while publishing, or just before it reads latest.json); meanwhile
    `ocrpipe retry --failed-only` re-queues page 2 and instance B lands it, rebuilds the
    document and announces it done. When A goes on, the newer state must stay."""
    pause = Paused()
    store = PausedStore(pause) if where == "recording" else MemoryStore()
    topic = MemoryPublisher()
    publisher_a = PausedPublisher(pause, topic) if where == "publishing" else topic
    doc, _ = ready_document(store, pages=2)
    store.put("out", naming.page_markdown_name(doc, 1), b"page one")
    store.put("out", naming.page_error_name(doc, 2),
              records.error_record(doc, "ocr_repetition_loop", "looped", page=2))  # fmt: skip

    def instance_a() -> bool:
        pause.owner = threading.get_ident()
        return complete_document(doc, 2, store, WORKER_SETTINGS, publisher_a, page=2)

    with ThreadPoolExecutor(1) as pool:
        a = pool.submit(instance_a)
        try:
            assert pause.reached.wait(QUIET_S), "instance A never reached the announcement"
            plan = plan_unfinished_pages(store, WORKER_SETTINGS, doc.name)
            requeue(plan, store, MemoryPublisher(), WORKER_SETTINGS)
            store.put("out", naming.page_markdown_name(doc, 2), b"page two")  # B's OCR landed
            complete_document(
                doc, 2, store, WORKER_SETTINGS, topic, page=2, locks=KeyedLocks()
            )  # B
        finally:
            pause.go_on.set()
        a.result(timeout=QUIET_S)

    current = store.stat("out", naming.document_markdown_name(doc))
    assert current is not None and b"page two" in store.read("out", current.name)
    record = latest(store, doc.name)
    assert record["state"] == "done"
    assert record["pages_digest"] == current.metadata["ocrpipe-pages-digest"]
    states = [n["state"] for n in notes(topic)]
    assert states[-1] == "done", states  # the last word on the topic is the current document
    if where == "recording":
        assert states == ["done"]  # A's stale announcement was never published
