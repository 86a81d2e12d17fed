"""The local stack with the fault server as its OCR server, and how to read a run back.

Everything is timed from what the pipeline itself wrote: object ``updated`` times in
fake-gcs-server and the ``time`` field of the services' JSON log lines (one clock: this
machine's wall clock).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import cpu_seconds, machine_busy_seconds
from ocrpipe import naming
from ocrpipe.local.stack import LocalStack, fault_stack
from ocrpipe.naming import DocumentRef
from ocrpipe.operations.status import document_status
from ocrpipe.settings import Settings
from ocrpipe.storage import GcsStore


@contextlib.contextmanager
def bench_stack(fault_args: list[str], overrides: Mapping[str, Any]) -> Iterator[LocalStack]:
    """The whole local stack, running, with ``python -m ocrpipe.local.faults <fault_args>``
    as OCR and ``overrides`` as settings.

    The services' logs are removed afterwards unless the block raised."""
    log_dir = Path(tempfile.mkdtemp(prefix="ocrpipe-bench-"))
    with fault_stack(*fault_args, overrides=overrides, log_dir=log_dir) as stack:
        try:
            yield stack
        except BaseException:
            print(f"bench: the stack's logs are kept in {log_dir}", file=sys.stderr)
            raise
    shutil.rmtree(log_dir, ignore_errors=True)


def cpu_by_service(stack: LocalStack) -> dict[str, float]:
    """CPU seconds used so far by each service of the stack, and by this process ("bench":
    the load generator and the samplers; the push relay is a child, "relay")."""
    used = {child.name: cpu_seconds(child.process.pid) for child in stack.children}
    times = os.times()
    used["bench"] = times.user + times.system
    used["_machine"] = machine_busy_seconds()
    used["_wall"] = time.monotonic()
    return used


def cpu_per_page_ms(
    before: Mapping[str, float], after: Mapping[str, float], pages: int
) -> dict[str, float]:
    """CPU milliseconds per page, by service, between two :func:`cpu_by_service` readings."""
    spent = {n: after[n] - before.get(n, 0.0) for n in after if not n.startswith("_")}
    spent["total"] = sum(spent.values())
    return {name: round(1000 * seconds / pages, 1) for name, seconds in spent.items()}


def other_load_cores(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """Cores kept busy, on average, by processes outside the stack and this benchmark (the
    other jobs on a shared machine) between two :func:`cpu_by_service` readings."""
    ours = sum(after[n] - before.get(n, 0.0) for n in after if not n.startswith("_"))
    machine = after["_machine"] - before["_machine"]
    return round(max(0.0, machine - ours) / (after["_wall"] - before["_wall"]), 2)


def store_for(stack: LocalStack) -> GcsStore:
    return GcsStore.connect(stack.project, stack.settings.storage_emulator_host)


@dataclass
class Upload:
    name: str
    generation: int
    pages: int
    started: float  # wall clock, just before the upload request

    def doc(self, settings: Settings) -> DocumentRef:
        return DocumentRef(settings.input_bucket, self.name, self.generation)


def upload_all(store: GcsStore, settings: Settings, pdfs: list[tuple[bytes, int]]) -> list[Upload]:
    """Upload the PDFs (bytes, pages) to the input bucket, 8 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    run = uuid.uuid4().hex[:8]

    def one(item: tuple[int, tuple[bytes, int]]) -> Upload:
        index, (data, pages) = item
        name = f"bench/{run}/doc-{index:03d}.pdf"
        blob = store.client.bucket(settings.input_bucket).blob(name)
        started = time.time()
        blob.upload_from_string(data, content_type="application/pdf")
        return Upload(name, int(blob.generation), pages, started)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, enumerate(pdfs)))


def wait_all(store: GcsStore, settings: Settings, uploads: list[Upload], timeout: float) -> None:
    """Until every upload's ``document.md`` exists (then check that it is "done").

    Cheap on purpose, since it runs during measurements: one ``stat`` of the first
    unfinished document's ``document.md`` every 0.2 s.
    """
    deadline = time.monotonic() + timeout
    for upload in uploads:
        doc = upload.doc(settings)
        final = naming.document_markdown_name(doc)
        rejected = naming.document_error_name(doc)
        while store.stat(settings.output_bucket, final) is None:
            if store.stat(settings.output_bucket, rejected) is not None:
                raise RuntimeError(f"{upload.name} was rejected")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{upload.name} unfinished after {timeout:.0f} s")
            time.sleep(0.2)
    for upload in uploads:
        status = document_status(store, settings, upload.name)
        if status.state != "done":
            raise RuntimeError(f"{upload.name} finished {status.state}: {status}")


@dataclass
class DocumentTimes:
    upload: Upload
    page_done: dict[int, float] = field(default_factory=dict)  # page -> .md updated
    document_done: float = 0.0


def document_times(store: GcsStore, settings: Settings, upload: Upload) -> DocumentTimes:
    doc = upload.doc(settings)
    times = DocumentTimes(upload)
    prefix = naming.pages_prefix(doc)
    for info in store.list(settings.output_bucket, prefix):
        listing = naming.parse_page_listing([info.name], prefix)
        for page in listing.done:
            times.page_done[page] = info.updated
    final = store.stat(settings.output_bucket, naming.document_markdown_name(doc))
    times.document_done = final.updated if final else 0.0
    return times


def read_log(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a service (other lines are skipped)."""
    entries: list[dict[str, Any]] = []
    if not path.exists():
        return entries
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                entries.append(json.loads(line))
    return entries


def log_time(entry: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(str(entry["time"])).timestamp()


def doc_label(entry: Mapping[str, Any]) -> str:
    return str(entry.get("logging.googleapis.com/labels", {}).get("doc_id", ""))


@dataclass
class StatsSampler:
    """Polls the fault server's ``/stats`` in a thread: the batch occupancy over time."""

    url: str
    interval: float = 0.1
    samples: list[tuple[float, int]] = field(default_factory=list)  # (wall time, in_flight)
    last: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> StatsSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.last = httpx.get(f"{self.url}/stats", timeout=10).json()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    stats = client.get(f"{self.url}/stats").json()
                    self.samples.append((time.time(), int(stats["in_flight"])))
                self._stop.wait(self.interval)

    def mean_in_flight(self, start: float, end: float) -> float:
        inside = [n for t, n in self.samples if start <= t <= end]
        return sum(inside) / len(inside) if inside else 0.0


def reset_stats(url: str) -> None:
    httpx.post(f"{url}/stats/reset", timeout=10).raise_for_status()


def split_times(stack: LocalStack) -> dict[str, tuple[float, float]]:
    """doc_id -> (time the splitter logged "split N pages", its duration_ms)."""
    assert stack.log_dir is not None
    return {
        doc_label(e): (log_time(e), float(e["duration_ms"]))
        for e in read_log(stack.log_dir / "splitter.log")
        if str(e.get("message", "")).startswith("split ") and "duration_ms" in e
    }


def wait_split(stack: LocalStack, uploads: list[Upload], timeout: float) -> None:
    """Until the splitter has published the pages of every upload."""
    wanted = {u.doc(stack.settings).doc_id for u in uploads}
    deadline = time.monotonic() + timeout
    while not wanted <= split_times(stack).keys():
        if time.monotonic() > deadline:
            raise TimeoutError(f"documents not split after {timeout:.0f} s")
        time.sleep(0.3)
