"""A batch's status on the in-memory store: states, pages, failures with reasons, rate and
ETA on a fake clock, the wait loop, and what a status costs in list calls and reads."""

from __future__ import annotations

import math

import pytest

from ocrpipe import naming, records
from ocrpipe.listing import scan_prefix
from ocrpipe.operations.batch_status import batch_status, verdict, wait_for_batch
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectInfo
from ocrpipe.testing.clock import FakeClock
from ocrpipe.testing.memory import MemoryStore
from ocrpipe.testing.stores import ForwardingStore

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out")


def make_document(
    store: MemoryStore,
    name: str,
    state: str,
    *,
    pages: int = 2,
    texts: list[str] | None = None,
    record: bool = False,
) -> naming.DocumentRef:
    """An input and the output the pipeline would have written for it in ``state``:
    splitting, running (first page done), done, partial (last page failed), rejected, stuck
    (running, its other pages dead-lettered)."""
    generation = store.put("in", name, b"%PDF- " + name.encode())
    doc = naming.DocumentRef("in", name, generation)
    if state == "splitting":
        return doc
    if state == "rejected":
        error = records.error_record(doc, "not_a_document", "this is text, not a PDF")
        store.put("out", naming.document_error_name(doc), error)
        return doc
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, pages))
    texts = texts or [f"{name} page {n}" for n in range(1, pages + 1)]
    finished = {"running": 1, "stuck": 1, "done": pages, "partial": pages - 1}[state]
    for number in range(1, finished + 1):
        store.put("out", naming.page_markdown_name(doc, number), texts[number - 1].encode())
    if state == "stuck":
        for number in range(finished + 1, pages + 1):
            fail_delivery(store, doc, number, 10, at=number)
    if state in ("running", "stuck"):
        return doc
    if state == "partial":
        error = records.error_record(doc, "ocr_repetition_loop", "looped", page=pages)
        store.put("out", naming.page_error_name(doc, pages), error)
    body = "\n".join(texts[:finished])
    store.put("out", naming.document_markdown_name(doc), body.encode())
    if record:
        store.put("out", naming.document_json_name(doc), b'{"pages": 2}')
    return doc


class CountingStore(ForwardingStore):
    """Counts the list calls (and the GCS list pages they would cost) and the reads."""

    def __init__(self, inner: MemoryStore) -> None:
        super().__init__(inner)
        self.lists = 0
        self.list_pages = 0
        self.listed = 0
        self.reads: list[str] = []

    def list(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        found = self.inner.list(bucket, prefix)
        self.lists += 1
        self.list_pages += max(1, math.ceil(len(found) / 1000))
        self.listed += len(found)
        return found

    def read(self, bucket: str, name: str) -> bytes:
        self.reads.append(name)
        return self.inner.read(bucket, name)

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        raise AssertionError("a batch status lists; it never stats one object")


def test_states_pages_and_failures_of_a_folder() -> None:
    store = MemoryStore()
    for index, state in enumerate(["done", "done", "partial", "rejected", "running", "splitting"]):
        make_document(store, f"batch1/sub/{index}-{state}.pdf", state)
    make_document(store, "batch10/other.pdf", "done")  # shares the characters, not the folder
    make_document(store, "elsewhere/x.pdf", "done")

    status = batch_status(store, SETTINGS, "batch1/")

    assert [d.name for d in status.documents] == [
        f"batch1/sub/{i}-{s}.pdf"
        for i, s in enumerate(["done", "done", "partial", "rejected", "running", "splitting"])
    ]
    assert dict(status.states) == {
        "done": 2,
        "partial": 1,
        "rejected": 1,
        "running": 1,
        "splitting": 1,
    }
    assert (status.pages_done, status.pages_failed, status.pages_known) == (6, 1, 8)
    assert status.not_split == 1
    assert not status.finished
    failures = {(f.name, f.page): (f.reason, f.message) for f in status.failures}
    assert failures == {
        ("batch1/sub/2-partial.pdf", 2): ("ocr_repetition_loop", "looped"),
        ("batch1/sub/3-rejected.pdf", None): ("not_a_document", "this is text, not a PDF"),
    }
    data = status.as_dict()
    assert data["documents"] == 6 and data["pages"]["done"] == 6
    assert data["failures"][0]["reason"] == "ocr_repetition_loop"


def test_rate_and_eta_from_the_page_times() -> None:
    clock = FakeClock(10_000.0)
    store = MemoryStore(clock=clock)
    docs = [make_document(store, f"b/{n}.pdf", "splitting") for n in range(4)]
    for doc in docs:  # split: 10 pages each
        store.put("out", naming.manifest_name(doc), records.manifest_record(doc, 10))
    clock.now += 100
    for doc in docs[2:]:  # two pages long ago, outside the window
        store.put("out", naming.page_markdown_name(doc, 1), b"early")
    clock.now += 500  # ten minutes after the upload, 2 pages/min for the last 5 minutes:
    for minute in range(5):
        for doc in docs[:2]:
            store.put("out", naming.page_markdown_name(doc, minute + 1), b"text")
        clock.now += 60
    status = batch_status(store, SETTINGS, "b/", now=clock.now, window_s=300)

    assert status.pages_done == 12
    assert status.recent_pages == 10
    assert status.rate_per_s == pytest.approx(10 / 300)
    assert status.pages_remaining == 28
    assert status.eta_s == pytest.approx(28 / (10 / 300))
    assert status.as_dict()["rate_pages_per_min"] == 2.0


def test_rate_counts_from_the_first_upload_when_the_batch_is_younger_than_the_window() -> None:
    clock = FakeClock(10_000.0)
    store = MemoryStore(clock=clock)
    doc = make_document(store, "young/a.pdf", "splitting")
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, 4))
    clock.now += 60
    store.put("out", naming.page_markdown_name(doc, 1), b"one")
    status = batch_status(store, SETTINGS, "young/", now=clock.now, window_s=300)
    assert status.rate_per_s == pytest.approx(1 / 60)
    assert status.eta_s == pytest.approx(3 * 60)


def test_unsplit_documents_count_as_the_average_split_document() -> None:
    store = MemoryStore()
    make_document(store, "avg/a.pdf", "running", pages=4)
    make_document(store, "avg/b.pdf", "done", pages=2)
    make_document(store, "avg/c.pdf", "splitting")
    status = batch_status(store, SETTINGS, "avg/")
    assert status.pages_remaining == 3 + 3  # a's 3 pending pages, c as (4 + 2) / 2


@pytest.mark.parametrize("documents", [10, 2500])
def test_a_status_costs_two_listings_and_reads_only_what_the_listing_cannot_answer(
    documents: int,
) -> None:
    memory = MemoryStore()
    states = ["done"] * 7 + ["running", "partial", "rejected"]
    for n in range(documents):
        make_document(memory, f"big/{n:05d}.pdf", states[n % len(states)])
    store = CountingStore(memory)

    status = batch_status(store, SETTINGS, "big/")

    assert len(status.documents) == documents
    assert store.lists == 2  # the input bucket and the output bucket, once each
    objects = store.listed
    # 1000 objects per GCS list page: inputs, then 4-5 output objects per document.
    assert store.list_pages == math.ceil(documents / 1000) + math.ceil((objects - documents) / 1000)
    tenth = documents // 10
    # Read: the manifest of each running document, each rejection and each failed page.
    assert len(store.reads) == 3 * tenth
    assert all(not r.endswith("document.md") for r in store.reads)


def test_only_the_names_asked_for_and_outputs_whose_input_is_gone() -> None:
    store = MemoryStore()
    make_document(store, "keep/a.pdf", "done")
    make_document(store, "keep/b.pdf", "done")
    gone = make_document(store, "keep/gone.pdf", "done")
    store.delete("in", gone.name)

    everything = batch_status(store, SETTINGS, "keep/")
    assert [d.name for d in everything.documents] == ["keep/a.pdf", "keep/b.pdf", "keep/gone.pdf"]
    assert everything.documents[2].state == "done"
    only = batch_status(store, SETTINGS, "keep/", names=["keep/b.pdf"])
    assert [d.name for d in only.documents] == ["keep/b.pdf"]


@pytest.mark.parametrize(
    "prefix",
    ["Grüße/", "Grü", "日本語/資料", "a b/", "x/.", "tilde~/", "@at/", "per%cent/"],
)
def test_the_output_listing_finds_every_name_under_a_prefix(prefix: str) -> None:
    store = MemoryStore()
    suffixes = ["x.pdf", "/y z.pdf", "/./w.pdf", "/../v.pdf", ".hidden/u.pdf"]
    names = [prefix + s for s in suffixes]
    for name in names:
        make_document(store, name, "done")
    make_document(store, "unrelated.pdf", "done")
    scanned = scan_prefix(store, SETTINGS, prefix)
    assert sorted(d.name for d in scanned) == sorted(names)
    assert all(d.latest_finished(SETTINGS) is not None for d in scanned)


def test_wait_polls_until_every_document_is_finished() -> None:
    clock = FakeClock(10_000.0)
    store = MemoryStore(clock=clock)
    doc = make_document(store, "w/a.pdf", "running")
    make_document(store, "w/b.pdf", "done")
    seen: list[int] = []

    def sleep(seconds: float) -> None:
        clock.sleep_sync(seconds)
        if clock.now > 10_010:  # the last page lands after ten seconds
            store.create("out", naming.page_markdown_name(doc, 2), b"two", "text/markdown")
            store.create("out", naming.document_markdown_name(doc), b"one two", "text/markdown")

    final, finished = wait_for_batch(
        lambda: batch_status(store, SETTINGS, "w/", now=clock.now),
        timeout=60,
        interval=2,
        clock=clock,
        sleep=sleep,
        on_update=lambda s: seen.append(s.pages_done),
    )
    assert finished and final.finished
    assert dict(final.states) == {"done": 2}
    assert verdict(final, settled=finished) == "ok"
    assert seen[0] == 3 and seen[-1] == 4
    assert 10 < clock.now - 10_000 <= 14


def test_wait_gives_up_at_the_timeout() -> None:
    clock = FakeClock(10_000.0)
    store = MemoryStore()
    make_document(store, "t/a.pdf", "running")
    final, finished = wait_for_batch(
        lambda: batch_status(store, SETTINGS, "t/"),
        timeout=30,
        interval=4,
        clock=clock,
        sleep=clock.sleep_sync,
    )
    assert not finished
    assert clock.now - 10_000 == pytest.approx(30)
    assert verdict(final, settled=finished) == "timeout"


@pytest.mark.parametrize(
    ("states", "allow_partial", "expected"),
    [
        (["done", "done"], False, "ok"),
        (["done", "partial"], False, "failed"),
        (["done", "partial"], True, "ok"),
        (["done", "rejected"], True, "failed"),
        (["running", "rejected"], False, "timeout"),  # a wait cut short says so first
        (["stuck", "done"], False, "dead_lettered"),
        (["stuck", "rejected"], False, "dead_lettered"),
        ([], False, "failed"),  # nothing under the prefix: a typo, not a wait
    ],
)
def test_verdicts(states: list[str], allow_partial: bool, expected: str) -> None:
    store = MemoryStore()
    for n, state in enumerate(states):
        make_document(store, f"v/{n}.pdf", state)
    clock = FakeClock(10_000.0)
    final, finished = wait_for_batch(
        lambda: batch_status(store, SETTINGS, "v/"),
        timeout=1,
        clock=clock,
        sleep=clock.sleep_sync,
    )
    assert verdict(final, settled=finished, allow_partial=allow_partial) == expected


def fail_delivery(
    store: MemoryStore, doc: naming.DocumentRef, page: int, delivery: int, *, at: int
) -> None:
    """The attempt record the worker writes when it nacks ``delivery`` of ``page``."""
    attempt = records.Attempt(
        page, records.FAILED_DELIVERY, "ocr_unavailable:503", "HTTP 503", delivery, 10
    )
    store.write(
        "out",
        naming.attempt_record_name(doc, page, at, records.FAILED_DELIVERY),
        records.attempt_record(doc, attempt),
        "application/json",
        if_generation_match=0,
        metadata=records.attempt_metadata(attempt),
    )


def test_retrying_and_dead_lettered_pages_are_told_apart_from_queued_ones() -> None:
    store = MemoryStore()
    doc = make_document(store, "r/a.pdf", "running", pages=4)  # page 1 done
    fail_delivery(store, doc, 2, 3, at=1)  # retrying: delivery 3 of 10 failed
    fail_delivery(store, doc, 3, 9, at=1)
    fail_delivery(store, doc, 3, 10, at=2)  # its last delivery: dead-lettered
    fail_delivery(store, doc, 1, 2, at=1)  # page 1 is done since: not in trouble
    status = batch_status(store, SETTINGS, "r/")
    (summary,) = status.documents
    assert (summary.state, summary.pending, summary.retrying, summary.dead_lettered) == (
        "running", 3, 1, 1
    )  # fmt: skip
    assert (status.pages_retrying, status.pages_dead_lettered) == (1, 1)
    assert [
        (t.name, t.trouble.page, t.trouble.state, t.trouble.delivery) for t in status.troubles
    ] == [
        ("r/a.pdf", 2, "retrying", 3),
        ("r/a.pdf", 3, "dead_lettered", 10),
    ]
    assert not status.stuck and not status.settled  # page 4 is queued
    data = status.as_dict()
    assert (
        data["pages_dead_lettered"] == 1 and data["troubles"][1]["reason"] == "ocr_unavailable:503"
    )


def test_a_batch_whose_every_pending_page_is_dead_lettered_settles_without_the_timeout() -> None:
    store = MemoryStore()
    make_document(store, "s/done.pdf", "done")
    stuck = make_document(store, "s/stuck.pdf", "stuck")
    clock = FakeClock(10_000.0)
    final, settled = wait_for_batch(
        lambda: batch_status(store, SETTINGS, "s/"),
        timeout=3600,
        clock=clock,
        sleep=clock.sleep_sync,
    )
    assert settled and final.stuck and not final.finished
    assert clock.now - 10_000 == 0  # the first poll saw it: no wait for the timeout
    assert final.pages_dead_lettered == 1 and final.eta_s is None
    assert verdict(final, settled=settled) == "dead_lettered"
    replayed = records.Attempt(2, records.REPLAYED)
    store.write(
        "out",
        naming.attempt_record_name(stuck, 2, 99, records.REPLAYED),
        b"{}",
        "application/json",
        if_generation_match=0,
        metadata=records.attempt_metadata(replayed),
    )
    again = batch_status(store, SETTINGS, "s/")
    assert again.pages_dead_lettered == 0 and not again.settled  # queued again


def test_a_batch_where_nothing_was_written_for_longer_than_a_page_takes_has_stalled() -> None:
    clock = FakeClock(10_000.0)
    store = MemoryStore(clock=clock)
    make_document(store, "q/a.pdf", "running", pages=3)
    clock.now += 599
    assert not batch_status(store, SETTINGS, "q/", now=clock.now).stalled
    clock.now += 2
    stalled = batch_status(store, SETTINGS, "q/", now=clock.now)
    assert stalled.stalled and stalled.quiet_s == pytest.approx(601)
    make_document(store, "q/b.pdf", "done")  # something moved
    assert not batch_status(store, SETTINGS, "q/", now=clock.now).stalled


OFFLINE_ENV = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9"}


@pytest.mark.parametrize("args", [["wait"], ["status", "a.pdf", "--prefix", "p/"]])
def test_batch_usage_errors_exit_2_before_any_call(args: list[str]) -> None:
    from typer.testing import CliRunner

    from ocrpipe import cli

    result = CliRunner().invoke(cli.app, args, env=OFFLINE_ENV)
    assert result.exit_code == cli.Exit.USAGE, result.output
