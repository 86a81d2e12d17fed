"""The bill of a batch (ocrpipe/operations/bill.py): usage summed from document.json records as the
worker writes them, GPU time estimated two ways, and the cost per 1,000 pages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ocrpipe import naming, records
from ocrpipe.listing import scan_prefix
from ocrpipe.operations import bill
from ocrpipe.settings import Settings
from ocrpipe.testing.clock import FakeClock
from ocrpipe.testing.memory import MemoryStore

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out")


def wall_clock() -> FakeClock:
    """Object update times are Unix times: the bill shows them as dates."""
    return FakeClock(1_800_000_000.0)


def provenance(
    *, prompt: int = 1500, completion: int = 600, seconds: float = 8.0, attempts: int = 1,
    temperature: float = 0.2,
) -> dict[str, Any]:  # fmt: skip
    return {
        "model": "lightonai/LightOnOCR-2-1B",
        "temperature": temperature,
        "finish_reason": "stop",
        "attempts": attempts,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "ocr_seconds": seconds,
    }


def page(number: int, prov: dict[str, Any] | None, state: str = "done") -> dict[str, Any]:
    entry: dict[str, Any] = {"page": number, "state": state, "start": 0, "end": 1}
    if state == "failed":
        entry["reason"] = "ocr_repetition_loop"
    if prov is not None:
        entry["provenance"] = prov
    return entry


def finished(
    store: MemoryStore,
    clock: FakeClock,
    name: str,
    pages: list[dict[str, Any]],
    *,
    ends: list[float] | None = None,
    record: bool = True,
    generation: int | None = None,
) -> naming.DocumentRef:
    """A document as the worker leaves it: page results written at ``ends`` (clock times),
    document.md, and document.json holding ``pages``."""
    if generation is None:
        generation = store.put("in", name, b"%PDF-")
    doc = naming.DocumentRef("in", name, generation)
    for entry, end in zip(pages, ends or [0.0] * len(pages), strict=True):
        clock.now = end or clock.now
        number = entry["page"]
        if entry["state"] == "done":
            store.put("out", naming.page_markdown_name(doc, number), b"text")
        else:
            store.put("out", naming.page_error_name(doc, number), b"{}")
    store.put("out", naming.document_markdown_name(doc), b"all")
    if record:
        data = {
            "schema_version": 1,
            "doc_id": doc.doc_id,
            "source": {"bucket": "in", "name": name, "generation": generation},
            "document": {"name": naming.document_markdown_name(doc), "generation": 5},
            "page_count": len(pages),
            "pages": pages,
        }
        store.put("out", naming.document_index_name(doc), json.dumps(data).encode())
    return doc


def run(store: MemoryStore, prefix: str = "", settings: Settings = SETTINGS) -> bill.Bill:
    documents = scan_prefix(store, settings, prefix)
    wanted = bill.records_to_read(documents, settings)
    records = {name: store.read("out", obj) for name, obj in wanted.items()}
    return bill.bill(documents, records, settings)


def test_tokens_seconds_attempts_and_retries_are_summed_over_documents() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    finished(store, clock, "b/one.pdf", [page(1, provenance()), page(2, provenance(seconds=12))])
    finished(
        store,
        clock,
        "b/two.pdf",
        [
            page(1, provenance(attempts=3, temperature=0.5, completion=4096 + 4096 + 700)),
            page(2, provenance(attempts=4, temperature=0.8, completion=9000), state="failed"),
        ],
    )
    total = run(store, "b/")
    assert (total.documents, total.pages, total.pages_done, total.pages_failed) == (2, 4, 3, 1)
    assert total.prompt_tokens == 4 * 1500
    assert total.completion_tokens == 600 + 600 + 8892 + 9000
    assert total.ocr_seconds == pytest.approx(8 + 12 + 8 + 8)
    assert (total.attempts, total.retries) == (9, 5)
    assert total.loop_retries == 2  # both pages kept above the ladder's first 0.2
    assert total.pages_unknown == 0


def test_pages_without_provenance_are_counted_as_unknown_and_left_out_of_the_sums() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    missing = page(2, None)
    null = page(3, None, state="failed") | {"provenance": None}
    garbled = page(4, {"prompt_tokens": "many", "attempts": 0})
    finished(store, clock, "one.pdf", [page(1, provenance()), missing, null, garbled])
    total = run(store)
    assert (total.pages, total.pages_with_usage, total.pages_unknown) == (4, 1, 3)
    assert (total.prompt_tokens, total.attempts, total.retries) == (1500, 1, 0)
    assert total.as_dict()["pages"] == {
        "total": 4,
        "done": 3,
        "failed": 1,
        "usage_known": 1,
        "usage_unknown": 3,
    }


def test_a_document_without_document_json_counts_its_pages_from_the_listing() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    finished(store, clock, "old.pdf", [page(1, None), page(2, None, "failed")], record=False)
    total = run(store)
    assert (total.documents, total.pages_done, total.pages_failed, total.pages_unknown) == (
        1,
        1,
        1,
        2,
    )
    assert total.estimate("concurrency").cost_per_1000_pages is None  # nothing to estimate


def test_only_the_latest_finished_generation_counts() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    finished(store, clock, "re.pdf", [page(1, provenance(prompt=111))])
    finished(store, clock, "re.pdf", [page(1, provenance(prompt=222)), page(2, provenance())])
    # A third upload still being processed: no document.md yet, so the second one counts.
    store.put("in", "re.pdf", b"%PDF- v3")
    total = run(store)
    assert (total.documents, total.pages) == (1, 2)
    assert total.prompt_tokens == 222 + 1500


def test_documents_not_finished_are_named_and_not_counted() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    finished(store, clock, "a.pdf", [page(1, provenance())])
    store.put("in", "b.pdf", b"%PDF-")  # uploaded, nothing written yet
    total = run(store)
    assert total.documents == 1
    assert total.skipped == (bill.Skipped("b.pdf", "not finished"),)


def test_a_rejected_input_is_named_apart_from_an_unfinished_one() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    finished(store, clock, "a.pdf", [page(1, provenance())])
    generation = store.put("in", "empty.pdf", b"")
    doc = naming.DocumentRef("in", "empty.pdf", generation)
    store.put("out", naming.document_error_name(doc), records.error_record(doc, "empty_file", ""))
    store.put("in", "later.pdf", b"%PDF-")
    total = run(store)
    assert total.skipped == (
        bill.Skipped("empty.pdf", bill.REJECTED),
        bill.Skipped("later.pdf", bill.NOT_FINISHED),
    )
    data = total.as_dict()
    assert (data["rejected"], data["not_finished"]) == (["empty.pdf"], ["later.pdf"])


def attempt(
    store: MemoryStore, doc: naming.DocumentRef, found: records.Attempt, time_ns: int
) -> None:
    store.write(
        "out",
        naming.attempt_record_name(doc, found.page, time_ns, found.kind),
        b"{}",
        "application/json",
        if_generation_match=0,
        metadata=records.attempt_metadata(found),
    )


def test_failed_deliveries_and_the_earlier_results_of_retried_pages_are_counted() -> None:
    """The night of the issue: a page whose deliveries failed (the OCR server down, then a
    loop that spent tokens), a page that looped at every temperature and was retried with
    --failed-only; each cost is counted once, with the pages' kept results."""
    clock = wall_clock()
    store = MemoryStore(clock)
    kept = [page(1, provenance(attempts=1)), page(2, provenance(attempts=2))]
    doc = finished(store, clock, "night.pdf", kept, ends=[clock.now, clock.now])
    down: records.Usage = {
        "attempts": 3,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "ocr_seconds": 0.0,
    }
    looped: records.Usage = {
        "attempts": 4,
        "prompt_tokens": 9000,
        "completion_tokens": 16000,
        "ocr_seconds": 80.0,
    }
    before = clock.now - 600
    for n, usage in enumerate((down, down, looped)):
        failed = records.Attempt(1, records.FAILED_DELIVERY, "ocr_unavailable:503", "", n + 1, 10,
                                 "m1", usage, created=before + n)  # fmt: skip
        attempt(store, doc, failed, n)
    loop_error: records.Usage = {**looped, "attempts": 4}
    retried = records.Attempt(2, records.RETRIED, message_id="pages/00002.error.json#7",
                              usage=loop_error, created=before + 10)  # fmt: skip
    attempt(store, doc, retried, 10)
    attempt(store, doc, retried, 11)  # the retry ran twice: counted once
    replay = records.Attempt(1, records.REPLAYED, created=before + 20)
    attempt(store, doc, replay, 20)

    total = run(store)

    assert (total.failed_delivery_count, total.retried_pages) == (3, 1)
    assert total.failed_deliveries == bill.Spend(10, 9000, 16000, 80.0)
    assert total.retried == bill.Spend(4, 9000, 16000, 80.0)
    assert total.attempts == 1 + 2 + 10 + 4
    assert total.completion_tokens == 600 * 2 + 16000 * 2
    assert total.retries == total.attempts - 2
    by_source = total.as_dict()["usage"]["by_source"]
    assert by_source["failed_deliveries"]["count"] == 3
    assert by_source["retried_pages"]["completion_tokens"] == 16000


def test_a_retried_pages_earlier_result_still_in_document_json_is_not_counted_twice() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    doc = finished(store, clock, "r.pdf", [page(1, provenance(), state="failed")])
    usage: records.Usage = {"attempts": 4, "prompt_tokens": 1500, "ocr_seconds": 8.0}
    later = records.Attempt(1, records.RETRIED, message_id="x#1", usage=usage,
                            created=clock.now + 5)  # fmt: skip
    attempt(store, doc, later, 1)  # retried after document.json was written: it still has it
    total = run(store)
    assert (total.retried_pages, total.attempts) == (0, 1)


def test_concurrency_estimate_divides_request_seconds_by_the_requests_at_the_gpus() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    finished(store, clock, "a.pdf", [page(n, provenance(seconds=48.0)) for n in range(1, 5)])
    one = run(store).estimate("concurrency")
    assert one.gpu_seconds == pytest.approx(4 * 48 / 32)  # ocr_max_in_flight 32 x 1 GPU
    measured = Settings(
        input_bucket="in", output_bucket="out", gpu_instances=2, gpu_concurrent_requests=16
    )
    two = run(store, settings=measured)
    assert two.concurrency == 32
    assert "16 per GPU x 2 GPU instance(s)" in two.estimate("concurrency").assumption


def test_both_estimates_agree_for_a_full_batch_on_every_gpu_instance() -> None:
    """Two GPUs serving 16 requests each for 60 s are 120 GPU-seconds billed, whichever way
    they are counted: the concurrency estimate is instance-seconds, like the wall clock."""
    clock = wall_clock()
    store = MemoryStore(clock)
    t0 = clock.now
    pages = [page(n, provenance(seconds=60.0)) for n in range(1, 33)]
    finished(store, clock, "a.pdf", pages, ends=[t0 + 60] * 32)
    settings = Settings(
        input_bucket="in", output_bucket="out", gpu_instances=2, gpu_concurrent_requests=16
    )
    total = run(store, settings=settings)
    assert total.estimate("wall_clock").gpu_seconds == pytest.approx(120)
    assert total.estimate("concurrency").gpu_seconds == pytest.approx(120)


def test_wall_clock_estimate_is_the_time_some_page_was_at_the_gpu_times_instances() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    t0 = clock.now
    # Pages 1-3 overlap in [t0, t0 + 60]; page 4 runs alone 100 s later, after a pause.
    finished(
        store,
        clock,
        "a.pdf",
        [page(1, provenance(seconds=50)), page(2, provenance(seconds=40))]
        + [page(3, provenance(seconds=30)), page(4, provenance(seconds=20))],
        ends=[t0 + 50, t0 + 55, t0 + 60, t0 + 180],
    )
    total = run(store)
    assert total.first_start == pytest.approx(t0)
    assert total.last_end == pytest.approx(t0 + 180)
    assert total.span_seconds == pytest.approx(180)
    assert total.busy_seconds == pytest.approx(60 + 20)  # the pause is not GPU time
    settings = Settings(input_bucket="in", output_bucket="out", gpu_instances=2)
    two_gpus = run(store, settings=settings)
    assert two_gpus.estimate("wall_clock").gpu_seconds == pytest.approx(160)


def test_cost_is_gpu_hours_times_the_price_and_per_1000_pages_divides_by_known_pages() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    t0 = clock.now
    pages = [page(1, provenance(seconds=3600)), page(2, provenance(seconds=3600)), page(3, None)]
    finished(store, clock, "a.pdf", pages, ends=[t0 + 3600, t0 + 3600, t0 + 3600])
    settings = Settings(input_bucket="in", output_bucket="out", gpu_price_per_hour=2.0)
    wall = run(store, settings=settings).estimate("wall_clock")
    assert wall.gpu_seconds == pytest.approx(3600)
    assert wall.cost == pytest.approx(2.0)
    assert wall.cost_per_1000_pages == pytest.approx(1000.0)  # $2 over the 2 pages with usage


def test_the_published_l4_figures_give_about_66_cents_per_1000_pages() -> None:
    """docs/PERFORMANCE.md's formula: 0.6 pages/s with 32 in flight is 53.3 s per page at
    the GPU; at $1.42 an hour that is $0.66 per 1,000 pages, and 1,000 pages is 46 minutes."""
    pages = [
        bill.PageUsage(n, "done", bill.Usage("m", 0.2, 1, 1500, 600, 32 / 0.6))
        for n in range(1, 1001)
    ]
    total = bill.summarise(pages, SETTINGS, documents=1)
    estimate = total.estimate("concurrency")
    assert estimate.gpu_seconds == pytest.approx(1000 / 0.6)
    assert estimate.cost_per_1000_pages == pytest.approx(0.657, abs=0.001)


def test_an_unreadable_document_json_falls_back_to_the_listing() -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    doc = finished(store, clock, "a.pdf", [page(1, provenance())], record=False)
    store.put("out", naming.document_index_name(doc), b"<html>not json</html>")
    total = run(store)
    assert (total.pages, total.pages_unknown) == (1, 1)


@pytest.mark.parametrize(
    ("intervals", "length"),
    [
        ([], 0.0),
        ([(0, 10)], 10.0),
        ([(0, 10), (5, 12)], 12.0),
        ([(0, 10), (2, 3)], 10.0),
        ([(20, 30), (0, 10)], 20.0),
        ([(0, 10), (10, 15)], 15.0),
    ],
)
def test_union_length_counts_overlaps_once(
    intervals: list[tuple[float, float]], length: float
) -> None:
    assert bill.union_length(intervals) == pytest.approx(length)


def test_prompt_tokens_a_server_did_not_report_are_estimated_from_vllms_count() -> None:
    """A server that sends no usage leaves prompt_tokens 0 in the provenance: the bill counts
    those requests at what vLLM counts for a page (an A4 page at 1540 px), and says so."""
    clock = wall_clock()
    store = MemoryStore(clock)
    finished(
        store,
        clock,
        "n/none.pdf",
        [page(1, provenance(prompt=0)), page(2, provenance(prompt=0, attempts=2))],
    )
    finished(store, clock, "n/some.pdf", [page(1, provenance(prompt=1500))])
    total = run(store, "n/")
    assert total.prompt_tokens_estimated == 3 * bill.PROMPT_TOKENS_PER_REQUEST
    assert total.prompt_tokens == 1500 + 3 * bill.PROMPT_TOKENS_PER_REQUEST
    assert total.as_dict()["usage"]["prompt_tokens_estimated"] == total.prompt_tokens_estimated


def test_the_estimate_is_the_a4_figure_measured_from_vllm() -> None:
    """One owner: bench/results/prompt_tokens.json, written by bench/prompt_tokens.py from
    vLLM's real server."""
    measured = json.loads(
        (Path(__file__).resolve().parents[1] / "bench/results/prompt_tokens.json").read_text()
    )
    assert bill.PROMPT_TOKENS_PER_REQUEST == measured["figures"]["A4"]["prompt_tokens"] == 2157
