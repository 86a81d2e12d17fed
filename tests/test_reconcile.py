"""The reconciler's rules on the in-memory store with a clock: what is presumed lost when,
what is put back, and that a second run puts nothing back twice. (The restart of the local
stack, where everything is lost at once, is tests/test_recovery.py; the whole pipeline with
its messages dropped is tests/test_reconcile_e2e.py.)"""

from __future__ import annotations

import json

import pytest

from ocrpipe import naming, records
from ocrpipe.messages import PageMessage
from ocrpipe.settings import Settings
from ocrpipe.splitter.reconcile import (
    DAY_S,
    Policy,
    ReconcileReport,
    SplitAgain,
    reconcile,
    split_here,
)
from ocrpipe.storage import ObjectInfo
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.topology import load_topology
from ocrpipe.worker.page_work import complete_document

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out", render_processes=1)
RETENTION_S = load_topology().message_retention_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore(MemoryStore):
    """Counts reads and listings per bucket."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.reads: list[tuple[str, str]] = []
        self.lists: list[tuple[str, str]] = []

    def read(self, bucket: str, name: str) -> bytes:
        self.reads.append((bucket, name))
        return super().read(bucket, name)

    def list(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        self.lists.append((bucket, prefix))
        return super().list(bucket, prefix)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> CountingStore:
    return CountingStore(clock)


def split_pdf(
    store: MemoryStore, name: str, pages: int = 4, *, published: int | None = None
) -> naming.DocumentRef:
    """A real PDF split this far: every page's image, pages 1..``published`` recorded as
    published (default: all)."""
    data, _ = text_pdf(pages, seed=len(name), lines=2)
    doc = naming.DocumentRef("in", name, store.put("in", name, data, "application/pdf"))
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, pages))
    for page in range(1, pages + 1):
        store.put("work", naming.page_image_name(doc.doc_id, page, "png"), b"image")
    published = pages if published is None else published
    if published:
        store.put("work", naming.published_marker_name(doc.doc_id, 1, published), b"")
    return doc


def run(
    store: MemoryStore,
    clock: Clock,
    policy: Policy | None = None,
    *,
    split_again: SplitAgain | None = None,
    dry_run: bool = False,
) -> tuple[list[int], ReconcileReport]:
    """The pages one run publishes, and its report."""
    publisher = MemoryPublisher()
    report = reconcile(
        store, publisher, SETTINGS, policy=policy, split_again=split_again, dry_run=dry_run,
        now=clock,
    )  # fmt: skip
    pages = [
        PageMessage.decode(m.data).page for t, m in publisher.published if t == SETTINGS.pages_topic
    ]
    return pages, report


def test_a_page_message_is_presumed_lost_only_after_the_subscription_retention(
    store: CountingStore, clock: Clock
) -> None:
    doc = split_pdf(store, "slow.pdf")
    store.put("out", naming.page_markdown_name(doc, 1), b"# one")
    clock.advance(RETENTION_S - DAY_S)  # a week-long backlog: still in the subscription
    assert run(store, clock)[0] == []
    clock.advance(2 * DAY_S)  # past the retention: Pub/Sub dropped pages 2-4
    pages, report = run(store, clock)
    assert pages == [2, 3, 4]
    republished = [n for n in store.names("work") if "/republished-" in n]
    assert republished == [naming.republished_marker_name(doc.doc_id, 2, 4, int(clock.now * 1000))]
    # The next run finds them published again just now: nothing twice.
    clock.advance(3600)
    assert run(store, clock)[0] == []
    # Lost again a retention later: again.
    clock.advance(RETENTION_S)
    assert run(store, clock)[0] == [2, 3, 4]


def test_a_young_unfinished_document_costs_no_read_and_no_work_listing(
    store: CountingStore, clock: Clock
) -> None:
    split_pdf(store, "young.pdf")
    clock.advance(3600)
    store.reads.clear()
    store.lists.clear()
    assert run(store, clock)[0] == []
    assert store.reads == [] and [b for b, _ in store.lists] == ["in", "out"]


def test_a_finished_announced_document_is_answered_by_the_listing_alone(
    store: CountingStore, clock: Clock
) -> None:
    doc = split_pdf(store, "done.pdf")
    for page in range(1, 5):
        store.put("out", naming.page_markdown_name(doc, page), b"# text")
    assert complete_document(doc, 4, store, SETTINGS, MemoryPublisher())
    clock.advance(RETENTION_S * 3)
    store.reads.clear()
    pages, report = run(store, clock, Policy.everything_lost())
    assert pages == [] and report.repairs == []
    assert store.reads == []


def test_a_live_split_lease_leaves_the_document_to_its_attempt(
    store: CountingStore, clock: Clock
) -> None:
    doc = split_pdf(store, "busy.pdf", published=2)
    lease = json.dumps({"expires": clock.now + 600}).encode()
    store.put("work", naming.lease_name(doc.doc_id, 1), lease)
    pages, report = run(store, clock, Policy.everything_lost())
    assert pages == []
    assert [s.name for s in report.skipped] == ["busy.pdf"]
    clock.advance(601)  # the attempt died: its lease expired
    pages, _ = run(store, clock, Policy.everything_lost(), split_again=lambda doc: "split")
    assert pages == [1, 2]


def test_an_image_that_would_expire_before_the_new_message_is_refreshed_first(
    store: CountingStore, clock: Clock
) -> None:
    doc = split_pdf(store, "old.pdf", pages=2)
    image = naming.page_image_name(doc.doc_id, 2, "png")
    before = store.stat("work", image)
    store.put("out", naming.page_markdown_name(doc, 1), b"# one")
    clock.advance(RETENTION_S + DAY_S)
    pages, report = run(store, clock)
    after = store.stat("work", image)
    assert pages == [2] and report.refreshed == 1
    assert before is not None and after is not None and after.generation > before.generation
    assert after.updated == clock.now  # the lifecycle counts its age from now
    assert store.read("work", image) == b"image"


def test_a_lost_page_whose_image_is_gone_is_rendered_again(
    store: CountingStore, clock: Clock
) -> None:
    doc = split_pdf(store, "gone.pdf", pages=3)
    store.put("out", naming.page_markdown_name(doc, 1), b"# one")
    for page in (2, 3):
        store.delete("work", naming.page_image_name(doc.doc_id, page, "png"))
    pages, report = run(store, clock, Policy.everything_lost())
    assert pages == [2, 3] and report.rendered == 2
    image = store.read("work", naming.page_image_name(doc.doc_id, 2, "png"))
    assert image.startswith(b"\x89PNG")


def test_an_abandoned_split_is_split_again_and_its_published_pages_published(
    store: CountingStore, clock: Clock
) -> None:
    doc = split_pdf(store, "half.pdf", pages=4, published=2)
    split: list[str] = []

    def split_again(found: naming.DocumentRef) -> str:
        split.append(found.name)
        return "split"

    clock.advance(3600)  # Eventarc may still be retrying it: leave it
    assert run(store, clock, split_again=split_again)[0] == [] and split == []
    clock.advance(2 * DAY_S)
    pages, _ = run(store, clock, split_again=split_again)
    assert pages == [] and split == ["half.pdf"]  # 1-2 were published 2 days ago: not lost
    assert doc.name == "half.pdf"


def test_an_input_never_split_is_split_once_eventarc_gave_up(
    store: CountingStore, clock: Clock
) -> None:
    data, _ = text_pdf(3, seed=1, lines=2)
    store.put("in", "late.pdf", data, "application/pdf")
    publisher = MemoryPublisher()
    clock.advance(3600)
    assert reconcile(store, publisher, SETTINGS, now=clock).split == []
    clock.advance(DAY_S)
    report = reconcile(store, publisher, SETTINGS, now=clock)
    assert report.split == ["late.pdf"]
    sent = [PageMessage.decode(m.data).page for t, m in publisher.published if t == "ocrpipe-pages"]
    assert sent == [1, 2, 3]  # split in this process, as the splitter would


def test_an_unannounced_rejection_is_announced_once_eventarc_gave_up(
    store: CountingStore, clock: Clock
) -> None:
    store.put("in", "bad.pdf", b"not a pdf", "application/pdf")
    info = store.stat("in", "bad.pdf")
    assert info is not None
    doc = naming.DocumentRef("in", "bad.pdf", info.generation)
    record = records.error_record(doc, "not_a_pdf", "neither a PDF nor an image")
    store.put("out", naming.document_error_name(doc), record, "application/json")
    clock.advance(3600)
    assert run(store, clock)[1].announced == []
    clock.advance(DAY_S)
    assert run(store, clock)[1].announced == ["bad.pdf"]
    assert store.stat("out", naming.latest_name("bad.pdf")) is not None
    assert run(store, clock)[1].announced == []


def test_a_dry_run_changes_nothing(store: CountingStore, clock: Clock) -> None:
    doc = split_pdf(store, "dry.pdf", pages=3, published=2)
    store.delete("work", naming.page_image_name(doc.doc_id, 1, "png"))
    writes = len(store.writes)
    pages, report = run(store, clock, Policy.everything_lost(), dry_run=True)
    assert pages == [] and len(store.writes) == writes
    (repair,) = report.repairs
    assert (repair.pages, repair.rerender, repair.split) == ((1, 2), (1,), True)


def test_split_here_splits_an_input_in_this_process(store: CountingStore) -> None:
    data, _ = text_pdf(3, seed=2, lines=2)
    doc = naming.DocumentRef("in", "a.pdf", store.put("in", "a.pdf", data, "application/pdf"))
    publisher = MemoryPublisher()
    tiny = SETTINGS.model_copy(update={"split_budget_s": 1e-9})  # one page per attempt
    outcome = split_here(store, publisher, tiny)(doc)
    assert outcome == "published"
    pages = sorted(PageMessage.decode(m.data).page for _, m in publisher.published)
    assert pages == [1, 2, 3]
