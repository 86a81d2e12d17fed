"""`ocrpipe report` on the in-memory store: what it prints, its JSON, its exit codes."""

from __future__ import annotations

import heapq
import json

import pytest
from typer.testing import CliRunner

from ocrpipe import cli
from ocrpipe.cli.report import report_batch
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryStore
from tests.test_bill import finished, page, provenance, wall_clock

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out")
OFFLINE_ENV = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9"}
runner = CliRunner()


def batch() -> MemoryStore:
    """Two finished documents under batch/ (one page without usage), one still running, and
    one outside the prefix."""
    clock = wall_clock()
    store = MemoryStore(clock)
    t0 = clock.now
    finished(
        store,
        clock,
        "batch/a.pdf",
        [page(1, provenance(seconds=40)), page(2, provenance(seconds=40, attempts=2))],
        ends=[t0 + 40, t0 + 45],
    )
    finished(
        store,
        clock,
        "batch/b.pdf",
        [page(1, provenance(seconds=30, temperature=0.5, attempts=2)), page(2, None, "failed")],
        ends=[t0 + 60, t0 + 61],
    )
    store.put("in", "batch/c.pdf", b"%PDF-")
    finished(store, clock, "other/x.pdf", [page(1, provenance(prompt=10**6))])
    return store


L4_PAGE_S = 32 / 0.6  # published: 0.6 pages/s on one L4 with 32 in flight


def l4_batch(documents: int = 20, pages: int = 50) -> MemoryStore:
    """A fixture batch shaped like the published L4 figures (not a measurement): pages sent
    32 at a time, each at the GPU for 32 / 0.6 s; every 33rd page loops once (a cut reply,
    then 0.3), two loop through the whole ladder and fail, one fails to render (no
    provenance). Result objects are written when each page ends."""
    clock = wall_clock()
    store = MemoryStore(clock)
    slots = [clock.now] * 32
    number = 0
    for d in range(documents):
        entries, ends = [], []
        for p in range(1, pages + 1):
            number += 1
            if number in (500, 900):
                prov = provenance(seconds=L4_PAGE_S + 30, attempts=4, temperature=0.8)
                prov["completion_tokens"] = 4 * 400
                entries.append(page(p, prov, state="failed"))
            elif number == 700:
                entries.append(page(p, None, state="failed"))
                ends.append(clock.now)
                continue
            elif number % 33 == 0:
                prov = provenance(seconds=L4_PAGE_S + 8, attempts=2, temperature=0.3)
                entries.append(page(p, prov | {"completion_tokens": 400 + 640}))
            else:
                entries.append(page(p, provenance(prompt=1520, completion=640, seconds=L4_PAGE_S)))
            start = heapq.heappop(slots)
            end = start + entries[-1]["provenance"]["ocr_seconds"]
            heapq.heappush(slots, end)
            ends.append(end)
        finished(store, clock, f"l4/doc{d:02d}.pdf", entries, ends=ends)
    return store


def test_with_the_gpu_batch_full_both_estimates_agree_near_the_published_cost(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = report_batch(l4_batch(), SETTINGS, [], "l4/", as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert code == cli.Exit.OK
    assert data["pages"]["total"] == 1000 and data["pages"]["usage_unknown"] == 1
    assert data["usage"]["loop_retries"] == 2 + 30
    by_concurrency = data["estimates"]["concurrency"]["cost_per_1000_pages"]
    by_clock = data["estimates"]["wall_clock"]["cost_per_1000_pages"]
    assert by_concurrency == pytest.approx(by_clock, rel=0.05)
    assert 0.657 <= by_concurrency < 0.70  # $0.66 plus what the loops cost


def test_json_sums_the_prefix_and_gives_both_estimates(capsys: pytest.CaptureFixture[str]) -> None:
    code = report_batch(batch(), SETTINGS, [], "batch/", as_json=True)
    captured = capsys.readouterr()
    assert code == cli.Exit.OK
    data = json.loads(captured.out)
    assert data["prefix"] == "batch/" and data["documents"] == 2
    assert data["not_counted"] == [{"name": "batch/c.pdf", "why": "not finished"}]
    assert data["pages"] == {
        "total": 4,
        "done": 3,
        "failed": 1,
        "usage_known": 3,
        "usage_unknown": 1,
    }
    assert data["usage"]["by_source"]["failed_deliveries"]["count"] == 0
    assert {k: v for k, v in data["usage"].items() if k != "by_source"} == {
        "prompt_tokens": 4500,
        "prompt_tokens_estimated": 0,
        "completion_tokens": 1800,
        "ocr_seconds": 110.0,
        "attempts": 5,
        "retries": 2,
        "loop_retries": 1,
    }
    assert data["time"]["span_s"] == 61.0
    assert data["time"]["busy_s"] == 60.0  # [0, 45] and [30, 60]
    assert data["gpu"] == {"price_per_hour": 1.42, "instances": 1, "concurrency": 32}
    estimates = data["estimates"]
    assert set(estimates) == {"concurrency", "wall_clock"}
    assert estimates["concurrency"]["gpu_seconds"] == pytest.approx(110 / 32, abs=1e-3)
    assert estimates["wall_clock"]["gpu_seconds"] == 60.0
    assert estimates["wall_clock"]["cost"] == pytest.approx(60 / 3600 * 1.42, abs=1e-6)
    assert estimates["wall_clock"]["cost_per_1000_pages"] == pytest.approx(
        60 / 3600 * 1.42 / 3 * 1000, abs=1e-3
    )
    assert all(e["assumption"] for e in estimates.values())
    assert "batch/c.pdf: not counted: not finished" in captured.err


def test_text_shows_pages_usage_costs_and_the_assumptions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = report_batch(batch(), SETTINGS, [], "batch/", as_json=False)
    text = " ".join(capsys.readouterr().out.split())
    assert code == cli.Exit.OK
    assert "2 document(s) under 'batch/': 4 pages, 3 done, 1 failed" in text
    assert "usage recorded for 3 page(s), unknown for 1" in text
    assert "4,500 prompt, 1,800 completion" in text and "5 attempts (2 retries)" in text
    assert "concurrency" in text and "wall clock" in text
    assert "$0.0237" in text  # 60 s of one L4 instance at $1.42 an hour
    assert "wall clock: assumes 1 GPU instance(s) up while any page was at the GPU" in text
    assert "$1.42 per GPU-instance hour" in text and "cold starts" in text


def test_names_select_documents_and_their_latest_finished_generation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = batch()
    code = report_batch(store, SETTINGS, ["other/x.pdf"], None, as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert code == cli.Exit.OK
    assert data["names"] == ["other/x.pdf"] and data["usage"]["prompt_tokens"] == 10**6


def test_an_unknown_name_exits_1_after_billing_the_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = report_batch(batch(), SETTINGS, ["other/x.pdf", "nope.pdf"], None, as_json=True)
    captured = capsys.readouterr()
    assert code == cli.Exit.FAILED
    assert json.loads(captured.out)["documents"] == 1
    assert "nope.pdf: not counted: no such document" in captured.err


def test_usage_unknown_everywhere_says_so_and_gives_no_estimate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = wall_clock()
    store = MemoryStore(clock)
    finished(store, clock, "old.pdf", [page(1, None)], record=False)
    code = report_batch(store, SETTINGS, [], "", as_json=False)
    text = " ".join(capsys.readouterr().out.split())
    assert code == cli.Exit.OK
    assert "unknown for 1" in text and "no GPU estimate" in text


@pytest.mark.parametrize(
    ("names", "prefix"), [([], "nothing/"), ([], "batch/c"), (["missing.pdf"], None)]
)
def test_nothing_finished_exits_1(
    names: list[str], prefix: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = report_batch(batch(), SETTINGS, names, prefix, as_json=True)
    assert code == cli.Exit.FAILED
    assert json.loads(capsys.readouterr().out)["documents"] == 0


def test_without_names_or_prefix_is_a_usage_error() -> None:
    result = runner.invoke(cli.app, ["report"], env=OFFLINE_ENV)
    assert result.exit_code == cli.Exit.USAGE
    assert "give --prefix" in result.output


def test_a_negative_price_is_a_usage_error() -> None:
    env = {**OFFLINE_ENV, "OCRPIPE_GPU_PRICE_PER_HOUR": "-1"}
    result = runner.invoke(cli.app, ["report", "--prefix", "x/"], env=env)
    assert result.exit_code == cli.Exit.USAGE
    assert "gpu_price_per_hour" in result.output


def test_a_bill_costs_two_listings_and_one_read_per_finished_document(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.fakes import RecordingStore

    clock = wall_clock()
    store = RecordingStore()
    for n in range(5):
        finished(store, clock, f"batch/{n}.pdf", [page(1, provenance()), page(2, provenance())])
    store.put("in", "batch/running.pdf", b"%PDF-")
    store.listings.clear()
    assert report_batch(store, SETTINGS, [], "batch/", as_json=True) == cli.Exit.OK
    assert len(store.listings) == 2
    assert sorted(name.rsplit("/", 1)[1] for _, name in store.reads) == ["document.json"] * 5
    assert json.loads(capsys.readouterr().out)["pages"]["total"] == 10
