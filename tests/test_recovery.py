"""What a restarted local stack with its buckets on disk queues again (the emulator forgot
every message): on the in-memory store, per state a document can be left in."""

from __future__ import annotations

from ocrpipe import naming, records
from ocrpipe.local.recovery import plan_document, recover_unfinished
from ocrpipe.messages import PageMessage
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out")


def make_input(store: MemoryStore, name: str) -> naming.DocumentRef:
    return naming.DocumentRef("in", name, store.put("in", name, b"%PDF-1.7", "application/pdf"))


def make_split(
    store: MemoryStore, name: str, *, pages: int = 4, rendered: int = 4, done: tuple[int, ...] = ()
) -> naming.DocumentRef:
    doc = make_input(store, name)
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, pages))
    for page in range(1, rendered + 1):
        store.put("work", naming.page_image_name(doc.doc_id, page, "png"), b"image")
    for page in done:
        store.put("out", naming.page_markdown_name(doc, page), b"# text")
    return doc


def test_an_input_never_split_gets_its_finalize_event_again() -> None:
    store = MemoryStore()
    doc = make_input(store, "a.pdf")
    plan = plan_document(store, SETTINGS, "a.pdf", doc.generation)
    assert plan is not None and plan.refinalize and plan.messages == ()


def test_a_rejected_input_and_a_finished_document_need_nothing() -> None:
    store = MemoryStore()
    rejected = make_input(store, "bad.pdf")
    store.put("out", naming.document_error_name(rejected), b"{}")
    done = make_split(store, "done.pdf", done=(1, 2, 3, 4))
    store.put("out", naming.document_markdown_name(done), b"whole")
    assert plan_document(store, SETTINGS, "bad.pdf", rejected.generation) is None
    assert plan_document(store, SETTINGS, "done.pdf", done.generation) is None


def test_pages_without_a_result_are_published_again_from_their_images() -> None:
    store = MemoryStore()
    doc = make_split(store, "half.pdf", done=(1, 3))
    publisher = MemoryPublisher()
    report = recover_unfinished(store, publisher, SETTINGS, refinalize=lambda name: None)
    sent = [PageMessage.decode(m.data) for _, m in publisher.published]
    assert [m.page for m in sent] == [2, 4]
    assert sent[0].document == doc
    assert sent[0].image_uri == f"gs://work/{naming.page_image_name(doc.doc_id, 2, 'png')}"
    assert report.requeued_pages == 2 and report.refinalized == ()


def test_an_unfinished_split_is_resumed_and_its_rendered_pages_published() -> None:
    store = MemoryStore()
    doc = make_split(store, "split.pdf", pages=4, rendered=2)
    lease = naming.lease_name(doc.doc_id, 1)
    store.put("work", lease, b'{"expires": 9e99}')  # held by an attempt that died
    refinalized: list[str] = []
    publisher = MemoryPublisher()
    report = recover_unfinished(store, publisher, SETTINGS, refinalize=refinalized.append)
    assert [PageMessage.decode(m.data).page for _, m in publisher.published] == [1, 2]
    assert refinalized == ["split.pdf"] and report.refinalized == ("split.pdf",)
    assert store.stat("work", lease) is None  # the resumed split is not locked out


def test_a_page_that_failed_to_render_is_published_as_such() -> None:
    store = MemoryStore()
    doc = make_split(store, "r.pdf", pages=2, rendered=1, done=(1,))
    record = records.render_failure_record("render_timeout", "page 2 took too long")
    store.put("work", naming.render_failure_name(doc.doc_id, 2), record)
    plan = plan_document(store, SETTINGS, "r.pdf", doc.generation)
    assert plan is not None and not plan.refinalize
    (message,) = plan.messages
    assert message.page == 2 and message.render_failure is not None
    assert message.render_failure.reason == "render_timeout"


def test_every_page_answered_but_no_document_gets_one_page_to_assemble_it() -> None:
    store = MemoryStore()
    doc = make_split(store, "whole.pdf", done=(1, 2, 3, 4))
    plan = plan_document(store, SETTINGS, "whole.pdf", doc.generation)
    assert plan is not None and not plan.refinalize
    assert [m.page for m in plan.messages] == [4]
