"""split_document against the in-memory store and publisher: bad input, pages that fail,
resuming after a crash, the lease, and the time budget."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from ocrpipe import naming, records
from ocrpipe.errors import RetryableError, StorageUnavailable
from ocrpipe.messages import PageMessage
from ocrpipe.operations.status import document_status
from ocrpipe.pubsub import OutgoingMessage
from ocrpipe.settings import Settings
from ocrpipe.splitter.split import split_document
from ocrpipe.testing import inputs as make
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.worker.page_work import process_page
from tests.fakes import ScriptedOcrServer, completion

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out", render_processes=2)


def upload(store: MemoryStore, name: str, data: bytes) -> naming.DocumentRef:
    return naming.DocumentRef("in", name, store.put("in", name, data))


def pages(publisher: MemoryPublisher) -> list[int]:
    return [
        PageMessage.decode(m.data).page
        for topic, m in publisher.published
        if topic == SETTINGS.pages_topic
    ]


def error_reason(store: MemoryStore, doc: naming.DocumentRef) -> str:
    return str(json.loads(store.read("out", naming.document_error_name(doc)))["reason"])


@dataclass
class CrashingPublisher:
    """Publishes ``ok_batches`` batches, then fails: before publishing the next one
    (``after_publish=False``) or right after it went out (``True``)."""

    ok_batches: int
    after_publish: bool = False
    inner: MemoryPublisher = field(default_factory=MemoryPublisher)
    calls: int = 0

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        self.calls += 1
        if self.calls <= self.ok_batches:
            return self.inner.publish_all(topic, messages)
        if self.after_publish:
            self.inner.publish_all(topic, messages)
        raise StorageUnavailable("instance lost")


@dataclass
class InstantWorker:
    """A publisher whose pages go through the worker's core the moment they are published:
    the fastest possible worker, finishing before the splitter gets to its next batch."""

    store: MemoryStore
    published: list[int] = field(default_factory=list)
    notes: MemoryPublisher = field(default_factory=MemoryPublisher)  # the worker's

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        ocr = ScriptedOcrServer([completion("text of a page")])
        for message in messages:
            page = PageMessage.decode(message.data)
            self.published.append(page.page)
            asyncio.run(
                process_page(page, self.store, ocr.client(), SETTINGS, self.notes, deadline=1e12)
            )
        return [str(n) for n in range(len(messages))]


def test_a_pdf_and_a_tiff_become_one_message_per_page() -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    doc = upload(store, "a.pdf", text_pdf(3, lines=2)[0])
    outcome = split_document(doc, store, publisher, SETTINGS)
    assert (outcome.state, outcome.page_count, outcome.published) == ("published", 3, 3)

    frames = [make.text_image(f"page {n}") for n in (1, 2)]
    scan = upload(store, "scan.tif", make.image_bytes(frames, "TIFF", compression="jpeg"))
    assert split_document(scan, store, publisher, SETTINGS).published == 2
    messages = [PageMessage.decode(m.data) for _, m in publisher.published]
    assert [(m.source_name, m.page, m.image_mime) for m in messages] == [
        ("a.pdf", 1, "image/png"),
        ("a.pdf", 2, "image/png"),
        ("a.pdf", 3, "image/png"),
        ("scan.tif", 1, "image/jpeg"),
        ("scan.tif", 2, "image/jpeg"),
    ]
    assert messages[3].image_uri is not None
    assert store.read("work", messages[3].image_uri.split("/", 3)[3]).startswith(b"\xff\xd8")


@pytest.mark.parametrize(
    ("name", "data", "settings", "reason"),
    [
        ("empty.pdf", b"", SETTINGS, "empty_file"),
        (
            "big.pdf",
            text_pdf(1)[0],
            SETTINGS.model_copy(update={"max_input_bytes": 100}),
            "file_too_large",
        ),
        (
            "long.pdf",
            make.many_pages_pdf(30),
            SETTINGS.model_copy(update={"max_pages": 29}),
            "too_many_pages",
        ),
        ("notes.pdf", b"dear diary", SETTINGS, "not_a_pdf"),
        ("letter.docx", make.docx_like(), SETTINGS, "unsupported_type"),
        ("cut.pdf", text_pdf(3)[0][:1500], SETTINGS, "pdf_corrupt"),
        ("locked.pdf", make.encrypted_pdf("secret"), SETTINGS, "pdf_encrypted"),
        ("hollow.pdf", make.no_pages_pdf(), SETTINGS, "pdf_no_pages"),
    ],
)
def test_bad_input_gets_an_error_record_and_publishes_nothing(
    name: str, data: bytes, settings: Settings, reason: str
) -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    doc = upload(store, name, data)
    outcome = split_document(doc, store, publisher, settings)
    assert (outcome.state, outcome.reason) == ("rejected", reason)
    record = json.loads(store.read("out", naming.document_error_name(doc)))
    assert record["reason"] == reason and record["message"]
    assert record["source"] == {"bucket": "in", "name": name, "generation": doc.generation}
    assert pages(publisher) == []
    [(topic, note)] = publisher.published  # announced: failed, with the reason
    body = json.loads(note.data)
    assert topic == settings.documents_topic and note.attributes["doc_id"] == doc.doc_id
    assert (body["state"], body["reason"], body["page_count"]) == ("failed", reason, 0)
    assert body["outputs"]["error"] == f"gs://out/{naming.document_error_name(doc)}"
    latest = json.loads(store.read("out", naming.latest_name(name)))
    assert (latest["source"]["generation"], latest["state"]) == (doc.generation, "failed")
    assert latest["error"] == body["outputs"]["error"] and latest["pages_digest"] is None
    assert list(store.names("work")) == []
    assert store.stat("out", naming.manifest_name(doc)) is None
    assert document_status(store, settings, name).state == "rejected"


def test_a_page_that_fails_to_render_is_remembered_and_published_without_an_image() -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    doc = upload(store, "a.pdf", make.missing_page_pdf(["one", "two", "three"], missing=2))
    outcome = split_document(doc, store, publisher, SETTINGS)
    assert (outcome.published, outcome.failed) == (3, 1)
    messages = [PageMessage.decode(m.data) for _, m in publisher.published]
    assert [m.page for m in messages] == [1, 2, 3]
    failure = messages[1].render_failure
    assert failure is not None and failure.reason == "page_render_failed"
    assert messages[1].image_uri is None
    record = json.loads(store.read("work", naming.render_failure_name(doc.doc_id, 2)))
    assert record["reason"] == "page_render_failed" and record["message"]
    assert store.stat("out", naming.page_error_name(doc, 2)) is None  # the worker's to write
    assert document_status(store, SETTINGS, "a.pdf").state == "running"  # pages to OCR


def test_a_retried_split_does_not_render_a_failed_page_again() -> None:
    store = MemoryStore()
    doc = upload(store, "a.pdf", make.missing_page_pdf(["one", "two", "three"], missing=2))
    with pytest.raises(StorageUnavailable):
        split_document(doc, store, CrashingPublisher(ok_batches=0), SETTINGS)
    store.put("work", naming.render_failure_name(doc.doc_id, 2),
              records.render_failure_record("page_render_timeout", "remembered"))  # fmt: skip
    publisher = MemoryPublisher()
    split_document(doc, store, publisher, SETTINGS)
    failure = PageMessage.decode(publisher.published[1][1].data).render_failure
    assert failure is not None and (failure.reason, failure.message) == (
        "page_render_timeout",
        "remembered",
    )


def test_a_document_whose_every_page_failed_to_render_is_finished_by_the_worker() -> None:
    store = MemoryStore()
    worker = InstantWorker(store)
    doc = upload(store, "a.pdf", make.missing_page_pdf(["only"], missing=1))
    split_document(doc, store, worker, SETTINGS)
    status = document_status(store, SETTINGS, "a.pdf")
    assert worker.published == [1]
    assert status.state == "failed" and list(status.page_errors) == [1]
    assert status.page_errors[1].reason == "page_render_failed"
    assert "Page 1 failed" in store.read("out", naming.document_markdown_name(doc)).decode()


def test_a_failed_last_page_after_a_fast_worker_still_completes_the_document() -> None:
    store = MemoryStore()
    worker = InstantWorker(store)
    doc = upload(store, "a.pdf", make.missing_page_pdf(["1", "2", "3", "4", "5"], missing=5))
    split_document(doc, store, worker, SETTINGS, batch_size=2)
    assert worker.published == [1, 2, 3, 4, 5]
    status = document_status(store, SETTINGS, "a.pdf")
    assert (status.state, status.done, status.failed) == ("partial", 4, 1)
    assert store.stat("out", naming.document_markdown_name(doc)) is not None


def test_a_retry_after_a_crash_publishes_only_what_is_missing() -> None:
    store = MemoryStore()
    doc = upload(store, "a.pdf", text_pdf(23, lines=1)[0])
    crashing = CrashingPublisher(ok_batches=2)
    with pytest.raises(StorageUnavailable):
        split_document(doc, store, crashing, SETTINGS, batch_size=5)
    assert pages(crashing.inner) == list(range(1, 11))
    uploaded_before_retry = {n for n in store.names("work") if n.endswith(".png")}
    assert len(uploaded_before_retry) >= 15  # batch 3's images went up before its publish

    writes_before = len(store.writes)
    retry = MemoryPublisher()
    outcome = split_document(doc, store, retry, SETTINGS, batch_size=5)
    assert pages(retry) == list(range(11, 24))
    assert outcome.published == 13
    new_images = {n for b, n in store.writes[writes_before:] if b == "work" and n.endswith(".png")}
    assert new_images.isdisjoint(uploaded_before_retry)  # not rendered and uploaded again
    assert not [n for n in store.names("work") if "/lease-" in n]


def test_a_crash_between_publish_and_marker_republishes_one_batch_at_most() -> None:
    store = MemoryStore()
    doc = upload(store, "a.pdf", text_pdf(12, lines=1)[0])
    crashing = CrashingPublisher(ok_batches=1, after_publish=True)
    with pytest.raises(StorageUnavailable):
        split_document(doc, store, crashing, SETTINGS, batch_size=5)
    retry = MemoryPublisher()
    split_document(doc, store, retry, SETTINGS, batch_size=5)
    counts = Counter(pages(crashing.inner) + pages(retry))
    assert set(counts) == set(range(1, 13))
    assert sorted(p for p, n in counts.items() if n > 1) == [6, 7, 8, 9, 10]


def test_a_duplicate_event_after_the_split_publishes_nothing() -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    doc = upload(store, "a.pdf", text_pdf(7, lines=1)[0])
    split_document(doc, store, publisher, SETTINGS, batch_size=3)
    again = MemoryPublisher()
    assert split_document(doc, store, again, SETTINGS, batch_size=3).published == 0
    assert again.published == [] and pages(publisher) == list(range(1, 8))


def test_a_live_lease_makes_another_attempt_wait_and_an_expired_one_does_not() -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    doc = upload(store, "a.pdf", text_pdf(2, lines=1)[0])
    lease = naming.lease_name(doc.doc_id, 1)
    store.put("work", lease, json.dumps({"expires": 1000.0 + 600}).encode())  # a hard crash
    with pytest.raises(RetryableError) as caught:
        split_document(doc, store, publisher, SETTINGS, wall_clock=lambda: 1000.0)
    assert caught.value.reason == "split_in_progress" and publisher.published == []

    split_document(doc, store, publisher, SETTINGS, wall_clock=lambda: 1000.0 + 601)
    assert pages(publisher) == [1, 2]


@dataclass
class StepClock:
    """Advances one second per reading."""

    now: float = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_split_over_its_time_budget_stops_cleanly_and_the_retry_goes_on() -> None:
    store = MemoryStore()
    doc = upload(store, "a.pdf", text_pdf(9, lines=1)[0])
    settings = SETTINGS.model_copy(update={"split_budget_s": 4.5})
    first = MemoryPublisher()
    with pytest.raises(RetryableError) as caught:
        split_document(doc, store, first, settings, clock=StepClock(), batch_size=100)
    assert caught.value.reason == "split_budget_spent"
    assert 0 < len(first.published) < 9
    second = MemoryPublisher()
    split_document(doc, store, second, SETTINGS)
    assert pages(first) + pages(second) == list(range(1, 10))  # nothing twice


def test_an_attempt_whose_lease_would_expire_stops_before_publishing() -> None:
    store = MemoryStore()
    doc = upload(store, "a.pdf", text_pdf(6, lines=1)[0])
    times = iter([1000.0, 1000.0, 1000.0 + 600])  # a batch, then a pause the lease cannot cover
    first = MemoryPublisher()
    with pytest.raises(RetryableError):
        split_document(doc, store, first, SETTINGS, wall_clock=lambda: next(times), batch_size=3)
    assert pages(first) == [1, 2, 3]
    second = MemoryPublisher()  # on the same clock as the first attempt
    split_document(doc, store, second, SETTINGS, wall_clock=lambda: 1000.0 + 600, batch_size=3)
    assert pages(second) == [4, 5, 6]


def test_a_split_still_unfinished_near_eventarcs_retry_window_ends_as_split_timeout() -> None:
    # Eventarc retries for 24 h and then drops the event: a document whose every attempt
    # runs out of time (hostile pages just under the render timeout) must not stay
    # "running" forever.
    store = MemoryStore()
    doc = upload(store, "slow.pdf", text_pdf(9, lines=1)[0])
    settings = SETTINGS.model_copy(update={"split_budget_s": 4.5})
    first = MemoryPublisher()
    with pytest.raises(RetryableError):
        split_document(doc, store, first, settings, clock=StepClock(), wall_clock=lambda: 1000.0)
    late = MemoryPublisher()
    day_later = 1000.0 + 21 * 3600
    outcome = split_document(
        doc, store, late, settings, clock=StepClock(), wall_clock=lambda: day_later
    )
    assert (outcome.state, outcome.reason) == ("rejected", "split_timeout")
    assert pages(late) == [] and error_reason(store, doc) == "split_timeout"
    [(topic, note)] = late.published  # the document is announced as failed
    assert topic == settings.documents_topic and note.attributes["state"] == "failed"
    status = document_status(store, SETTINGS, "slow.pdf")
    assert status.state == "rejected" and status.error is not None
    assert status.error.reason == "split_timeout"


def test_a_duplicate_event_a_day_after_a_finished_split_is_not_a_timeout() -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    doc = upload(store, "a.pdf", text_pdf(4, lines=1)[0])
    split_document(doc, store, publisher, SETTINGS, wall_clock=lambda: 1000.0, batch_size=3)
    again = MemoryPublisher()
    outcome = split_document(doc, store, again, SETTINGS, wall_clock=lambda: 1000.0 + 86400)
    assert (outcome.state, outcome.published) == ("published", 0)
    assert store.stat("out", naming.document_error_name(doc)) is None
