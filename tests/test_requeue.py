"""``ocrpipe retry``'s core on the in-memory store: which pages are re-queued, what is deleted
first, and when a retry is refused."""

from __future__ import annotations

import asyncio

import pytest

from ocrpipe import naming, records
from ocrpipe.assemble import assemble_document
from ocrpipe.errors import RetryRefused
from ocrpipe.messages import PageMessage
from ocrpipe.operations.retry import plan_unfinished_pages, reprocess, requeue
from ocrpipe.operations.status import document_status
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.worker.page_work import complete_document, process_page
from tests.fakes import ScriptedOcrServer, completion

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out")
NAME = "reports/q1.pdf"


def make_document(
    store: MemoryStore,
    *,
    pages: int = 4,
    done: tuple[int, ...] = (),
    failed: tuple[int, ...] = (),
    assembled: bool = False,
    extension: str = "png",
) -> naming.DocumentRef:
    generation = store.put("in", NAME, b"%PDF-1.7 ...", "application/pdf")
    doc = naming.DocumentRef("in", NAME, generation)
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, pages))
    for page in range(1, pages + 1):
        store.put("work", naming.page_image_name(doc.doc_id, page, extension), b"image")
    for page in done:
        store.put("out", naming.page_markdown_name(doc, page), b"# text")
    for page in failed:
        record = records.error_record(doc, "ocr_repetition_loop", "looped", page=page)
        store.put("out", naming.page_error_name(doc, page), record)
    if assembled:
        store.put("out", naming.document_markdown_name(doc), b"whole")
    return doc


def test_a_partial_document_requeues_its_failed_pages_after_deleting_what_blocks_them() -> None:
    store = MemoryStore()
    doc = make_document(store, done=(1, 3), failed=(2, 4), assembled=True)
    publisher = MemoryPublisher()

    plan = plan_unfinished_pages(store, SETTINGS, NAME)
    assert (plan.failed, plan.pending, plan.pages) == ((2, 4), (), (2, 4))
    # Only the error records: document.md stays until the worker rebuilds it from the
    # new page results (it knows which results it was built from).
    assert plan.remove == (naming.page_error_name(doc, 2), naming.page_error_name(doc, 4))

    assert requeue(plan, store, publisher, SETTINGS) == 2
    assert all(store.stat("out", name) is None for name in plan.remove)
    assert store.stat("out", naming.document_markdown_name(doc)) is not None
    assert store.stat("out", naming.page_markdown_name(doc, 1)) is not None
    sent = [(topic, PageMessage.decode(m.data), m.attributes) for topic, m in publisher.published]
    assert [(topic, m.page) for topic, m, _ in sent] == [(SETTINGS.pages_topic, 2),
                                                         (SETTINGS.pages_topic, 4)]  # fmt: skip
    _, message, attributes = sent[0]
    assert message.document == doc and message.page_count == 4
    assert message.image_uri == f"gs://work/{naming.page_image_name(doc.doc_id, 2, 'png')}"
    assert message.image_mime == "image/png"
    assert attributes == message.attributes()


def test_each_retried_page_is_recorded_keeping_the_cost_of_the_error_record_it_deletes() -> None:
    store = MemoryStore()
    doc = make_document(store, done=(1,), failed=(2,))
    usage: records.Usage = {"attempts": 4, "completion_tokens": 16384, "ocr_seconds": 9.5}
    error = records.error_record(doc, "ocr_repetition_loop", "looped", page=2)
    store.delete("out", naming.page_error_name(doc, 2))
    store.write("out", naming.page_error_name(doc, 2), error, "application/json",
                if_generation_match=0, metadata=records.usage_metadata(usage))  # fmt: skip
    dead = records.Attempt(3, records.FAILED_DELIVERY, "ocr_unavailable:503", "", 10, 10)
    store.write("out", naming.attempt_record_name(doc, 3, 1, records.FAILED_DELIVERY), b"{}",
                "application/json", if_generation_match=0,
                metadata=records.attempt_metadata(dead))  # fmt: skip
    assert document_status(store, SETTINGS, NAME).dead_lettered == 1

    plan = plan_unfinished_pages(store, SETTINGS, NAME)
    requeue(plan, store, MemoryPublisher(), SETTINGS)

    kept = [
        records.parse_attempt(i.metadata) for i in store.list("out", naming.attempts_prefix(doc))
    ]
    retried = {a.page: a for a in kept if a is not None and a.kind == records.RETRIED}
    assert sorted(retried) == [2, 3, 4]
    assert retried[2].usage == usage and retried[2].message_id.startswith(
        naming.page_error_name(doc, 2) + "#"
    )
    assert retried[3].usage is None and retried[4].usage is None
    current = document_status(store, SETTINGS, NAME)
    assert (current.pending, current.retrying, current.dead_lettered) == (3, 0, 0)  # queued


def test_reprocessing_a_rejected_input_is_refused_unless_forced() -> None:
    store = MemoryStore()
    doc = make_document(store)
    error = records.error_record(doc, "pdf_encrypted", "needs a password")
    store.put("out", naming.document_error_name(doc), error)
    with pytest.raises(RetryRefused, match=r"rejected as a whole \(pdf_encrypted: needs a"):
        reprocess(store, SETTINGS, NAME, dry_run=True)
    with pytest.raises(RetryRefused, match="Fix the file and upload it again"):
        reprocess(store, SETTINGS, NAME)
    assert reprocess(store, SETTINGS, NAME, force=True, dry_run=True) is None
    generation = reprocess(store, SETTINGS, NAME, force=True)
    assert generation is not None and generation > doc.generation


def test_pending_pages_are_requeued_too_so_an_interrupted_retry_can_be_finished() -> None:
    store = MemoryStore()
    make_document(store, done=(1,), failed=(2,))  # 3 and 4 pending: nothing marks them
    plan = plan_unfinished_pages(store, SETTINGS, NAME)
    assert (plan.failed, plan.pending) == ((2,), (3, 4))
    assert len(plan.remove) == 1  # the error record; there is no document.md yet


def test_jpeg_page_images_keep_their_type() -> None:
    store = MemoryStore()
    make_document(store, pages=1, failed=(1,), assembled=True, extension="jpg")
    [message] = plan_unfinished_pages(store, SETTINGS, NAME).messages
    assert message.image_mime == "image/jpeg" and message.image_uri is not None
    assert message.image_uri.endswith("00001.jpg")


def test_a_done_document_has_nothing_to_retry_and_nothing_is_deleted() -> None:
    store = MemoryStore()
    doc = make_document(store, done=(1, 2, 3, 4), assembled=True)
    plan = plan_unfinished_pages(store, SETTINGS, NAME)
    assert plan.pages == () and plan.remove == ()
    assert requeue(plan, store, MemoryPublisher(), SETTINGS) == 0
    assert store.stat("out", naming.document_markdown_name(doc)) is not None


@pytest.mark.parametrize(
    ("prepare", "why"),
    [
        ("delete_input", "does not exist"),
        ("reject", "rejected"),
        ("no_manifest", "not been split"),
        ("no_images", "page images"),
    ],
)
def test_a_retry_that_cannot_work_is_refused_with_the_reason(prepare: str, why: str) -> None:
    store = MemoryStore()
    doc = make_document(store, done=(1,), failed=(2,))
    if prepare == "delete_input":
        store.delete("in", NAME)
    elif prepare == "reject":
        store.put("out", naming.document_error_name(doc), records.error_record(doc, "x", "y"))
    elif prepare == "no_manifest":
        store.delete("out", naming.manifest_name(doc))
    else:
        store.delete("work", naming.page_image_name(doc.doc_id, 2, "png"))
    with pytest.raises(RetryRefused, match=why):
        plan_unfinished_pages(store, SETTINGS, NAME)


def test_reprocessing_makes_a_new_generation_with_the_same_bytes() -> None:
    store = MemoryStore()
    old = make_document(store, done=(1,), failed=(2, 3, 4), assembled=True)
    generation = reprocess(store, SETTINGS, NAME)
    assert generation is not None and generation > old.generation
    info = store.stat("in", NAME)
    assert info is not None and info.generation == generation
    assert store.read("in", NAME) == b"%PDF-1.7 ..."
    # The old generation's output is left alone.
    assert store.stat("out", naming.document_markdown_name(old)) is not None


def test_reprocessing_a_missing_input_or_a_changed_one_is_refused() -> None:
    store = MemoryStore()
    with pytest.raises(RetryRefused, match="does not exist"):
        reprocess(store, SETTINGS, NAME)
    generation = store.put("in", NAME, b"%PDF-")
    assert store.rewrite_in_place("in", NAME, generation - 1) is None


def land(store: MemoryStore, doc: naming.DocumentRef, page: int, text: str, pages: int) -> None:
    """What the worker does when a page's Markdown lands: write it, check completion."""
    store.put("out", naming.page_markdown_name(doc, page), text.encode())
    complete_document(doc, pages, store, SETTINGS, MemoryPublisher(), page=page)


def current_assembly(store: MemoryStore, doc: naming.DocumentRef, pages: int) -> str:
    texts = {
        n: store.read("out", naming.page_markdown_name(doc, n)).decode()
        for n in range(1, pages + 1)
    }
    return assemble_document(pages, texts)


def race(store: MemoryStore, *, heal: bool) -> naming.DocumentRef:
    """``retry --failed-only`` racing page 3, still in flight: page 3 lands between the
    retry's plan and its deletes (assembling with page 2 failed), then page 2's retry
    writes Markdown (checking completion only if ``heal``)."""
    doc = make_document(store, pages=3, done=(1,), failed=(2,))
    plan = plan_unfinished_pages(store, SETTINGS, NAME)
    land(store, doc, 3, "three", pages=3)
    assert "Page 2 failed" in store.read("out", naming.document_markdown_name(doc)).decode()
    requeue(plan, store, MemoryPublisher(), SETTINGS)
    if heal:
        land(store, doc, 2, "two", pages=3)
    else:
        store.put("out", naming.page_markdown_name(doc, 2), b"two")
    return doc


def test_a_retry_racing_an_in_flight_page_ends_with_the_document_of_its_current_pages() -> None:
    store = MemoryStore()
    doc = race(store, heal=True)
    document = store.read("out", naming.document_markdown_name(doc)).decode()
    assert document == current_assembly(store, doc, 3)
    assert "failed" not in document
    assert document_status(store, SETTINGS, NAME).state == "done"


def test_a_stale_assembly_shows_in_status_and_retry_failed_only_heals_it() -> None:
    store = MemoryStore()
    doc = race(store, heal=False)  # the worker stopped before it checked completion
    status = document_status(store, SETTINGS, NAME)
    assert (status.state, status.assembly_stale) == ("stale_assembly", True)

    publisher = MemoryPublisher()
    plan = plan_unfinished_pages(store, SETTINGS, NAME)
    assert plan.pages, "a stale assembly must give the retry something to do"
    requeue(plan, store, publisher, SETTINGS)
    ocr = ScriptedOcrServer([completion("never asked")])
    for _, message in publisher.published:
        outcome = asyncio.run(
            process_page(
                PageMessage.decode(message.data),
                store,
                ocr.client(),
                SETTINGS,
                MemoryPublisher(),
                deadline=1e12,
            )
        )
        assert outcome.state == "already_done"
    assert ocr.requests == []  # the pages were done: healing OCRs nothing
    document = store.read("out", naming.document_markdown_name(doc)).decode()
    assert document == current_assembly(store, doc, 3)
    status = document_status(store, SETTINGS, NAME)
    assert (status.state, status.assembly_stale) == ("done", False)
