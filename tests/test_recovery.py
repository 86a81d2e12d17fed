"""What a restarted local stack with its buckets on disk queues again (the emulator forgot
every message): on the in-memory store, per state a document can be left in. The
reconciler's own rules (what is presumed lost when) are in tests/test_reconcile.py."""

from __future__ import annotations

from collections import Counter

from ocrpipe import naming, records
from ocrpipe.announce import read_latest
from ocrpipe.local.recovery import recover_unfinished
from ocrpipe.messages import PageMessage
from ocrpipe.notifications import DocumentNotification
from ocrpipe.settings import Settings
from ocrpipe.splitter.split import split_document
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.worker.page_work import complete_document, prepare_page

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out")


def make_input(store: MemoryStore, name: str) -> naming.DocumentRef:
    return naming.DocumentRef("in", name, store.put("in", name, b"%PDF-1.7", "application/pdf"))


def make_split(
    store: MemoryStore,
    name: str,
    *,
    pages: int = 4,
    rendered: int = 4,
    published: int | None = None,
    done: tuple[int, ...] = (),
) -> naming.DocumentRef:
    """A document split this far: ``rendered`` page images, pages 1..``published`` (default:
    every page) recorded as published, the ``done`` pages with Markdown."""
    doc = make_input(store, name)
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, pages))
    for page in range(1, rendered + 1):
        store.put("work", naming.page_image_name(doc.doc_id, page, "png"), b"image")
    published = pages if published is None else published
    if published:
        store.put("work", naming.published_marker_name(doc.doc_id, 1, published), b"")
    for page in done:
        store.put("out", naming.page_markdown_name(doc, page), b"# text")
    return doc


def recover(store: MemoryStore) -> tuple[list[PageMessage], list[str]]:
    """What the recovery publishes on the pages topic, and the inputs it re-finalizes."""
    publisher = MemoryPublisher()
    refinalized: list[str] = []
    report = recover_unfinished(store, publisher, SETTINGS, refinalize=refinalized.append)
    assert report.split == refinalized
    sent = [PageMessage.decode(m.data) for t, m in publisher.published if t == SETTINGS.pages_topic]
    assert report.requeued_pages == len(sent)
    return sent, refinalized


def test_an_input_never_split_gets_its_finalize_event_again() -> None:
    store = MemoryStore()
    make_input(store, "a.pdf")
    assert recover(store) == ([], ["a.pdf"])


def make_rejected(store: MemoryStore, name: str) -> naming.DocumentRef:
    doc = make_input(store, name)
    record = records.error_record(doc, "not_a_pdf", "neither a PDF nor an image")
    store.put("out", naming.document_error_name(doc), record, "application/json")
    return doc


def make_finished(store: MemoryStore, name: str) -> naming.DocumentRef:
    """A document the worker assembled and announced (document.md, document.json and
    latest.json written)."""
    doc = make_split(store, name, done=(1, 2, 3, 4))
    assert complete_document(doc, 4, store, SETTINGS, MemoryPublisher())
    assert store.stat("out", naming.latest_name(name)) is not None
    return doc


def test_a_rejected_input_and_a_finished_document_need_nothing() -> None:
    store = MemoryStore()
    rejected = make_rejected(store, "bad.pdf")
    store.put("out", naming.latest_name("bad.pdf"), latest_of(rejected, "failed"))
    make_finished(store, "done.pdf")
    publisher = MemoryPublisher()
    report = recover_unfinished(store, publisher, SETTINGS, refinalize=lambda name: None)
    assert report.repairs == [] and publisher.published == []


def latest_of(doc: naming.DocumentRef, state: str) -> bytes:
    return records.latest_record(
        doc, state=state, folder="", document_md=None, document_json=None, error=None,
        pages_digest=None,
    )  # fmt: skip


def documents_notes(publisher: MemoryPublisher) -> list[DocumentNotification]:
    return [
        DocumentNotification.model_validate_json(m.data)
        for topic, m in publisher.published
        if topic == SETTINGS.documents_topic
    ]


def test_a_rejected_input_whose_latest_json_does_not_record_it_is_announced() -> None:
    """The splitter wrote error.json and stopped before announcing it."""
    store = MemoryStore()
    doc = make_rejected(store, "bad.pdf")
    publisher = MemoryPublisher()
    recover_unfinished(store, publisher, SETTINGS, refinalize=lambda name: None)
    (note,) = documents_notes(publisher)
    assert (note.doc_id, note.state, note.reason) == (doc.doc_id, "failed", "not_a_pdf")
    _, latest = read_latest(store, "out", "bad.pdf")
    assert latest is not None and (latest.generation, latest.state) == (doc.generation, "failed")


def test_a_finished_document_whose_latest_json_does_not_record_it_is_announced() -> None:
    """The worker assembled the document and the stack stopped before it announced it:
    the recovery queues what makes the worker announce it."""
    store = MemoryStore()
    doc = make_finished(store, "done.pdf")
    store.delete("out", naming.latest_name("done.pdf"))
    publisher = MemoryPublisher()
    recover_unfinished(store, publisher, SETTINGS, refinalize=lambda name: None)
    sent = [PageMessage.decode(m.data) for t, m in publisher.published if t == SETTINGS.pages_topic]
    assert sent, "nothing queued for the unannounced document"
    worker_publisher = MemoryPublisher()
    for message in sent:
        prepare_page(message, store, SETTINGS, worker_publisher)
    (note,) = documents_notes(worker_publisher)
    assert (note.doc_id, note.state) == (doc.doc_id, "done")
    _, latest = read_latest(store, "out", "done.pdf")
    assert latest is not None and (latest.generation, latest.state) == (doc.generation, "done")


def test_pages_without_a_result_are_published_again_from_their_images() -> None:
    store = MemoryStore()
    doc = make_split(store, "half.pdf", done=(1, 3))
    sent, refinalized = recover(store)
    assert [m.page for m in sent] == [2, 4] and refinalized == []
    assert sent[0].document == doc
    assert sent[0].image_uri == f"gs://work/{naming.page_image_name(doc.doc_id, 2, 'png')}"


def test_an_unfinished_split_is_resumed_and_its_published_pages_published_again() -> None:
    store = MemoryStore()
    doc = make_split(store, "split.pdf", pages=4, rendered=2, published=2)
    lease = naming.lease_name(doc.doc_id, 1)
    store.put("work", lease, b'{"expires": 9e99}')  # held by an attempt that died
    sent, refinalized = recover(store)
    assert [m.page for m in sent] == [1, 2] and refinalized == ["split.pdf"]
    assert store.stat("work", lease) is None  # the resumed split is not locked out


def test_a_resumed_split_and_the_recovery_never_publish_one_page_twice() -> None:
    """The split stopped after uploading images 3 and 4 and before publishing them (only
    1-2 are recorded as published; 5-6 were never rendered). The recovery re-finalizes the
    input, and the resumed split publishes every page outside a published range itself:
    the recovery must publish only the pages inside one."""
    store = MemoryStore()
    data, _ = text_pdf(6, seed=3, lines=2)
    doc = naming.DocumentRef("in", "six.pdf", store.put("in", "six.pdf", data, "application/pdf"))
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, 6))
    for page in range(1, 5):
        store.put("work", naming.page_image_name(doc.doc_id, page, "png"), b"image")
    store.put("work", naming.published_marker_name(doc.doc_id, 1, 2), b"")
    publisher = MemoryPublisher()
    settings = SETTINGS.model_copy(update={"render_processes": 1})

    def resume_split(name: str) -> None:
        split_document(doc, store, publisher, settings)

    report = recover_unfinished(store, publisher, settings, refinalize=resume_split)
    assert report.split == ["six.pdf"]
    published = Counter(
        PageMessage.decode(m.data).page for t, m in publisher.published if t == SETTINGS.pages_topic
    )
    assert published == Counter(range(1, 7))


def test_a_page_that_failed_to_render_is_published_as_such() -> None:
    store = MemoryStore()
    doc = make_split(store, "r.pdf", pages=2, rendered=1, done=(1,))
    record = records.render_failure_record("render_timeout", "page 2 took too long")
    store.put("work", naming.render_failure_name(doc.doc_id, 2), record)
    (message,), refinalized = recover(store)
    assert message.page == 2 and message.render_failure is not None and refinalized == []
    assert message.render_failure.reason == "render_timeout"


def test_every_page_answered_but_no_document_gets_one_page_to_assemble_it() -> None:
    store = MemoryStore()
    make_split(store, "whole.pdf", done=(1, 2, 3, 4))
    sent, refinalized = recover(store)
    assert [m.page for m in sent] == [4] and refinalized == []
