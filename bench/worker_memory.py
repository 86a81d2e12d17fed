"""Benchmark 6: the worker's peak memory with its whole in-flight limit of large pages.

The real worker app (``ocr_worker.app.create_app``) runs under uvicorn in its own process,
with ``OCRPIPE_OCR_MAX_IN_FLIGHT`` = N (32, the default) and a fault server as OCR that
holds every request for a few seconds (``--batch-size N --service-time S``: all N at once),
so all N requests are open at the same time. N pushes arrive together, each naming the
largest page the splitter can produce: 1540 x 6160 px, encoded as the splitter encodes it
(:func:`ocrpipe.splitter.rendering.page_decoders.encode`, lossless: PNG at level 1), in two
flavours:

* ``grey``: a noisy grey page (Gaussian noise, sigma 40), which the splitter sends as a
  one-channel PNG (~9 MiB);
* ``rgb``: uniform colour noise, which nothing compresses (~27 MiB): the worst case, a
  born-digital page covered by a photograph.

The store copies the image on every read, as a GCS download does. Each in-flight page then
holds its bytes, the base64 data URL and the JSON request body (~3.7 x the PNG). The
worker's peak RSS (VmHWM, the kernel's high-water mark) is compared with the memory
terraform gives the worker (``worker_resources.memory`` in terraform/variables.tf).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, TreeMemory, say, target
from ocrpipe.local.readiness import exited, http_answers, wait_until_ready
from ocrpipe.local.stack import fault_server_command, free_port

IN_FLIGHT = 32  # OCRPIPE_OCR_MAX_IN_FLIGHT's default, and terraform's worker_concurrency
PAGE_SIZE = (1540, 6160)  # the largest page image the splitter makes (4 x 1540 long)
HOLD_S = 30.0  # how long the stand-in OCR server holds each request: until all N are in
HEADROOM = 0.8  # the peak must stay under this share of the worker's memory limit
VARIABLES_TF = REPO / "terraform" / "variables.tf"


def page_png(flavour: str) -> bytes:
    from PIL import Image

    from ocrpipe.splitter.rendering.page_decoders import encode

    if flavour == "rgb":
        width, height = PAGE_SIZE
        image = Image.frombytes("RGB", PAGE_SIZE, os.urandom(width * height * 3))
    else:
        image = Image.effect_noise(PAGE_SIZE, 40).convert("L")
    return encode(1, image, lossy=False).data


def terraform_worker_memory_mib(path: Path = VARIABLES_TF) -> int:
    """The default of ``worker_resources.memory`` ("4Gi", "1024Mi") in MiB."""
    text = path.read_text(encoding="utf-8")
    block = text[text.index('variable "worker_resources"') :]
    match = re.search(r'memory\s*=\s*optional\(string,\s*"(\d+)(Gi|Mi)"\)', block)
    assert match, "worker_resources.memory default not found in terraform/variables.tf"
    return int(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


# --- the worker process ---------------------------------------------------------------------


def serve(port: int, ocr_url: str, in_flight: int, flavour: str) -> None:
    """Serve the worker app on ``port`` with ``in_flight`` pages stored (child process)."""
    import uvicorn

    from ocr_worker.app import create_app
    from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
    from ocrpipe.testing.pushes import push_envelope, ready_document, worker_settings

    class CopyingStore(MemoryStore):
        """A GCS download returns fresh bytes for every read: so does this store."""

        def read(self, bucket: str, name: str) -> bytes:
            return bytes(bytearray(super().read(bucket, name)))

    store = CopyingStore()
    png = page_png(flavour)
    settings = worker_settings(
        ocr_url=ocr_url, ocr_max_in_flight=in_flight, ocr_budget_s=120, log_level="WARNING"
    )
    pages = in_flight + 1  # one more for the warm-up
    _, messages = ready_document(
        store, pages, name="big.pdf", settings=settings, image=lambda _: png
    )
    pushes = [push_envelope(message, str(message.page)) for message in messages]
    sys.stdout.write(json.dumps({"png_bytes": len(png), "pushes": pushes}) + "\n")
    sys.stdout.flush()
    uvicorn.run(
        create_app(settings, store=store, publisher=MemoryPublisher()),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )


# --- the driver -----------------------------------------------------------------------------


def wait_up(url: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    healthy = http_answers(f"{url}/health", lambda status: status == 200)
    wait_until_ready(healthy, what=f"{url} did not come up", timeout=timeout, died=exited(process))


async def push_all(url: str, bodies: list[dict[str, Any]]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        answers = await asyncio.gather(*(client.post("/", json=b) for b in bodies))
    return [a.status_code for a in answers]


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(flavour: str, in_flight: int, hold_s: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ocr_port, worker_port = free_port(), free_port()
    ocr = subprocess.Popen(
        fault_server_command(
            ocr_port, "--batch-size", str(in_flight + 1), "--service-time", str(hold_s)
        ),
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.worker_memory", "--serve", str(worker_port),
         "--ocr-url", f"http://127.0.0.1:{ocr_port}", "--in-flight", str(in_flight),
         "--flavour", flavour],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        prepared = json.loads(worker.stdout.readline())  # the stored pages, as pushes
        pushes, png_bytes = prepared["pushes"], prepared["png_bytes"]
        ocr_url, worker_url = f"http://127.0.0.1:{ocr_port}", f"http://127.0.0.1:{worker_port}"
        wait_up(ocr_url, ocr)
        wait_up(worker_url, worker)
        # One page first: imports, pools and buffers that any busy worker has.
        warm = asyncio.run(push_all(worker_url, pushes[:1]))
        baseline = vm_rss_mib(worker.pid)
        bodies = pushes[1:]
        started = time.monotonic()
        with TreeMemory(worker.pid, interval=0.05) as memory:
            statuses = asyncio.run(push_all(worker_url, bodies))
        seconds = time.monotonic() - started
        stats = httpx.get(f"{ocr_url}/stats").json()
    finally:
        for process in (worker, ocr):
            process.send_signal(signal.SIGTERM)
        for process in (worker, ocr):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert warm == [204] and statuses == [204] * in_flight, (warm, statuses)
    peak = memory.root_hwm_mb
    return {
        "png_mib": round(int(png_bytes) / 2**20, 2),
        "in_flight": in_flight,
        "ocr_max_in_flight_seen": stats.get("max_in_flight"),
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_mib": peak,
        "per_page_mib": round((peak - baseline) / in_flight, 1),
        "seconds": round(seconds, 1),
    }


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    limit = terraform_worker_memory_mib()
    # --quick (CI's smoke run): 8 grey pages, a short hold; the figures are then a check that
    # the benchmark runs, not the worker's peak at its in-flight limit.
    flavours = ["grey"] if quick else ["grey", "rgb"]
    in_flight, hold_s = (8, 10.0) if quick else (IN_FLIGHT, HOLD_S)
    figures: dict[str, Any] = {"worker_memory_limit_mib": limit, "headroom": HEADROOM}
    targets: dict[str, Any] = {}
    for flavour in flavours:
        result = measure(flavour, in_flight, hold_s)
        result["ratio_to_limit"] = round(result["peak_rss_mib"] / limit, 3)
        figures[flavour] = result
        say(
            f"   {flavour}: {in_flight} x {result['png_mib']} MiB PNG in flight:"
            f" peak RSS {result['peak_rss_mib']:.0f} MiB (baseline"
            f" {result['baseline_rss_mib']:.0f}, {result['per_page_mib']} MiB per page),"
            f" {result['ratio_to_limit']:.0%} of terraform's {limit} MiB"
        )
        targets[f"{flavour}_peak_rss_mib"] = target(
            result["peak_rss_mib"], round(limit * HEADROOM), higher_is_better=False, unit="MiB"
        )
    method = (
        f"real worker app under uvicorn, OCRPIPE_OCR_MAX_IN_FLIGHT={in_flight}, fault server"
        f" holding each request {hold_s:g} s (all at once), {in_flight} pushes at once of a"
        f" {PAGE_SIZE[0]} x {PAGE_SIZE[1]} noisy page encoded by"
        " ocrpipe.splitter.rendering.page_decoders.encode;"
        " peak = worker VmHWM; target = worker_resources.memory default in"
        f" terraform/variables.tf x {HEADROOM}"
    )
    return figures, targets, method


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, required=True, help="port (internal use)")
    parser.add_argument("--ocr-url", required=True)
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    parser.add_argument("--flavour", choices=["grey", "rgb"], default="grey")
    args = parser.parse_args(argv)
    serve(args.serve, args.ocr_url, args.in_flight, args.flavour)


if __name__ == "__main__":
    main()
