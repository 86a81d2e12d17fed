"""Benchmark 6: GPU time spent on repetition loops, without and with streamed cut-off.

The pages are the chaos test's (``tests/test_chaos.py``: 20 born-digital documents of 7-17
pages, ``text_pdf(pages, seed=index, lines=4)``), rendered as the splitter renders them
(``PdfRenderer``, 1540 px). The real fault server runs in its own process with the chaos
test's loop settings (``--seed 11 --plength 0.05``; its other faults do not change which
pages loop) and streams at ``R`` tokens/s per request. Each looping page climbs the
temperature ladder (``Settings.ocr_temperatures``) until an answer is not a
loop, three times over the same pages:

* **before**: non-streamed requests, as the worker sends them today: every loop runs to
  ``max_tokens`` (4096) and ends ``finish_reason == "length"``;
* **before, streamed**: the same, streamed without a detector (a check of the model: its
  wall-clock time must be tokens / R);
* **after**: :func:`ocrpipe.worker.completion_stream.stream_completion` with the default
  repetition rule: a loop is closed as soon as it is detected.

GPU time model: the fault server generates R tokens/s per request, so a reply costs
``tokens / R`` GPU-seconds. The tokens are the server's own count (``/stats``
``completion_tokens``, reset before each arm: for a stream, the tokens it sent before the
client left); the wall-clock seconds of the streamed arms are measured too. Target: GPU
time per looping page after / before <= 0.25.

Also counted: the detector's false positives (replies it would cut) on the generated page
corpus and the bad-input corpus (:func:`corpora`); the target is none.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx

from bench.common import say, target
from bench.corpus import truth
from ocrpipe.local.engine import DEFAULT_MODEL
from ocrpipe.local.faults import FaultPlan, page_loops
from ocrpipe.local.stack import fault_server_command, free_port
from ocrpipe.settings import Settings
from ocrpipe.testing import inputs
from ocrpipe.testing.pdfs import page_text, text_pdf
from ocrpipe.worker.completion_stream import stream_completion
from ocrpipe.worker.repetition import DEFAULT_RULE, RepetitionDetector

TEMPERATURE_LADDER = Settings().ocr_temperatures

CHAOS_SEED = 11  # tests/test_chaos.py's fault server
CHAOS_PLENGTH = 0.05
CHAOS_PAGES = [7 + (i * 5) % 11 for i in range(20)]  # tests/test_chaos.py's PAGES
MAX_TOKENS = 4096
TARGET_RATIO = 0.25
CHAT = "/v1/chat/completions"


def chaos_pages(documents: int) -> list[bytes]:
    """The chaos test's page images, rendered as the splitter renders them."""
    from ocrpipe.splitter.rendering.inputs import InputKind
    from ocrpipe.splitter.rendering.page_decoders import RenderedPage
    from ocrpipe.splitter.rendering.renderer import Renderer

    images: list[bytes] = []
    with TemporaryDirectory() as tmp:
        for index, pages in enumerate(CHAOS_PAGES[:documents]):
            path = Path(tmp) / f"doc-{index:02d}.pdf"
            path.write_bytes(text_pdf(pages, seed=index, lines=4)[0])
            with Renderer(path, InputKind.PDF, processes=2, longest_side=1540) as renderer:
                for page in renderer.render(range(1, pages + 1)):
                    if not isinstance(page, RenderedPage):
                        raise RuntimeError(f"a page failed to render: {page}")
                    images.append(page.data)
    return images


def body(image: bytes, temperature: float) -> dict[str, Any]:
    url = f"data:image/png;base64,{base64.b64encode(image).decode()}"
    return {
        "model": DEFAULT_MODEL,
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
        ],
        "temperature": temperature,
        "top_p": 0.9,
        "max_tokens": MAX_TOKENS,
    }


async def ladder(http: httpx.AsyncClient, image: bytes, mode: str) -> dict[str, Any]:
    """One page up the temperature ladder; mode: plain, streamed, detector."""
    attempts: list[dict[str, Any]] = []
    for temperature in TEMPERATURE_LADDER:
        started = time.monotonic()
        if mode == "plain":
            response = await http.post(CHAT, json=body(image, temperature))
            response.raise_for_status()
            reply = response.json()
            finish = reply["choices"][0]["finish_reason"]
            tokens, cut = int(reply["usage"]["completion_tokens"]), False
        else:
            rule = None if mode == "streamed" else DEFAULT_RULE
            done = await stream_completion(http, CHAT, body(image, temperature), rule=rule)
            finish, tokens, cut = done.finish_reason, done.completion_tokens, done.cut
        seconds = time.monotonic() - started
        attempts.append({"finish_reason": finish, "tokens": tokens, "cut": cut, "seconds": seconds})
        if finish not in ("length", "repetition"):
            break
    return {"attempts": attempts}


async def run_arm(url: str, images: list[bytes], mode: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        (await http.post("/stats/reset")).raise_for_status()
        pages = [await ladder(http, image, mode) for image in images]
        deadline = time.monotonic() + 10
        while (stats := (await http.get("/stats")).json())["in_flight"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the fault server is still generating")
            await asyncio.sleep(0.02)
    attempts = [a for p in pages for a in p["attempts"]]
    return {
        "pages": len(pages),
        "requests": len(attempts),
        "loops": sum(a["finish_reason"] in ("length", "repetition") for a in attempts),
        "cut": sum(a["cut"] for a in attempts),
        "answered": sum(p["attempts"][-1]["finish_reason"] == "stop" for p in pages),
        "server_tokens": stats["completion_tokens"],
        "client_tokens": sum(a["tokens"] for a in attempts),
        "wall_seconds": round(sum(a["seconds"] for a in attempts), 3),
        "abandoned_streams": stats["abandoned"],
    }


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the fault server did not start")
        time.sleep(0.05)


# ------------------------------------------------------------------ false positives


def pdf_pages(data: bytes) -> list[str]:
    """Each loadable page's text layer (pypdfium2 reproduces born-digital text exactly)."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(data)
    texts = []
    try:
        for index in range(len(document)):
            try:
                page = document[index]
            except pdfium.PdfiumError:
                continue  # a page that cannot be loaded has no text to read
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
    finally:
        document.close()
    return texts


def corpora() -> dict[str, list[str]]:
    """Page texts of the generated corpora: what a perfect OCR reply would be."""
    words = [" ".join(page_text(n)[1:]) for n in range(1, 6)]
    bad_inputs = [
        inputs.text_pages_pdf(words),
        inputs.missing_page_pdf(words, 2),
        inputs.many_pages_pdf(200),
        inputs.sized_pages_pdf([(72, 72), (14400, 200), (200, 14400)]),
        inputs.encrypted_pdf(""),
    ]
    chaos = [
        "\n".join(page_text(n, seed, lines=4))
        for seed, pages in enumerate(CHAOS_PAGES)
        for n in range(1, pages + 1)
    ]
    return {
        "generated_pages": truth(200) + chaos,
        "generated_document_as_one_reply": ["\n\n".join(truth(200))],
        "bad_inputs": [text for data in bad_inputs for text in pdf_pages(data)],
    }


def cut_by_detector(text: str) -> bool:
    detector = RepetitionDetector()
    return any(detector.feed(text[i : i + 4]) for i in range(0, len(text), 4))


def false_positives() -> dict[str, dict[str, int]]:
    found = {}
    for name, texts in corpora().items():
        found[name] = {
            "replies": len(texts),
            "longest_chars": max(len(t) for t in texts),
            "cut": sum(cut_by_detector(t) for t in texts),
        }
    return found


# ------------------------------------------------------------------------------ run


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    rate = 4000.0 if quick else 2000.0
    plan = FaultPlan(seed=CHAOS_SEED, plength=CHAOS_PLENGTH)
    images = chaos_pages(8 if quick else len(CHAOS_PAGES))
    loopy = [i for i in images if page_loops(plan, hashlib.sha256(i).hexdigest())]
    say(f"  {len(images)} chaos pages rendered, {len(loopy)} loop at temperature <= 0.2")
    if not loopy:
        raise RuntimeError("no looping page among the chaos pages: nothing to measure")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--seed", str(CHAOS_SEED), "--plength", str(CHAOS_PLENGTH)]
    args += ["--tokens-per-s", f"{rate:g}"]
    process = subprocess.Popen(fault_server_command(port, *args), stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, process)
        arms = {
            mode: asyncio.run(run_arm(url, loopy, mode))
            for mode in ("plain", "streamed", "detector")
        }
    finally:
        process.terminate()
        process.wait(timeout=10)

    def per_page(arm: dict[str, Any]) -> float:
        return float(arm["server_tokens"]) / rate / float(arm["pages"])

    before, after = per_page(arms["plain"]), per_page(arms["detector"])
    figures: dict[str, Any] = {
        "tokens_per_s_per_request": rate,
        "chaos_pages": len(images),
        "looping_pages": len(loopy),
        "arms": {
            "before": arms["plain"],
            "before_streamed": arms["streamed"],
            "after": arms["detector"],
        },
        "gpu_seconds_per_looping_page": {"before": round(before, 4), "after": round(after, 4)},
        "gpu_seconds_total": {
            "before": round(before * len(loopy), 3),
            "after": round(after * len(loopy), 3),
        },
        "tokens_per_looping_page": {
            "before": arms["plain"]["server_tokens"] / len(loopy),
            "after": arms["detector"]["server_tokens"] / len(loopy),
        },
        "wall_seconds_per_looping_page": {
            "before_streamed": round(arms["streamed"]["wall_seconds"] / len(loopy), 3),
            "after": round(arms["detector"]["wall_seconds"] / len(loopy), 3),
        },
        "false_positives": false_positives(),
    }
    say(
        f"  R = {rate:g} tokens/s per request; {len(loopy)} looping pages:"
        f" GPU-s per looping page {before:.3f} before, {after:.3f} after"
        f" (total {before * len(loopy):.2f} -> {after * len(loopy):.2f} s);"
        f" tokens {figures['tokens_per_looping_page']['before']:.0f}"
        f" -> {figures['tokens_per_looping_page']['after']:.0f}"
    )
    say(
        f"  wall clock per looping page, streamed: uncut"
        f" {figures['wall_seconds_per_looping_page']['before_streamed']:.3f} s, cut"
        f" {figures['wall_seconds_per_looping_page']['after']:.3f} s;"
        f" answered after the ladder: {arms['plain']['answered']} / {arms['detector']['answered']}"
    )
    for name, fp in figures["false_positives"].items():
        longest = fp["longest_chars"]
        say(f"  false positives, {name}: {fp['cut']} of {fp['replies']} (longest {longest} chars)")
    if arms["plain"]["answered"] != arms["detector"]["answered"]:
        raise RuntimeError("streaming changed which pages got an answer")
    targets = {
        "gpu_time_ratio_after_before": target(
            after / before, TARGET_RATIO, higher_is_better=False, unit="ratio"
        ),
    }
    method = (
        f"chaos test pages (PdfRenderer 1540 px) whose fault-server loop draw is set"
        f" (seed {CHAOS_SEED}, plength {CHAOS_PLENGTH}); each climbs the temperature ladder"
        f" {list(TEMPERATURE_LADDER)} against the real fault server streaming {rate:g}"
        f" tokens/s per request; before = non-streamed, after = stream_completion with the"
        f" default RepetitionRule; GPU-seconds = the server's generated tokens (/stats) / R"
    )
    return figures, targets, method


if __name__ == "__main__":
    print(run("--quick" in sys.argv))
