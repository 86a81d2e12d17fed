"""Overhead of the authorizing GCS proxy: 200 KB create-only uploads from 8 threads, straight
to fake-gcs-server and through ocrpipe.local.iam.gcs_proxy (as the worker, onto output).

    .venv/bin/python -m bench.gcs_proxy [--uploads 800] [--threads 8] [--size-kb 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ocrpipe.local.readiness import exited, http_answers, wait_until_ready
from ocrpipe.local.stack import fake_gcs_server_binary, free_port
from ocrpipe.storage import GcsStore

PROJECT = "bench-proxy"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rate(store: GcsStore, bucket: str, uploads: int, threads: int, data: bytes) -> float:
    prefix = uuid.uuid4().hex[:8]

    def one(i: int) -> None:
        assert store.create(bucket, f"{prefix}/doc/@1/pages/{i:05d}.md", data, "text/markdown")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(threads * 4)))  # warm the connection pools
        start = time.perf_counter()
        list(pool.map(one, range(threads * 4, threads * 4 + uploads)))
        return uploads / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=800)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--size-kb", type=int, default=200)
    args = parser.parse_args()
    data = os.urandom(args.size_kb * 1024)
    gcs_port, proxy_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{gcs_port}"
    bucket = "bench-output"
    tmp = Path(tempfile.mkdtemp(prefix="bench-gcs-proxy-"))
    gcs = subprocess.Popen(
        [str(fake_gcs_server_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port",
         str(gcs_port), "-backend", "memory", "-external-url", upstream, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {**os.environ, "OCRPIPE_PROJECT": PROJECT, "OCRPIPE_OUTPUT_BUCKET": bucket}
    proxy = subprocess.Popen(
        [sys.executable, "-m", "ocrpipe.local.iam.gcs_proxy", "--upstream", upstream,
         "--listen", f"worker={proxy_port}", "--usage-file", str(tmp / "usage.jsonl")],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for url, process in (
            (f"{upstream}/storage/v1/b", gcs),
            (f"http://127.0.0.1:{proxy_port}/", proxy),
        ):
            wait_until_ready(
                http_answers(url, lambda _: True),
                what=f"{url} did not answer",
                timeout=30,
                died=exited(process),
            )
        direct = GcsStore.connect(PROJECT, upstream)
        direct.client.create_bucket(bucket)
        proxied = GcsStore.connect(PROJECT, f"http://127.0.0.1:{proxy_port}")
        direct_rate = _rate(direct, bucket, args.uploads, args.threads, data)
        cpu_before = _cpu_seconds(proxy.pid)
        proxy_rate = _rate(proxied, bucket, args.uploads, args.threads, data)
        cpu_ms = (_cpu_seconds(proxy.pid) - cpu_before) * 1000 / (args.uploads + args.threads * 4)
        print(
            f"{args.size_kb} KB create-only uploads, {args.threads} threads, {args.uploads} each:"
            f" direct {direct_rate:.0f}/s, through the proxy {proxy_rate:.0f}/s"
            f" ({proxy_rate / direct_rate:.0%} of direct); proxy CPU {cpu_ms:.2f} ms per upload"
            f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
        )
    finally:
        proxy.terminate()
        gcs.terminate()
        proxy.wait(10)
        gcs.wait(10)


if __name__ == "__main__":
    main()
