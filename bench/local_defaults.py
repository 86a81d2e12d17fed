"""The local stack as ``ocrpipe up`` starts it, defaults untouched, on this machine as it is.

What a new user does first (issue 19): a folder of 40 pages, then a dense 14-page PDF,
through the default stack: its own CPU engine (rapidocr), one page per two CPUs at once,
the relay keeping two deliveries open per engine thread. Run it while the machine is busy
(other benchmarks, test suites): the figures record the load average over the run.

Figures: whether everything finished, how long it took, pages per minute, the failed
deliveries (attempt records: a page that waited past the worker's budget leaves one) and
the load. The target is that everything finishes with no failed delivery; the baseline,
the stack as it was sized before (32 deliveries open to the same engine), is run only with
``OCRPIPE_BENCH_BASELINE=1``: it stalled for 20 minutes in the issue's report, and would
hold both cores that long.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import say, target
from bench.corpus import cached_pdf
from ocrpipe import Client, naming, records
from ocrpipe.local.stack import LocalStack, free_ports
from ocrpipe.operations.batch_status import BatchStatus
from ocrpipe.storage import GcsStore

FOLDER_PAGES = 40
DENSE_PAGES = 14
QUICK_FOLDER_PAGES = 8  # --quick: the same path, a fifth of the pages
QUICK_DENSE_PAGES = 2
TIMEOUT_S = 3600.0


def dense_pdf(pages: int, *, seed: int = 0) -> bytes:
    """A dense PDF: two columns of 8 pt text, about 2,000 words a page (an annual report's
    notes, a contract's small print)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    from ocrpipe.testing.pdfs import WORDS

    rng = random.Random(seed)
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, invariant=1)
    width, height = A4
    for _ in range(pages):
        pdf.setFont("Helvetica", 8)
        for left in (40, width / 2 + 10):
            y = height - 40
            while y > 40:
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(7, 9)))
                pdf.drawString(left, y, words)
                y -= 9.5
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def corpus(root: Path, folder_pages: int, dense_pages: int) -> tuple[Path, Path]:
    """The folder (born-digital and scanned documents of 4 pages) and the dense PDF."""
    folder = root / "folder"
    folder.mkdir()
    for index in range(folder_pages // 4):
        kind = "scanned" if index % 2 else "text"
        shutil.copy(cached_pdf(kind, 4, seed=100 + index), folder / f"{kind}-{index:02d}.pdf")
    dense = root / "dense.pdf"
    dense.write_bytes(dense_pdf(dense_pages, seed=7))
    return folder, dense


class LoadSampler:
    """The 1-minute load average, every 10 s, in a thread."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(10)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_arm(overrides: dict[str, Any], folder: Path, dense: Path) -> dict[str, Any]:
    """One stack, the folder then the dense PDF, until both finish or the timeout."""
    stack = LocalStack(ports=free_ports(), overrides=overrides)
    with stack, LoadSampler() as load:
        settings = stack.settings
        client = Client(settings)
        arm: dict[str, Any] = {
            "engine_threads": settings.engine_threads,
            "deliveries_open": settings.delivery_max_in_flight,
        }
        store = GcsStore.connect(settings.project, settings.storage_emulator_host)
        arm["folder"] = run_batch(client, store, [folder], "folder/")
        arm["dense"] = run_batch(client, store, [dense], "dense/")
        arm["load_avg_1m"] = {
            "min": round(min(load.samples), 2),
            "mean": round(sum(load.samples) / len(load.samples), 2),
            "max": round(max(load.samples), 2),
        }
    return arm


def run_batch(client: Client, store: GcsStore, paths: list[Path], prefix: str) -> dict[str, Any]:
    """Submit ``paths`` under ``prefix`` and wait until they finish (or the timeout)."""
    started = time.monotonic()
    names = client.submit(paths, prefix=prefix).names
    progress: list[tuple[float, int]] = []

    def seen(status: BatchStatus) -> None:
        progress.append((time.monotonic() - started, status.pages_done))

    result = client.wait(names, timeout=TIMEOUT_S, interval=5, on_progress=seen)
    seconds = time.monotonic() - started
    pages = result.status.pages_done + result.status.pages_failed
    figures = {
        "documents": len(names),
        "outcome": result.outcome,
        "pages_done": result.status.pages_done,
        "pages_failed": result.status.pages_failed,
        "seconds": round(seconds, 1),
        "pages_per_min": round(pages / seconds * 60, 2) if seconds else None,
        "longest_stall_s": round(_longest_stall(progress), 1),
        "failed_deliveries": _failed_deliveries(client, store, names),
    }
    say(f"   {prefix} {figures}")
    return figures


def _longest_stall(progress: list[tuple[float, int]]) -> float:
    """The longest time no page finished, from the wait's polls."""
    longest, since, last = 0.0, 0.0, -1
    for at, done in progress:
        if done != last:
            since, last = at, done
        longest = max(longest, at - since)
    return longest


def _failed_deliveries(client: Client, store: GcsStore, names: list[str]) -> int:
    """Nacked deliveries of these documents: the worker's attempt records."""
    count = 0
    settings = client.settings
    for name in names:
        status = client.status(name)
        if status.generation is None:
            continue
        doc = naming.DocumentRef(settings.input_bucket, name, status.generation)
        for info in store.list(settings.output_bucket, naming.attempts_prefix(doc)):
            attempt = records.parse_attempt(info.metadata)
            count += attempt is not None and attempt.kind == records.FAILED_DELIVERY
    return count


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    root = Path(tempfile.mkdtemp(prefix="ocrpipe-bench-defaults-"))
    try:
        folder_pages, dense_pages = (
            (QUICK_FOLDER_PAGES, QUICK_DENSE_PAGES) if quick else (FOLDER_PAGES, DENSE_PAGES)
        )
        folder, dense = corpus(root, folder_pages, dense_pages)
        figures: dict[str, Any] = {"defaults": run_arm({}, folder, dense)}
        if os.environ.get("OCRPIPE_BENCH_BASELINE") == "1":
            baseline = {"local_delivery_max_in_flight": 32}
            figures["before_sizing"] = run_arm(baseline, folder, dense)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    defaults = figures["defaults"]
    finished = all(defaults[k]["outcome"] == "ok" for k in ("folder", "dense"))
    failed = defaults["folder"]["failed_deliveries"] + defaults["dense"]["failed_deliveries"]
    targets = {
        "finished_with_defaults": target(1.0 if finished else 0.0, 1.0, unit="all done"),
        "failed_deliveries": target(failed, 0, higher_is_better=False, unit="deliveries"),
    }
    method = (
        f"LocalStack() with its defaults on free ports (the CPU engine, sized by"
        f" Settings.for_local_engine), a {folder_pages}-page folder (born-digital and scanned"
        f" 4-page PDFs of bench/corpus.py, alternating) submitted and waited for through"
        f" ocrpipe.Client, then a {dense_pages}-page dense PDF (two columns of 8 pt text);"
        " failed deliveries counted from the worker's attempt records; the machine's load"
        " average sampled every 10 s"
    )
    return figures, targets, method
