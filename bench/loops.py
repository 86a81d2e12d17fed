"""Benchmark 6: repetition loops and pages that really repeat themselves.

GPU time spent on repetition loops, without and with the streamed cut-off, and whether a
page that repeats itself faithfully (a sign-in sheet, a sheet of labels, a table of zeros)
still comes out whole. Three corpora, against the real fault server in its own process,
streaming at ``R`` tokens/s per request (GPU time model: a reply costs ``tokens / R``
GPU-seconds; the tokens are the server's own count, ``/stats`` ``completion_tokens``, reset
before each arm: for a stream, the tokens it sent before the client left).

* **Chaos pages** (the target): the chaos test's pages (``tests/test_chaos.py``: 20
  born-digital documents of 7-17 pages, ``text_pdf(pages, seed=index, lines=4)``), rendered
  as the splitter renders them, with the chaos test's loop settings (``--seed 11 --plength
  0.05``); a looping page loops on the fault server's default block at temperature <= 0.2.
  Each looping page climbs the temperature ladder (``Settings.ocr_temperatures``) until an
  answer is not a loop, in three arms:

  - **before**: non-streamed requests, as the worker sent them before streaming: every loop
    runs to ``max_tokens`` (4096) and ends ``finish_reason == "length"``;
  - **before, streamed**: the same, streamed without a detector (a check of the model: its
    wall-clock time must be tokens / R);
  - **after**: the worker's own OCR client (:class:`ocrpipe.worker.ocr_client.OcrClient`),
    streaming with the repetition rule of the page's size, asking a long page for more
    tokens, as the worker does.

  Target: GPU time per looping page after / before <= 0.25.
* **Loop kinds**: one A4 page (1089 x 1540 px) per kind of loop (a line, a table row, an
  empty row, a wide row, a sentence with no line break, newlines, spaces, dots, a
  paragraph...), the block the page carries, sent three characters per token (one per
  whitespace character), before (non-streamed ladder) and after (the OCR client). Per kind,
  and all together (a figure with the same 0.25 goal).
* **Faithful repetitions**: A4 pages whose text really repeats (sign-in sheets, label sheets,
  ledgers of identical rows, forms, repeated boilerplate, tables of zeros, ruled and blank
  sheets) through the OCR client: each must come out whole, at the first temperature, in one
  request. Also counted: how many the previous rule (cut 1,500 characters of verbatim
  repetition, 8,000 of blank) would have cut.

Also counted: the detector's false positives (replies it would cut) on the generated page
corpus and the bad-input corpus (:func:`corpora`); the target is none. And the detector's
cost: microseconds per check on a 40-page reply (:func:`detector_cost`; the target: under a
millisecond).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx

from bench.common import say, target
from bench.corpus import truth
from ocrpipe.errors import OcrRejected
from ocrpipe.local.engine import DEFAULT_MODEL
from ocrpipe.local.faults import PNG_LOOP_KEY, PNG_TEXT_KEY, FaultPlan, page_loops
from ocrpipe.local.stack import fault_server_command, free_port
from ocrpipe.settings import Settings
from ocrpipe.testing import inputs
from ocrpipe.testing.pdfs import WORDS, page_text, text_pdf
from ocrpipe.worker.completion_stream import stream_completion
from ocrpipe.worker.ocr_client import OcrClient, OcrParams, image_data_url
from ocrpipe.worker.repetition import RepetitionDetector

TEMPERATURE_LADDER = Settings().ocr_temperatures

CHAOS_SEED = 11  # tests/test_chaos.py's fault server
CHAOS_PLENGTH = 0.05
CHAOS_PAGES = [7 + (i * 5) % 11 for i in range(20)]  # tests/test_chaos.py's PAGES
MAX_TOKENS = 4096
TARGET_RATIO = 0.25
MAX_CHECK_US = 1000.0  # a check well under a millisecond, on a busy 2-core machine too
CHAT = "/v1/chat/completions"


def chaos_pages(documents: int) -> list[bytes]:
    """The chaos test's page images, rendered as the splitter renders them."""
    from ocrpipe.file_kinds import InputKind
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
    """The worker's request for ``image`` at ``temperature``."""
    params = OcrParams.from_settings(Settings(), max_tokens=MAX_TOKENS)
    return params.request(image_data_url(image), temperature)


async def ladder(http: httpx.AsyncClient, image: bytes, mode: str) -> dict[str, Any]:
    """One page up the temperature ladder as before streaming; mode: plain, streamed (no
    detector). A loop (``length``) moves one temperature up."""
    attempts: list[dict[str, Any]] = []
    for temperature in TEMPERATURE_LADDER:
        started = time.monotonic()
        if mode == "plain":
            response = await http.post(CHAT, json=body(image, temperature))
            response.raise_for_status()
            reply = response.json()
            finish = reply["choices"][0]["finish_reason"]
            tokens, cut = int(reply["usage"]["completion_tokens"]), False
            text = reply["choices"][0]["message"]["content"]
        else:
            done = await stream_completion(http, CHAT, body(image, temperature), rule=None)
            finish, tokens, cut, text = done.finish_reason, done.completion_tokens, False, done.text
        seconds = time.monotonic() - started
        attempts.append({"finish_reason": finish, "tokens": tokens, "cut": cut, "seconds": seconds})
        if finish not in ("length", "repetition"):
            return {"attempts": attempts, "text": text}
    return {"attempts": attempts, "text": None}


async def with_client(client: OcrClient, image: bytes) -> dict[str, Any]:
    """One page through the worker's OCR client, as the worker OCRs it."""
    started = time.monotonic()
    try:
        result = await client.ocr_page(image, "image/png", deadline=time.monotonic() + 600)
    except OcrRejected as exc:
        usage, text = exc.usage, None
    else:
        usage, text = result.usage, result.markdown
    seconds = time.monotonic() - started
    if usage is None:
        raise RuntimeError("a page was refused without usage")
    attempts = [{"finish_reason": usage.finish_reason, "seconds": seconds}]
    return {"attempts": attempts, "text": text, "usage": usage}


async def run_arm(url: str, images: list[bytes], mode: str) -> dict[str, Any]:
    """Every page of ``images`` in ``mode`` (plain, streamed, client), one after another."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        (await http.post("/stats/reset")).raise_for_status()
        if mode == "client":
            params = OcrParams.from_settings(Settings(), model=DEFAULT_MODEL, max_in_flight=2)
            client = OcrClient.create(url, params)
            try:
                pages = [await with_client(client, image) for image in images]
            finally:
                await client.aclose()
            stats_before = {"requests": client.stats.requests, "by_cause": client.stats.by_cause}
        else:
            pages = [await ladder(http, image, mode) for image in images]
            stats_before = {}
        deadline = time.monotonic() + 10
        while (stats := (await http.get("/stats")).json())["in_flight"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the fault server is still generating")
            await asyncio.sleep(0.02)
    if mode == "client":
        usages = [p["usage"] for p in pages]
        requests = sum(u.attempts for u in usages)
    else:
        requests = sum(len(p["attempts"]) for p in pages)
    answered = sum(p["text"] is not None for p in pages)
    return {
        "pages": len(pages),
        "requests": requests,
        "answered": answered,
        "server_tokens": stats["completion_tokens"],
        "wall_seconds": round(sum(a["seconds"] for p in pages for a in p["attempts"]), 3),
        "abandoned_streams": stats["abandoned"],
        **({"client": stats_before} if stats_before else {}),
        "texts": [p["text"] for p in pages],
        "attempts_per_page": [
            p["usage"].attempts if mode == "client" else len(p["attempts"]) for p in pages
        ],
        "temperatures": [p["usage"].temperature for p in pages] if mode == "client" else [],
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


def detector_cost(rounds: int = 20) -> dict[str, float]:
    """Microseconds per check of the detector, a 40-page reply fed 4 characters at a time
    (what ``tests/test_repetition.py`` counts instead of timing)."""
    text = "\n\n".join(truth(40))
    checks = 0
    started = time.perf_counter()
    for _ in range(rounds):
        detector = RepetitionDetector()
        for start in range(0, len(text), 4):
            detector.feed(text[start : start + 4])
        checks += detector.checks
    seconds = time.perf_counter() - started
    return {"checks": checks, "microseconds_per_check": round(seconds / checks * 1e6, 2)}


def false_positives() -> dict[str, dict[str, int]]:
    found = {}
    for name, texts in corpora().items():
        found[name] = {
            "replies": len(texts),
            "longest_chars": max(len(t) for t in texts),
            "cut": sum(cut_by_detector(t) for t in texts),
        }
    return found


# ------------------------------------------------------- loop kinds and faithful pages

A4_PX = (1089, 1540)  # an A4 page as the splitter renders it
HEAD = "# Statement of account\n\nCustomer 4471, period ending 31 March 2024."
PARAGRAPH = " ".join(WORDS[(7 * i) % len(WORDS)] for i in range(80))[:400]
LOOP_KINDS = {
    "a line": "\n\nThe payment is due within thirty days.",
    "a table row": "<tr><td>Total</td><td>0.00</td></tr>\n",
    "a markdown row": "| Balance carried forward | 1,204.00 |\n",
    "an empty table row": "<tr><td></td><td></td><td></td></tr>\n",
    "a wide table row (10 cells)": "<tr>" + "<td>0.00</td>" * 10 + "</tr>\n",
    "a sentence, no line break": " The payment is due within thirty days.",
    "a 400-character paragraph": PARAGRAPH + "\n\n",
    "newlines": "\n",
    "spaces": " ",
    "dots": ".",
}

LABEL = "ACME Corporation<br>12 Main Street<br>Springfield, IL 62701"
ROW = "| Name: ______________ | Signature: ______________ | Date: __________ |\n"
FAITHFUL = {
    "sign-in sheet, 25 rows": "## Sign-in sheet\n\n| Name | Signature | Date |\n"
    + "| --- | --- | --- |\n"
    + ROW * 25,
    "sign-in sheet, 30 rows": "| Name | Signature | Date |\n| --- | --- | --- |\n" + ROW * 30,
    "blank sign-in sheet, 40 empty rows": "<table>\n<tr><th>Name</th><th>Company</th>"
    "<th>In</th><th>Out</th></tr>\n"
    + "<tr><td></td><td></td><td></td><td></td></tr>\n" * 40
    + "</table>",
    "sheet of 30 labels, 3 across": "<table>\n"
    + f"<tr><td>{LABEL}</td><td>{LABEL}</td><td>{LABEL}</td></tr>\n" * 10
    + "</table>",
    "sheet of 21 labels, one per paragraph": (LABEL.replace("<br>", "\n") + "\n\n") * 21,
    "ledger of 45 identical rows": "| Date | Debit | Credit | Balance |\n"
    + "| --- | --- | --- | --- |\n"
    + "|  | 0.00 | 0.00 | 0.00 |\n" * 45,
    "ledger of 90 rows differing in the date": "".join(
        f"| 2024-{1 + d // 28:02d}-{1 + d % 28:02d} | 0.00 | 0.00 | 0.00 |\n" for d in range(90)
    ),
    "table of zeros, 60 rows x 8": "<table>\n"
    + ("<tr>" + "<td>0.00</td>" * 8 + "</tr>\n") * 60
    + "</table>",
    "table of zeros, 120 rows x 4": "| 0 | 0 | 0 | 0 |\n" * 120,
    "form, the same block for 6 applicants": "".join(
        f"### Applicant {k}\n\nName: ____________________\nDate of birth: __ / __ / ____\n"
        "Address: ____________________________________________\n\n"
        for k in range(1, 7)
    ),
    "repeated boilerplate, 8 coupons": (
        "This coupon entitles the bearer to one free coffee with any purchase of a pastry at"
        " participating stores. Not valid with other offers. Expires 31 December 2024.\n\n"
    )
    * 8,
    "raffle tickets numbered 1001-1040": "".join(
        f"Ticket No. {n} - Admit one - Spring Fair 2024\n" for n in range(1001, 1041)
    ),
    "ruled sheet, 45 lines": "Notes\n\n" + ("_" * 90 + "\n") * 45,
    "checklist, 40 empty items": "- [ ] ______________________________\n" * 40,
    "answer sheet, 50 rows of bubbles": "".join(
        f"{q}. (A) (B) (C) (D) (E)\n" for q in range(1, 51)
    ),
}


def page_png(text: str, loop: str | None = None, variant: int = 0) -> bytes:
    """An A4-sized page image carrying its text (and the block it loops on) for the fault
    server: blank pixels, so that it is small. ``variant`` makes another image of it."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_TEXT_KEY, text)
    if loop is not None:
        info.add_text(PNG_LOOP_KEY, loop)
    if variant:
        info.add_text("variant", str(variant))
    out = io.BytesIO()
    Image.new("L", A4_PX, 255).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def answer_of(image: bytes, text: str) -> str:
    """What the fault server answers for a page, whole."""
    return f"page-sha256:{hashlib.sha256(image).hexdigest()}\n\n{text}"


def cut_by_the_previous_rule(text: str) -> bool:
    """Whether the rule before issue 17 would have cut ``text``: its last 1,500 characters
    (8,000 when the block has no letter or digit outside markup) one block of at most 500
    characters repeated verbatim, at least 3 times, checked every 128 characters."""
    markup = re.compile(r"<[^<>]*>|&(?:[A-Za-z]+|#[0-9]+|#[xX][0-9A-Fa-f]+);")
    for n in range(128, len(text) + 1, 128):
        for period in range(1, 501):
            span = max(1500, 3 * period)
            if span > n or text[n - span + period : n] != text[n - span : n - period]:
                continue
            middle = markup.sub(lambda m: "\0" * len(m.group()), text[n - 3 * period : n])
            if any(c.isalnum() for c in middle[period : 2 * period]):
                return True
            blank = max(8000, 3 * period)
            if blank <= n and text[n - blank + period : n] == text[n - blank : n - period]:
                return True
    return False


def kinds_arms(url: str, rate: float) -> dict[str, Any]:
    """Each loop kind's page, before (non-streamed ladder) and after (the OCR client)."""
    found: dict[str, Any] = {}
    for name, block in LOOP_KINDS.items():
        image = page_png(HEAD, loop=block)
        before = asyncio.run(run_arm(url, [image], "plain"))
        after = asyncio.run(run_arm(url, [image], "client"))
        found[name] = {
            "tokens_before": before["server_tokens"],
            "tokens_after": after["server_tokens"],
            "ratio": round(after["server_tokens"] / before["server_tokens"], 4),
            "requests_after": after["requests"],
            "answered_after": after["answered"],
            "gpu_seconds_after": round(after["server_tokens"] / rate, 3),
        }
    return found


def faithful_page(text: str, plan: FaultPlan) -> bytes:
    """A page carrying ``text`` that the fault server's loop draw leaves alone: a faithful
    page loops only if the detector is wrong."""
    for variant in range(100):
        image = page_png(text, variant=variant)
        if not page_loops(plan, hashlib.sha256(image).hexdigest()):
            return image
    raise RuntimeError("every variant of the page draws a loop")


def faithful_arm(url: str, plan: FaultPlan) -> dict[str, Any]:
    """Each faithful page through the OCR client: kept whole, first temperature, once?"""
    images = {name: faithful_page(text, plan) for name, text in FAITHFUL.items()}
    arm = asyncio.run(run_arm(url, list(images.values()), "client"))
    pages: dict[str, Any] = {}
    for (name, image), got, attempts, temperature in zip(
        images.items(), arm["texts"], arm["attempts_per_page"], arm["temperatures"], strict=True
    ):
        whole = got == answer_of(image, FAITHFUL[name])
        pages[name] = {
            "chars": len(FAITHFUL[name]),
            "kept_whole": whole,
            "attempts": attempts,
            "temperature": temperature,
            "cut_by_the_previous_rule": cut_by_the_previous_rule(answer_of(image, FAITHFUL[name])),
        }
    return {
        "pages": len(pages),
        "kept_whole": sum(p["kept_whole"] for p in pages.values()),
        "kept_at_first_temperature_in_one_request": sum(
            p["kept_whole"] and p["attempts"] == 1 for p in pages.values()
        ),
        "previous_rule_would_cut": sum(p["cut_by_the_previous_rule"] for p in pages.values()),
        "server_tokens": arm["server_tokens"],
        "by_page": pages,
    }


# ------------------------------------------------------------------------------ run


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    logging.getLogger("ocrpipe.worker").setLevel(logging.ERROR)  # a line per loop otherwise
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
        arms = {mode: asyncio.run(run_arm(url, loopy, mode)) for mode in ("plain", "streamed")}
        arms["client"] = asyncio.run(run_arm(url, loopy, "client"))
        kinds = kinds_arms(url, rate)
        faithful = faithful_arm(url, plan)
    finally:
        process.terminate()
        process.wait(timeout=10)
    for arm in arms.values():
        arm.pop("texts")

    def per_page(arm: dict[str, Any]) -> float:
        return float(arm["server_tokens"]) / rate / float(arm["pages"])

    before, after = per_page(arms["plain"]), per_page(arms["client"])
    kinds_before = sum(k["tokens_before"] for k in kinds.values())
    kinds_after = sum(k["tokens_after"] for k in kinds.values())
    figures: dict[str, Any] = {
        "tokens_per_s_per_request": rate,
        "chaos_pages": len(images),
        "looping_pages": len(loopy),
        "arms": {
            "before": arms["plain"],
            "before_streamed": arms["streamed"],
            "after": arms["client"],
        },
        "gpu_seconds_per_looping_page": {"before": round(before, 4), "after": round(after, 4)},
        "gpu_seconds_total": {
            "before": round(before * len(loopy), 3),
            "after": round(after * len(loopy), 3),
        },
        "tokens_per_looping_page": {
            "before": arms["plain"]["server_tokens"] / len(loopy),
            "after": arms["client"]["server_tokens"] / len(loopy),
        },
        "wall_seconds_per_looping_page": {
            "before_streamed": round(arms["streamed"]["wall_seconds"] / len(loopy), 3),
            "after": round(arms["client"]["wall_seconds"] / len(loopy), 3),
        },
        "loop_kinds": {
            "by_kind": kinds,
            "tokens_before": kinds_before,
            "tokens_after": kinds_after,
            "ratio": round(kinds_after / kinds_before, 4),
        },
        "faithful": faithful,
        "false_positives": false_positives(),
        "detector_cost": detector_cost(),
    }
    say(
        f"  R = {rate:g} tokens/s per request; {len(loopy)} looping chaos pages:"
        f" GPU-s per looping page {before:.3f} before, {after:.3f} after"
        f" (total {before * len(loopy):.2f} -> {after * len(loopy):.2f} s);"
        f" tokens {figures['tokens_per_looping_page']['before']:.0f}"
        f" -> {figures['tokens_per_looping_page']['after']:.0f}"
    )
    say(
        f"  wall clock per looping page, streamed: uncut"
        f" {figures['wall_seconds_per_looping_page']['before_streamed']:.3f} s, cut"
        f" {figures['wall_seconds_per_looping_page']['after']:.3f} s;"
        f" answered after the ladder: {arms['plain']['answered']} / {arms['client']['answered']}"
    )
    for name, kind in kinds.items():
        say(
            f"  loop kind {name:28} tokens {kind['tokens_before']:>6} -> {kind['tokens_after']:>6}"
            f" ({kind['ratio']:.3f}), {kind['requests_after']} requests"
        )
    say(
        f"  loop kinds together: {kinds_before} -> {kinds_after} tokens"
        f" ({figures['loop_kinds']['ratio']:.3f})"
    )
    say(
        f"  faithful pages kept whole: {faithful['kept_whole']} of {faithful['pages']}"
        f" ({faithful['kept_at_first_temperature_in_one_request']} at the first temperature in"
        f" one request); the previous rule would have cut {faithful['previous_rule_would_cut']}"
    )
    cost = figures["detector_cost"]
    say(f"  detector: {cost['microseconds_per_check']:.1f} µs per check ({cost['checks']} checks)")
    for name, fp in figures["false_positives"].items():
        longest = fp["longest_chars"]
        say(f"  false positives, {name}: {fp['cut']} of {fp['replies']} (longest {longest} chars)")
    if arms["plain"]["answered"] != arms["client"]["answered"]:
        raise RuntimeError("streaming changed which pages got an answer")
    targets = {
        "gpu_time_ratio_after_before": target(
            after / before, TARGET_RATIO, higher_is_better=False, unit="ratio"
        ),
        "loop_kinds_gpu_time_ratio_after_before": target(
            kinds_after / kinds_before, TARGET_RATIO, higher_is_better=False, unit="ratio"
        ),
        "detector_microseconds_per_check": target(
            figures["detector_cost"]["microseconds_per_check"],
            MAX_CHECK_US,
            higher_is_better=False,
            unit="µs",
        ),
        "faithful_pages_kept_whole_share": target(
            faithful["kept_whole"] / faithful["pages"], 1.0, unit="share"
        ),
    }
    method = (
        f"against the real fault server streaming {rate:g} tokens/s per request;"
        f" GPU-seconds = the server's generated tokens (/stats) / R. Chaos pages (Renderer,"
        f" 200 dpi, at most 1540 px) whose loop draw is set (seed {CHAOS_SEED}, plength"
        f" {CHAOS_PLENGTH}), each up the ladder {list(TEMPERATURE_LADDER)}: before ="
        " non-streamed, a loop runs to max_tokens; after = the worker's OcrClient (streamed,"
        " the repetition rule of the page's size, more tokens for a long page). Loop kinds:"
        " one A4 page per kind, the loop block 3 characters a token, the same two arms."
        " Faithful pages: A4 pages whose text repeats, through the OcrClient; the previous"
        " rule (1,500 characters of verbatim repetition) applied to the same replies"
    )
    return figures, targets, method


if __name__ == "__main__":
    print(run("--quick" in sys.argv))
