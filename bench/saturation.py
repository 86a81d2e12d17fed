"""Benchmark 3: does the pipeline keep a (simulated) GPU saturated?

The fault server's batching mode stands in for vLLM's continuous batching: at most K
requests are served at once, each for S seconds, the rest queue; its capacity is K / S
pages per second. For each (K, S), in the same run and against the same server process:

1. direct: a bare asyncio HTTP client keeps 2K requests in flight (each one the worker's
   request for a real rendered page) until N = 10K pages are answered: the capacity;
2. pipeline, 2 in flight: 8 pages through the local stack with its push relay limited
   to 2 deliveries open, what the Pub/Sub emulator's own push allows (two push loops per
   subscription): what local delivery gave before the relay;
3. pipeline: the same N pages as 32-page text PDFs, through the local stack as it is: its
   push relay (:mod:`ocrpipe.local.relay`) keeps up to ``ocr_max_in_flight`` deliveries
   open, as production Pub/Sub opens against a worker that accepts them, with
   ``OCRPIPE_OCR_MAX_IN_FLIGHT`` = 2K. This is the target figure.

For 2 and 3 the documents are uploaded and split first, with delivery paused (the relay
stopped, the pages waiting in their subscription), and then released: what is measured is
delivery -> worker -> OCR server -> output, the part that has to keep the GPU busy. Splitting
runs on other machines in production (Cloud Functions) and has its own benchmarks.

Rates are steady-state rates (:func:`bench.common.steady_rate`: the slope of pages done
against time over the middle 80% of the run), from the client's answer times for the
direct run and from the page ``.md`` objects' ``updated`` times for the pipeline. The fault
server's ``in_flight`` gauge (pages in service, at most K) is sampled every 0.1 s: its mean
over the steady window, over K, is the batch occupancy. CPU per page by service and the
load of other jobs on the machine are recorded too: on 2 shared cores the pipeline's CPU
cost per page bounds what it can feed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench import profiling
from bench.common import OPTIONS, say, steady_rate, target
from bench.stack import (
    StatsSampler,
    Upload,
    bench_stack,
    cpu_by_service,
    cpu_per_page_ms,
    document_times,
    other_load_cores,
    reset_stats,
    store_for,
    upload_all,
    wait_all,
    wait_split,
)
from ocrpipe.local.stack import LocalStack
from ocrpipe.settings import Settings, cpu_count
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.worker.ocr_client import OcrParams, image_data_url

TARGET_RATIO = 0.95
# Worker CPU per page with 64 pages in flight (K=32: 64 pushes open, 64 OCR requests), in the
# pipeline phase's accounting (issue 13, item 4). "before": this benchmark on commit 19f72ec
# (before the GCS-call and sniffio changes), three runs on this machine (PERFORMANCE.md).
TARGET_WORKER_CPU_MS = 15.0
WORKER_CPU_MS_BEFORE = {"median": 33.7, "runs": [33.7, 28.1, 33.9], "commit": "19f72ec"}
PAGES_PER_DOCUMENT = 32


def page_request() -> bytes:
    """The body the worker sends for one rendered text page (PNG, longest side 1540)."""
    import io

    import pypdfium2 as pdfium

    from ocrpipe.page_geometry import page_scale

    document = pdfium.PdfDocument(text_pdf(1, seed=5)[0])
    try:
        page = document[0]
        width, height = page.get_size()
        scale = page_scale(width, height, 1540, Settings().render_dpi)
        image = page.render(scale=scale).to_pil().convert("RGB")
        page.close()
    finally:
        document.close()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    params = OcrParams.from_settings(Settings())
    body = params.request(image_data_url(buffer.getvalue()), params.temperatures[0])
    return json.dumps(body).encode()


async def direct_load(url: str, body: bytes, *, requests: int, concurrency: int) -> list[float]:
    """Answer times (wall clock) of ``requests`` POSTs, ``concurrency`` kept in flight.

    A bare HTTP/1.1 client on asyncio streams, one keep-alive connection per slot, with the
    request bytes built once: as little client CPU as possible per request, so that the
    server's capacity is what is measured (an httpx pool of 128 connections costs ~10 ms of
    CPU per request here, see docs/PERFORMANCE.md).
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    request = head.encode() + body
    finishes: list[float] = []
    remaining = requests

    async def slot() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while remaining > 0:
                remaining -= 1
                writer.write(request)
                await writer.drain()
                header = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                status = int(header.split(" ", 2)[1])
                length = next(
                    int(line.split(":", 1)[1])
                    for line in header.split("\r\n")
                    if line.lower().startswith("content-length:")
                )
                await reader.readexactly(length)
                if status != 200:
                    raise RuntimeError(f"the OCR server answered {status}")
                finishes.append(time.time())
        finally:
            writer.close()

    await asyncio.gather(*(slot() for _ in range(concurrency)))
    return finishes


def _phase(
    stack: LocalStack,
    uploads: list[Upload],
    released: float,
    sampler: StatsSampler,
    batch: int,
    cpu: tuple[dict[str, float], dict[str, float]],
) -> dict[str, Any]:
    store = store_for(stack)
    times = [document_times(store, stack.settings, u) for u in uploads]
    finishes = sorted(when for t in times for when in t.page_done.values())
    rate = steady_rate(finishes)
    low, high = finishes[len(finishes) // 10], finishes[-1 - len(finishes) // 10]
    return {
        "pages": len(finishes),
        "steady_pages_per_s": round(rate, 2),
        "first_page_after_release_s": round(finishes[0] - released, 2),
        "release_to_last_page_s": round(finishes[-1] - released, 2),
        "server_max_in_flight": sampler.last.get("max_in_flight", 0),
        "mean_batch_occupancy": round(sampler.mean_in_flight(low, high) / batch, 3),
        "requests": sampler.last.get("total", 0),
        "cpu_ms_per_page": (per_page := cpu_per_page_ms(*cpu, len(finishes))),
        "cpu_bound_pages_per_s": round(1000 * cpu_count() / per_page["total"], 1),
        "other_jobs_cores": other_load_cores(*cpu),
    }


def _split_paused(stack: LocalStack, pdfs: list[tuple[bytes, int]]) -> list[Upload]:
    """Upload with delivery paused (the relay stopped) until all are split."""
    stack.pause_delivery()
    uploads = upload_all(store_for(stack), stack.settings, pdfs)
    wait_split(stack, uploads, timeout=600)
    return uploads


def measure(batch: int, service: float, pages: int, emulator_pages: int) -> dict[str, Any]:
    capacity = batch / service
    fault_args = ["--batch-size", str(batch), "--service-time", str(service)]
    overrides = {"ocr_max_in_flight": 2 * batch}
    per_doc = PAGES_PER_DOCUMENT
    documents = max(1, round(pages / per_doc))
    pages = documents * per_doc
    pdfs = [(text_pdf(per_doc, seed=200 + i)[0], per_doc) for i in range(documents)]
    emulator_pdfs = [(text_pdf(emulator_pages, seed=300)[0], emulator_pages)]
    body = page_request()
    with bench_stack(fault_args, overrides) as stack:
        settings = stack.settings
        ocr_url = settings.ocr_url
        store = store_for(stack)

        cpu_before = cpu_by_service(stack)
        direct_started = time.time()
        finishes = asyncio.run(direct_load(ocr_url, body, requests=pages, concurrency=2 * batch))
        direct_seconds = time.time() - direct_started
        direct_cpu = cpu_per_page_ms(cpu_before, cpu_by_service(stack), pages)
        direct_stats = httpx.get(f"{ocr_url}/stats", timeout=10).json()
        direct_rate = steady_rate(finishes)

        warm = upload_all(store, settings, [(text_pdf(2, seed=199)[0], 2)])
        wait_all(store, settings, warm, timeout=120)

        # Two deliveries in flight: what the emulator's own push allows.
        uploads = _split_paused(stack, emulator_pdfs)
        reset_stats(ocr_url)
        cpu_before = cpu_by_service(stack)
        with StatsSampler(ocr_url) as sampler:
            released = time.time()
            stack.start_relay(max_in_flight=2)
            wait_all(store, settings, uploads, timeout=900)
        cpu = (cpu_before, cpu_by_service(stack))
        emulator = _phase(stack, uploads, released, sampler, batch, cpu)

        # The stack's own delivery: up to ocr_max_in_flight = 2K deliveries in flight.
        uploads = _split_paused(stack, pdfs)
        reset_stats(ocr_url)
        cpu_before = cpu_by_service(stack)
        with StatsSampler(ocr_url) as sampler:
            released = time.time()
            stack.start_relay()
            spy = _profile_worker(stack, f"k{batch}_s{service:g}", seconds=0.6 * pages / capacity)
            wait_all(store, settings, uploads, timeout=900)
        cpu = (cpu_before, cpu_by_service(stack))
        concurrent = _phase(stack, uploads, released, sampler, batch, cpu)
        concurrent["delivery_max_in_flight"] = 2 * batch  # = OCRPIPE_OCR_MAX_IN_FLIGHT
        if spy is not None and (raw := spy.wait()) is not None:
            concurrent["worker_profile"] = {"raw": str(raw), "top": profiling.summarize(raw)}

    ratio = concurrent["steady_pages_per_s"] / direct_rate
    result = {
        "batch_size": batch,
        "service_time_s": service,
        "nominal_capacity_pages_per_s": capacity,
        "worker_ocr_max_in_flight": 2 * batch,
        "direct": {
            "pages": pages,
            "concurrency": 2 * batch,
            "steady_pages_per_s": round(direct_rate, 2),
            "seconds": round(direct_seconds, 2),
            "server_max_in_flight": direct_stats["max_in_flight"],
            "cpu_ms_per_page": {k: v for k, v in direct_cpu.items() if k in ("ocr", "bench")},
        },
        "pipeline_2_in_flight": emulator,
        "pipeline": concurrent,
        "ratio": round(ratio, 3),
        "ratio_2_in_flight": round(emulator["steady_pages_per_s"] / direct_rate, 3),
    }
    say(
        f"  K={batch:3} S={service:g}s  direct {direct_rate:6.1f} pages/s (nominal {capacity:g},"
        f" max in service {direct_stats['max_in_flight']})"
    )
    say(
        f"    pipeline, 2 in flight:    {emulator['steady_pages_per_s']:6.1f} pages/s, max in"
        f" service {emulator['server_max_in_flight']}, ratio {result['ratio_2_in_flight']:.3f}"
    )
    say(
        f"    pipeline, {2 * batch:3} in flight:  {concurrent['steady_pages_per_s']:6.1f} pages/s,"
        f" max in service {concurrent['server_max_in_flight']}, mean occupancy"
        f" {concurrent['mean_batch_occupancy']:.0%}, ratio {ratio:.3f} (target {TARGET_RATIO})"
    )
    say(
        f"    CPU ms per page by service: {_cpu_text(concurrent['cpu_ms_per_page'])}"
        f" -> at most {concurrent['cpu_bound_pages_per_s']:g} pages/s on this machine's cores;"
        f" other jobs kept {concurrent['other_jobs_cores']:g} cores busy meanwhile"
    )
    for share, name in concurrent.get("worker_profile", {}).get("top", [])[:12]:
        say(f"      worker profile (GIL held): {share:6.1%} {name}")
    return result


def _profile_worker(stack: LocalStack, key: str, seconds: float) -> profiling.Profile | None:
    if not OPTIONS.profile:
        return None
    if not profiling.available():
        say("    (--profile: py-spy is not installed, no profile)")
        return None
    pid = next(c.process.pid for c in stack.children if c.name == "worker")
    out = OPTIONS.results_dir / f"profile-saturation-{key}-worker.txt"
    return profiling.record(pid, max(2.0, seconds), out)


def _cpu_text(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:g}" for name, ms in cpu.items() if ms >= 0.5 or name == "total")


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    configs = [(8, 0.5)] if quick else [(32, 2.0), (64, 1.0)]
    figures: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for batch, service in configs:
        key = f"k{batch}_s{service:g}"
        figures[key] = result = measure(batch, service, pages=10 * batch, emulator_pages=8)
        targets[f"{key}_ratio"] = target(result["ratio"], TARGET_RATIO, unit="pipeline/direct")
        if 2 * batch == 64:
            worker_ms = result["pipeline"]["cpu_ms_per_page"]["worker"]
            targets["worker_cpu_ms_per_page_64_in_flight"] = {
                **target(worker_ms, TARGET_WORKER_CPU_MS, higher_is_better=False, unit="ms"),
                "before": WORKER_CPU_MS_BEFORE,
            }
    method = (
        "fault server --batch-size K --service-time S; direct: bare asyncio HTTP/1.1 client,"
        " 2K in flight, N = 10K requests; pipeline: N pages as 32-page text PDFs, split with"
        " delivery paused, then delivered by the stack's push relay (ocrpipe.local.relay) with"
        " OCRPIPE_OCR_MAX_IN_FLIGHT = 2K deliveries open (2 for the 2-in-flight phase);"
        " rates = least-squares slope of pages done vs time"
        " over the middle 80% of each run"
    )
    return figures, targets, method
