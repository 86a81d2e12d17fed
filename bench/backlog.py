"""Benchmark 9: a backlog at scale on the emulators: the reconciler over thousands of
documents, ``submit gs://`` against uploading the same files, and ``plan gs://`` against
downloading the same objects.

fake-gcs-server alone (started as the local stack starts it), three parts:

* **reconciler**: 2,000 documents of 4 pages (200 with ``--quick``) as the pipeline leaves
  them mid-batch: half finished, half with every page published and none answered. The
  baseline, measured in the same run, is ``status --prefix`` on the same prefix (the two
  listings every look at a batch costs). A run that presumes nothing lost (the scheduled
  job's everyday case: the messages are younger than the retention) should cost about the
  same; a run with every message lost (``--lost-after 0``) publishes every unanswered page
  again (to an in-memory publisher: the emulator publishes 16-25k messages/s, DESIGN.md).
* **submit gs://**: 300 one-page scanned PDFs of ~90 kB (50 quick) copied from a corpus
  bucket by GCS, against uploading the same bytes from local files with ``submit DIR``'s
  code (the baseline): the bytes that go through this machine (request and response bodies
  on the wire; a download and an upload would move each byte twice), and the rates.
* **plan gs://**: 20 scanned PDFs of 10 pages (a 1 MB image a page; 4 quick) counted through
  the ranged reader, against downloading them; bytes counted on the wire.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import say, target
from bench.status_scale import gcs_emulator
from ocrpipe import announce, naming, notifications, records
from ocrpipe.operations import backfill, plan
from ocrpipe.operations import submit as uploads
from ocrpipe.operations.batch_status import batch_status
from ocrpipe.settings import Settings
from ocrpipe.splitter.reconcile import Policy, reconcile
from ocrpipe.storage import GcsStore
from ocrpipe.testing.memory import MemoryPublisher

PAGES = 4
TARGET_STEADY_OVER_STATUS = 2.0  # an everyday run costs at most twice a status
TARGET_COPY_WIRE_SHARE = 0.05  # a copy moves (almost) none of the bytes through here
TARGET_PLAN_BYTES_SHARE = 0.1  # plan gs:// reads at most a tenth of what a download would


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    settings = Settings(
        input_bucket="bench-in", work_bucket="bench-work", output_bucket="bench-out"
    )
    figures: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    with gcs_emulator() as url:
        store = GcsStore.connect(settings.project, url)
        for bucket in ("bench-in", "bench-work", "bench-out", "bench-corpus"):
            store.client.create_bucket(bucket)
        calls = _count_calls(store)
        figures["reconciler"] = _reconciler(store, settings, calls, 200 if quick else 2000)
        figures["submit_gs"] = _backfill(store, settings, calls, 50 if quick else 300)
        figures["plan_gs"] = _plan(store, settings, calls, 4 if quick else 20)
    rec, sub, pl = figures["reconciler"], figures["submit_gs"], figures["plan_gs"]
    targets["reconcile_everyday_over_status"] = target(
        rec["everyday_seconds"] / rec["status_seconds"], TARGET_STEADY_OVER_STATUS,
        higher_is_better=False, unit="x",
    )  # fmt: skip
    targets["copy_wire_bytes_share"] = target(
        sub["copy_wire_bytes"] / sub["bytes"], TARGET_COPY_WIRE_SHARE,
        higher_is_better=False, unit="x",
    )  # fmt: skip
    targets["plan_bytes_share"] = target(
        pl["bytes_read"] / pl["bytes_total"], TARGET_PLAN_BYTES_SHARE,
        higher_is_better=False, unit="x",
    )  # fmt: skip
    method = (
        "fake-gcs-server alone (memory backend). Reconciler: documents written as the pipeline"
        " leaves them mid-batch (half done, half published with no page answered); baseline"
        " batch_status on the same prefix, same run; everyday = default policy (nothing old"
        " enough to be lost), all lost = --lost-after 0, publishing to an in-memory publisher;"
        " list and read calls counted on the wire. submit gs://: backfill.copy against"
        " submit.submit of the same files, request and response bodies counted on the wire."
        " plan gs://: plan.bucket_files against downloading"
        " every object; bytes are response bodies counted on the wire"
    )
    return figures, targets, method


class _Calls:
    def __init__(self) -> None:
        self.lists = 0
        self.gets = 0
        self.bytes = 0  # bodies of GETs other than listings (object reads)
        self.wire = 0  # every request and response body

    def reset(self) -> None:
        self.lists = self.gets = self.bytes = self.wire = 0


def _count_calls(store: GcsStore) -> _Calls:
    calls = _Calls()

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        path = urlsplit(response.request.url).path
        body = response.request.body
        calls.wire += len(response.content) + (len(body) if isinstance(body, bytes) else 0)
        if response.request.method == "GET":
            if path.endswith("/o"):
                calls.lists += 1
            else:
                calls.gets += 1
                calls.bytes += len(response.content)

    store.client._http.hooks["response"].append(hook)
    return calls


def _reconciler(store: GcsStore, settings: Settings, calls: _Calls, documents: int) -> Any:
    def one(index: int) -> None:
        name = f"bench/backlog/{index // 100:02d}/doc {index:05d}.pdf"
        generation = store.upload(settings.input_bucket, name, io.BytesIO(b"%PDF-1.7"), "")
        doc = naming.DocumentRef(settings.input_bucket, name, generation)
        out, work = settings.output_bucket, settings.work_bucket
        store.create(out, naming.manifest_name(doc), records.manifest_record(doc, PAGES), "")
        for page in range(1, PAGES + 1):
            store.create(work, naming.page_image_name(doc.doc_id, page, "png"), b"png", "")
        store.create(work, naming.published_marker_name(doc.doc_id, 1, PAGES), b"", "")
        if index % 2 == 0:
            for page in range(1, PAGES + 1):
                store.create(out, naming.page_markdown_name(doc, page), b"text", "")
            store.create(out, naming.document_markdown_name(doc), b"text", "")
            note = notifications.assembled(doc, out, page_count=PAGES, failed_reasons={})
            announce.advance_latest(doc, note, None, store, out)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(documents)))
    say(f"  reconciler: wrote {documents} documents in {time.perf_counter() - started:.1f} s")

    def timed(action: Callable[[], Any]) -> tuple[float, int, int, Any]:
        calls.reset()
        started = time.perf_counter()
        result = action()
        return time.perf_counter() - started, calls.lists, calls.gets, result

    status = [timed(lambda: batch_status(store, settings, "bench/backlog/")) for _ in range(3)]
    everyday = [
        timed(lambda: reconcile(store, MemoryPublisher(), settings, prefix="bench/backlog/"))
        for _ in range(3)
    ]
    publisher = MemoryPublisher()
    policy = Policy.everything_lost()
    lost_s, lost_lists, lost_gets, report = timed(
        lambda: reconcile(store, publisher, settings, prefix="bench/backlog/", policy=policy)
    )
    again_s, _, again_gets, again = timed(
        lambda: reconcile(
            store, MemoryPublisher(), settings, prefix="bench/backlog/", policy=Policy(3600, 3600)
        )  # fmt: skip
    )
    status_s = statistics.median(t for t, *_ in status)
    everyday_s = statistics.median(t for t, *_ in everyday)
    figures = {
        "documents": documents,
        "pages": documents * PAGES,
        "status_seconds": round(status_s, 3),
        "status_list_calls": status[-1][1],
        "everyday_seconds": round(everyday_s, 3),
        "everyday_list_calls": everyday[-1][1],
        "everyday_reads": everyday[-1][2],
        "everyday_repairs": len(everyday[-1][3].repairs),
        "all_lost_seconds": round(lost_s, 2),
        "all_lost_list_calls": lost_lists,
        "all_lost_reads": lost_gets,
        "all_lost_pages_published": report.requeued_pages,
        "all_lost_pages_per_s": round(report.requeued_pages / lost_s, 1),
        "next_run_seconds": round(again_s, 2),
        "next_run_pages_published": again.requeued_pages,
    }
    say(
        f"  status {status_s:.2f} s; everyday reconcile {everyday_s:.2f} s"
        f" ({figures['everyday_reads']} reads); all lost: {report.requeued_pages} pages"
        f" published again in {lost_s:.1f} s ({figures['all_lost_pages_per_s']} pages/s);"
        f" the next run {again_s:.1f} s, {again.requeued_pages} published"
    )
    return figures


def _backfill(store: GcsStore, settings: Settings, calls: _Calls, count: int) -> Any:
    pdfs = [_scanned_pdf(1, seed=i, side=300) for i in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        for index, data in enumerate(pdfs):
            path = root / f"{index // 50:02d}" / f"{index:04d}.pdf"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            store.upload("bench-corpus", f"scans/{path.relative_to(root).as_posix()}",
                         io.BytesIO(data), "application/pdf")  # fmt: skip
        calls.reset()
        started = time.perf_counter()
        uploaded = uploads.submit(
            store, settings.input_bucket, uploads.collect([root], "up/").files
        )
        upload_s, upload_wire = time.perf_counter() - started, calls.wire
    calls.reset()
    started = time.perf_counter()
    files = backfill.find(store, ["gs://bench-corpus/scans/"], "copy/")
    copied = backfill.copy(store, settings.input_bucket, files)
    copy_s, copy_wire = time.perf_counter() - started, calls.wire
    started = time.perf_counter()
    again = backfill.copy(store, settings.input_bucket,
                          backfill.find(store, ["gs://bench-corpus/scans/"], "copy/"))  # fmt: skip
    again_s = time.perf_counter() - started
    figures = {
        "objects": count,
        "bytes": sum(len(p) for p in pdfs),
        "upload_wire_bytes": upload_wire,
        "copy_wire_bytes": copy_wire,
        "upload_seconds": round(upload_s, 2),
        "uploads_per_s": round(len(uploaded.uploaded) / upload_s, 1),
        "copy_seconds": round(copy_s, 2),
        "copies_per_s": round(len(copied.copied) / copy_s, 1),
        "second_run_seconds": round(again_s, 2),
        "second_run_copied": len(again.copied),
    }
    say(
        f"  submit gs://: {count} objects copied in {copy_s:.1f} s"
        f" ({figures['copies_per_s']}/s, {copy_wire / 1e3:.0f} kB on the wire) against"
        f" uploaded in {upload_s:.1f} s ({figures['uploads_per_s']}/s,"
        f" {upload_wire / 1e3:.0f} kB); again: {len(again.copied)} copied in {again_s:.2f} s"
    )
    return figures


def _plan(store: GcsStore, settings: Settings, calls: _Calls, count: int) -> Any:
    pages = 10
    for index in range(count):
        data = _scanned_pdf(pages, seed=index)
        store.upload("bench-corpus", f"big/{index:03d}.pdf", io.BytesIO(data), "application/pdf")
    total = sum(info.size for info in store.list("bench-corpus", "big/"))
    calls.reset()
    started = time.perf_counter()
    counted = list(plan.bucket_files(store, "gs://bench-corpus/big/", settings))
    plan_s = time.perf_counter() - started
    read, requests = calls.bytes, calls.gets
    calls.reset()
    started = time.perf_counter()
    for info in store.list("bench-corpus", "big/"):
        store.read("bench-corpus", info.name)
    download_s = time.perf_counter() - started
    figures = {
        "objects": count,
        "pages": sum(f.pages for f in counted),
        "bytes_total": total,
        "bytes_read": read,
        "read_requests": requests,
        "plan_seconds": round(plan_s, 2),
        "download_seconds": round(download_s, 2),
        "download_bytes": calls.bytes,
    }
    say(
        f"  plan gs://: {figures['pages']} pages of {count} objects ({total / 1e6:.1f} MB)"
        f" counted in {plan_s:.2f} s reading {read / 1e6:.2f} MB in {requests} requests;"
        f" downloading them: {download_s:.2f} s"
    )
    return figures


def _scanned_pdf(pages: int, seed: int, side: int = 1000) -> bytes:
    """A PDF whose pages are each one image of noise, ``side`` px square (1000: ~1 MB, what
    a scan weighs; 300: ~90 kB)."""
    import random

    from PIL import Image
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    rng = random.Random(seed)
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, invariant=1)
    for _ in range(pages):
        noise = Image.frombytes("L", (side, side), rng.randbytes(side * side))
        pdf.drawImage(ImageReader(noise), 0, 0, *A4)
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()
