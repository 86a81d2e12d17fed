"""Benchmark 2: what the pipeline itself costs, with an OCR server that answers at once.

The whole local stack (Pub/Sub emulator, fake-gcs-server, Eventarc stand-in, splitter,
worker) with the fault server, no faults, as OCR. After a warm-up document, D documents of
P pages are uploaded at once; the run ends when the last ``document.md`` is written. This
runs twice on the same stack: through the stack's own delivery (its push relay,
:mod:`ocrpipe.local.relay`, keeps up to ``ocr_max_in_flight`` = 32 deliveries open, as
production Pub/Sub would against a Cloud Run worker; the target figure), then with the
relay limited to 2 deliveries open, what the Pub/Sub emulator's own push allows.

* throughput: all pages / (last ``document.md`` updated - first upload started);
* steady rate: :func:`bench.common.steady_rate` over page finishes (a page finishes when
  its ``.md`` object is written, by its ``updated`` time);
* added latency per page: the page's ``.md`` ``updated`` time minus the time the splitter
  logged "split N pages" for its document, right after publishing its pages (one batch per
  document of at most 100 pages): Pub/Sub push + worker + (instant) OCR + writes;
* worker time per page: the worker's own ``duration_ms`` per push request (logger
  ``ocr_worker``), from the request's arrival to its answer.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.common import percentile, say, steady_rate, target
from bench.stack import (
    bench_stack,
    cpu_by_service,
    cpu_per_page_ms,
    document_times,
    other_load_cores,
    read_log,
    split_times,
    store_for,
    upload_all,
    wait_all,
)
from ocrpipe.local.stack import LocalStack
from ocrpipe.settings import cpu_count
from ocrpipe.testing.pdfs import text_pdf

TARGET_PAGES_PER_S = 25.0
DELIVERY_MAX_IN_FLIGHT = 32  # = OCRPIPE_OCR_MAX_IN_FLIGHT's default, the relay's


def _batch(stack: LocalStack, pdfs: list[tuple[bytes, int]]) -> dict[str, Any]:
    """Upload ``pdfs`` at once, wait for every document.md, and read the run back."""
    settings = stack.settings
    store = store_for(stack)
    assert stack.log_dir is not None
    worker_lines = len(read_log(stack.log_dir / "worker.log"))
    cpu_before = cpu_by_service(stack)
    uploads = upload_all(store, settings, pdfs)
    wait_all(store, settings, uploads, timeout=600)
    total = sum(pages for _, pages in pdfs)
    cpu_after = cpu_by_service(stack)
    cpu = cpu_per_page_ms(cpu_before, cpu_after, total)
    times = [document_times(store, settings, u) for u in uploads]
    split_done = split_times(stack)
    worker_log = read_log(stack.log_dir / "worker.log")[worker_lines:]

    started = min(u.started for u in uploads)
    finished = max(t.document_done for t in times)
    page_finishes = [when for t in times for when in t.page_done.values()]
    latencies: list[float] = []
    split_ms: list[float] = []
    for t in times:
        published, duration_ms = split_done[t.upload.doc(settings).doc_id]
        split_ms.append(duration_ms)
        latencies.extend(when - published for when in t.page_done.values())
    worker_ms = [
        float(e["duration_ms"])
        for e in worker_log
        if e.get("logger") == "ocr_worker" and "duration_ms" in e
    ]
    return {
        "documents": len(pdfs),
        "pages": total,
        "seconds": round(finished - started, 2),
        "pages_per_s": round(total / (finished - started), 2),
        "steady_pages_per_s": round(steady_rate(page_finishes), 2),
        "added_latency_ms": {
            "median": round(1000 * statistics.median(latencies), 1),
            "p90": round(1000 * percentile(latencies, 0.9), 1),
            "max": round(1000 * max(latencies), 1),
        },
        "worker_request_ms": {
            "median": round(statistics.median(worker_ms), 1),
            "p90": round(percentile(worker_ms, 0.9), 1),
        },
        "split_ms_median": round(statistics.median(split_ms), 1),
        "cpu_ms_per_page": cpu,
        # What this machine could do if the pipeline had both cores to itself.
        "cpu_bound_pages_per_s": round(1000 * cpu_count() / cpu["total"], 1),
        "other_jobs_cores": other_load_cores(cpu_before, cpu_after),
    }


def _report(label: str, f: dict[str, Any]) -> None:
    say(
        f"  {label}: {f['pages']} pages in {f['seconds']:.1f} s: {f['pages_per_s']:.1f} pages/s"
        f" end to end (steady {f['steady_pages_per_s']:.1f}); added latency per page median"
        f" {f['added_latency_ms']['median']:.0f} ms (p90 {f['added_latency_ms']['p90']:.0f});"
        f" worker request median {f['worker_request_ms']['median']:.0f} ms"
    )
    cpu = f["cpu_ms_per_page"]
    say(
        "    CPU ms per page: "
        + ", ".join(f"{k} {v:g}" for k, v in cpu.items() if v >= 0.5)
        + f" -> at most {f['cpu_bound_pages_per_s']:g} pages/s on this machine's cores;"
        f" other jobs kept {f['other_jobs_cores']:g} cores busy meanwhile"
    )


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    documents, pages = (3, 10) if quick else (10, 30)
    delivered_pdfs = [(text_pdf(pages, seed=100 + i)[0], pages) for i in range(documents)]
    two_pdfs = [(text_pdf(pages, seed=150 + i)[0], pages) for i in range(documents)]
    with bench_stack([], {}) as stack:
        settings = stack.settings
        warm = upload_all(store_for(stack), settings, [(text_pdf(2, seed=99)[0], 2)])
        wait_all(store_for(stack), settings, warm, timeout=120)
        delivered = _batch(stack, delivered_pdfs)
        delivered["delivery_max_in_flight"] = DELIVERY_MAX_IN_FLIGHT

        stack.pause_delivery()
        stack.start_relay(max_in_flight=2)
        two = _batch(stack, two_pdfs)
        two["delivery_max_in_flight"] = 2

    _report(f"{DELIVERY_MAX_IN_FLIGHT} deliveries open", delivered)
    _report("2 deliveries open ", two)
    throughput = delivered["pages_per_s"]
    figures: dict[str, Any] = {
        "documents": documents,
        "pages_per_document": pages,
        **delivered,
        "two_in_flight": two,
    }
    targets = {"pages_per_s": target(throughput, TARGET_PAGES_PER_S, unit="pages/s")}
    method = (
        "local stack + fault server (no faults, no service time); after a warm-up document,"
        f" {documents} x {pages}-page text PDFs uploaded at once, through the stack's push relay"
        f" with {DELIVERY_MAX_IN_FLIGHT} deliveries open (target figure), then {documents} more"
        " with 2 open (the emulator's own push); throughput = pages / (last document.md"
        " updated - first upload);"
        " latency = page .md updated - the splitter's 'split N pages' log time (its pages"
        " were just published)"
    )
    return figures, targets, method
