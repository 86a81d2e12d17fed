"""Benchmark 6: the status of a batch at scale, time and what it costs in storage calls.

fake-gcs-server alone (started like the local stack starts it), filled directly with 2,000
documents (200 with ``--quick``) as the pipeline would have left them: an input each, a
manifest, 2 pages, ``document.md``; a mix of done (80%), running (10%), partial (5%),
rejected (3%) and not yet split (2%). Then :func:`ocrpipe.operations.batch_status.batch_status` on
the prefix, three times; the figures are the median time, the list requests seen on the wire
(a requests hook on the client), the objects those listings returned and the objects read.
GCS lists 1000 objects per call, so the expected list calls are
``ceil(inputs / 1000) + ceil(output objects / 1000)``.
"""

from __future__ import annotations

import io
import math
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import urlsplit

from bench.common import say, target
from ocrpipe import naming, records
from ocrpipe.local.readiness import exited, tcp_accepts, wait_until_ready
from ocrpipe.local.stack import fake_gcs_server_binary
from ocrpipe.operations.batch_status import batch_status
from ocrpipe.settings import Settings
from ocrpipe.storage import GcsStore, ObjectInfo
from ocrpipe.testing.stores import ForwardingStore

TARGET_SECONDS_2000 = 5.0  # "a prefix with 10,000 documents answers in seconds"
PAGES = 2
MIX = ["done"] * 80 + ["running"] * 10 + ["partial"] * 5 + ["rejected"] * 3 + ["splitting"] * 2


@contextmanager
def gcs_emulator() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [str(fake_gcs_server_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port",
             str(port), "-backend", "memory", "-external-url", url, "-log-level", "warn"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until_ready(
                tcp_accepts(port),
                what="fake-gcs-server did not start",
                timeout=30,
                died=exited(process),
            )
            yield url
        finally:
            process.terminate()
            process.wait(10)


class Counting(ForwardingStore):
    """An ObjectStore around GcsStore counting objects listed and objects read."""

    def __init__(self, inner: GcsStore) -> None:
        super().__init__(inner)
        self.listed = 0
        self.reads = 0
        self.lists: list[tuple[str, int]] = []

    def list(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        found = self.inner.list(bucket, prefix)
        self.listed += len(found)
        self.lists.append((bucket, len(found)))
        return found

    def read(self, bucket: str, name: str) -> bytes:
        self.reads += 1
        return self.inner.read(bucket, name)


def fill(store: GcsStore, settings: Settings, documents: int) -> dict[str, int]:
    """Write the documents; returns how many objects went to each bucket."""

    def one(index: int) -> int:
        state = MIX[index % len(MIX)]
        name = f"bench/batch/folder {index // 100:02d}/doc {index:05d}.pdf"
        generation = store.upload(settings.input_bucket, name, _bytes(b"%PDF-1.7"), "")
        doc = naming.DocumentRef(settings.input_bucket, name, generation)
        out = settings.output_bucket
        writes = []
        if state == "rejected":
            writes.append((naming.document_error_name(doc), records.error_record(doc, "x", "y")))
        elif state != "splitting":
            writes.append((naming.manifest_name(doc), records.manifest_record(doc, PAGES)))
            done = {"done": PAGES, "running": 1, "partial": PAGES - 1}[state]
            writes += [(naming.page_markdown_name(doc, n), b"text") for n in range(1, done + 1)]
            if state == "partial":
                error = records.error_record(doc, "ocr_repetition_loop", "loop", page=PAGES)
                writes.append((naming.page_error_name(doc, PAGES), error))
            if state != "running":
                writes.append((naming.document_markdown_name(doc), b"text"))
        for object_name, data in writes:
            store.create(out, object_name, data, "application/json")
        return len(writes)

    with ThreadPoolExecutor(max_workers=16) as pool:
        outputs = sum(pool.map(one, range(documents)))
    return {"inputs": documents, "outputs": outputs}


def _bytes(data: bytes) -> IO[bytes]:
    return io.BytesIO(data)


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    documents = 200 if quick else 2000
    settings = Settings(
        input_bucket="bench-in", work_bucket="bench-work", output_bucket="bench-out"
    )
    with gcs_emulator() as url:
        store = GcsStore.connect(settings.project, url)
        for bucket in (settings.input_bucket, settings.output_bucket):
            store.client.create_bucket(bucket)
        started = time.perf_counter()
        written = fill(store, settings, documents)
        fill_s = time.perf_counter() - started
        say(f"  wrote {documents} documents ({sum(written.values())} objects) in {fill_s:.1f} s")

        list_requests: list[str] = []

        def hook(response: Any, *args: Any, **kwargs: Any) -> None:
            path = urlsplit(response.request.url).path
            if response.request.method == "GET" and path.endswith("/o"):
                list_requests.append(path)

        store.client._http.hooks["response"].append(hook)
        times = []
        for _ in range(3):
            counting = Counting(store)
            list_requests.clear()
            started = time.perf_counter()
            status = batch_status(counting, settings, "bench/batch/")
            times.append(time.perf_counter() - started)
        if len(status.documents) != documents:
            raise RuntimeError(f"status saw {len(status.documents)} of {documents} documents")

    seconds = statistics.median(times)
    expected_lists = math.ceil(written["inputs"] / 1000) + math.ceil(written["outputs"] / 1000)
    figures = {
        "documents": documents,
        "objects": sum(written.values()),
        "fill_seconds": round(fill_s, 1),
        "status_seconds": round(seconds, 3),
        "status_seconds_runs": [round(t, 3) for t in times],
        "list_calls": len(list_requests),
        "list_calls_expected": expected_lists,
        "objects_listed": counting.listed,
        "objects_read": counting.reads,
        "states": dict(status.states),
    }
    say(
        f"  status of {documents} documents: {seconds:.2f} s (median of 3), {len(list_requests)}"
        f" list calls (expected {expected_lists}), {counting.listed} objects listed,"
        f" {counting.reads} read"
    )
    targets = {
        "status_seconds": target(seconds, TARGET_SECONDS_2000, higher_is_better=False, unit="s"),
        "list_calls_over_expected": target(
            len(list_requests) / expected_lists, 1.0, higher_is_better=False, unit="x"
        ),
    }
    method = (
        "fake-gcs-server alone (memory backend), filled directly with documents as the pipeline"
        " leaves them (80% done, 10% running, 5% partial, 3% rejected, 2% not split; 2 pages);"
        " batch_status on the prefix 3 times, median time; list calls counted on the wire"
        " (GET .../o requests, 1000 objects per page), objects read counted in a wrapper store"
    )
    return figures, targets, method
