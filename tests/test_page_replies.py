"""Every page as the model read it, through the real worker path: push envelopes into the
worker app, which builds its own streaming OCR client from the settings and calls a live
fault server (uvicorn, real sockets) that ends replies the ways vLLM does. Only a finished
reply (``stop``) becomes a page; everything else is retried, or fails the page for good,
and never leaves a truncated page marked done."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient

from ocr_worker.app import create_app as worker_app
from ocrpipe import naming, records
from ocrpipe.local.faults import PNG_TEXT_KEY, FaultPlan, create_app, serve_in_background
from ocrpipe.messages import PageMessage
from ocrpipe.naming import DocumentRef
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pushes import push_envelope
from ocrpipe.worker.completion_stream import EVENTS_PER_TOKEN
from tests.test_faults import page

BASE = {
    "verify_push_auth": False,
    "storage_emulator_host": "http://127.0.0.1:4443",  # unverified only against emulators
    "input_bucket": "in",
    "work_bucket": "work",
    "output_bucket": "out",
    "ocr_budget_s": 60,
}
TEXT = " ".join(f"word{i}" for i in range(1, 61))
A4_AT_1540 = (1089, 1540)  # pixels: how the splitter renders an A4 page: 2,145 image tokens
CONTEXT = 8192  # LightOnOCR-2-1B's max_model_len, as gpu_image serves it


class Records(logging.Handler):
    """The worker's log records (the worker's own logging setup replaces the root
    handlers, so pytest's caplog would miss them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@dataclass
class Worker:
    client: TestClient
    store: MemoryStore
    publisher: MemoryPublisher
    settings: Settings
    url: str  # the fault server's
    logs: Records

    def document(
        self, texts: list[str], loops: dict[int, str] | None = None
    ) -> tuple[DocumentRef, list[PageMessage]]:
        """A document whose pages are PNGs carrying their text (and a loop block)."""
        generation = self.store.put("in", "docs/a.pdf", b"%PDF-1.7 ...", "application/pdf")
        doc = DocumentRef("in", "docs/a.pdf", generation)
        count = len(texts)
        self.store.put("out", naming.manifest_name(doc), records.manifest_record(doc, count))
        messages = []
        for number, text in enumerate(texts, start=1):
            image = naming.page_image_name(doc.doc_id, number, "png")
            loop = (loops or {}).get(number)
            data = page(f"page {number} of {generation}", text, loop, size=A4_AT_1540)
            self.store.put("work", image, data, "image/png")
            messages.append(PageMessage.for_image(doc, number, count, "work", image))
        return doc, messages

    def deliver(self, message: PageMessage) -> int:
        status: int = self.client.post("/", json=push_envelope(message)).status_code
        return status

    def fault_stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/stats").json())

    def retries(self) -> dict[str, int]:
        return dict(self.client.get("/stats").json()["retries_by_cause"])


@contextmanager
def worker(plan: FaultPlan, *, max_model_len: int = CONTEXT, **settings: Any) -> Iterator[Worker]:
    """The worker app and a fault server serving a model of ``max_model_len`` tokens."""
    logs = Records()
    logger = logging.getLogger("ocrpipe")
    logger.addHandler(logs)
    try:
        with serve_in_background(create_app(plan, max_model_len=max_model_len)) as url:
            config = Settings(**{**BASE, "ocr_url": url, **settings})
            store, publisher = MemoryStore(), MemoryPublisher()
            app = worker_app(config, store=store, publisher=publisher)  # its own OCR client
            with TestClient(app) as client:
                yield Worker(client, store, publisher, config, url, logs)
    finally:
        logger.removeHandler(logs)


def answer(message: PageMessage, w: Worker) -> str:
    """What the fault server answers for the page, whole."""
    assert message.image_uri is not None
    image = w.store.read(*naming.split_uri(message.image_uri))
    with Image.open(io.BytesIO(image)) as png:
        text = png.info.get(PNG_TEXT_KEY, "")
    return f"page-sha256:{hashlib.sha256(image).hexdigest()}" + (f"\n\n{text}" if text else "")


def page_markdown(w: Worker, doc: DocumentRef, number: int) -> str | None:
    name = naming.page_markdown_name(doc, number)
    return w.store.read("out", name).decode() if w.store.stat("out", name) else None


def page_error(w: Worker, doc: DocumentRef, number: int) -> dict[str, Any] | None:
    name = naming.page_error_name(doc, number)
    return json.loads(w.store.read("out", name)) if w.store.stat("out", name) else None


def latest_state(w: Worker, doc: DocumentRef) -> str | None:
    name = naming.latest_name(doc.name)
    return json.loads(w.store.read("out", name))["state"] if w.store.stat("out", name) else None


# --- 1. only stop makes a page ------------------------------------------------------------


@pytest.mark.parametrize("reason", ["abort", "error"])
def test_a_reply_the_server_ended_early_is_retried_and_never_becomes_the_page(
    reason: str,
) -> None:
    plan = FaultPlan(
        pabort=1.0 if reason == "abort" else 0.0,
        perror=1.0 if reason == "error" else 0.0,
        first_attempts=1,  # a third of each page the first time, the whole page on a retry
    )
    with worker(plan) as w:
        doc, messages = w.document([TEXT, TEXT + " second page"])
        assert [w.deliver(m) for m in messages] == [204, 204]
        for number, message in enumerate(messages, start=1):
            assert page_markdown(w, doc, number) == answer(message, w)
        assert latest_state(w, doc) == "done"
        assert (w.fault_stats()[reason], w.fault_stats()["ok"]) == (2, 2)
        assert "malformed" not in w.retries()
        said = [m for m in w.logs.messages() if f"finish_reason {reason}" in m]
        assert len(said) == 2, w.logs.messages()


def test_an_engine_that_dies_mid_reply_is_server_trouble_not_a_malformed_reply() -> None:
    plan = FaultPlan(pstream_error=1.0, first_attempts=3)  # more than ocr_malformed_attempts
    with worker(plan) as w:
        doc, [message] = w.document([TEXT])
        assert w.deliver(message) == 204
        assert page_error(w, doc, 1) is None
        assert page_markdown(w, doc, 1) == answer(message, w)
        assert w.fault_stats()["stream_error"] == 3
        assert "malformed" not in w.retries()
        said = [m for m in w.logs.messages() if "the engine died mid-reply" in m]
        assert len(said) == 3, w.logs.messages()


def test_a_server_that_keeps_aborting_gets_the_delivery_nacked_with_nothing_written() -> None:
    with worker(FaultPlan(pabort=1.0), ocr_budget_s=10) as w:  # room for two aborts, loaded
        doc, [message] = w.document([TEXT])
        assert w.deliver(message) == 503  # Pub/Sub retries it later, then dead-letters it
        assert w.store.list("out", naming.pages_prefix(doc)) == []
        assert w.fault_stats()["abort"] >= 2


def provenance(w: Worker, doc: DocumentRef, number: int) -> dict[str, Any]:
    index = json.loads(w.store.read("out", naming.document_index_name(doc)))
    found: dict[str, Any] = index["pages"][number - 1]["provenance"]
    return found


# --- 2. a faithful repetition is kept whole; a loop is still cut early -------------------

SIGN_IN = "## Sign-in sheet\n\n| Name | Signature | Date |\n| --- | --- | --- |\n" + (
    "| Name: ______________ | Signature: ______________ | Date: __________ |\n" * 30
)
LABEL = "ACME Corporation<br>12 Main Street<br>Springfield, IL 62701"
LABELS = "<table>\n" + f"<tr><td>{LABEL}</td><td>{LABEL}</td><td>{LABEL}</td></tr>\n" * 10
ZEROS = (
    "<table>\n<tr><th>Account</th>"
    + "<th>Q</th>" * 7
    + "</tr>\n"
    + ("<tr>" + "<td>0.00</td>" * 8 + "</tr>\n") * 60
    + "</table>"
)
FAITHFUL = {"sign-in sheet": SIGN_IN, "sheet of labels": LABELS, "table of zeros": ZEROS}


@pytest.mark.parametrize("text", FAITHFUL.values(), ids=FAITHFUL.keys())
def test_a_page_that_really_repeats_itself_is_kept_whole_at_the_first_temperature(
    text: str,
) -> None:
    with worker(FaultPlan()) as w:
        doc, [message] = w.document([text])
        assert w.deliver(message) == 204
        assert page_error(w, doc, 1) is None
        assert page_markdown(w, doc, 1) == answer(message, w)
        usage = provenance(w, doc, 1)
        assert (usage["attempts"], usage["temperature"], usage["finish_reason"]) == (1, 0.2, "stop")
        assert w.fault_stats()["abandoned"] == 0


LOOPS = {  # the block, and the most tokens the loop may run before it is cut
    # 13 tokens a row (the fault server sends a loop block 3 characters a token): cut after
    # the 160 rows a page at 1540 px holds at most, about half of max_tokens
    "a table row": ("<tr><td>Total</td><td>0.00</td></tr>\n", 161 * 13 + 128),
    "a line": ("\n\nThe payment is due within thirty days.", 81 * 14 + 128),
    "blank lines": ("\n", 4096 // 8),  # one character per token: 160 rows at most
    "spaces": ("  ", 4096 // 8),  # one character per token: a row is 385 characters at most
}


@pytest.mark.parametrize(("block", "most"), LOOPS.values(), ids=LOOPS.keys())
def test_a_loop_is_cut_before_max_tokens_and_the_page_answered_one_step_up(
    block: str, most: int
) -> None:
    with worker(FaultPlan()) as w:  # the page loops at temperature 0.2 and answers at 0.3
        doc, [message] = w.document(["Statement of account"], loops={1: block})
        assert w.deliver(message) == 204
        assert page_markdown(w, doc, 1) == answer(message, w)
        stats = w.fault_stats()  # the server stopped generating when the client left
        assert (stats["length"], stats["abandoned"], stats["ok"]) == (1, 1, 1)
        usage = provenance(w, doc, 1)
        assert (usage["attempts"], usage["temperature"]) == (2, 0.3)
        looped = usage["completion_tokens"] - 3  # read before the cut; the answer is 3 tokens
        assert looped <= most, f"the loop ran {looped} tokens before it was cut"


# --- 5. a streamed reply is bounded --------------------------------------------------------


def test_a_server_that_streams_past_max_tokens_is_cut_at_a_bound_and_treated_as_a_loop() -> None:
    plan = FaultPlan(endless=True, tokens_per_s=0)  # distinct words for ever, at full speed
    # Time enough to read to the bound on a loaded machine: the cut must come from the
    # bound (a request cut by its timeout would be an ocr_unavailable, not a loop).
    with worker(plan, ocr_request_timeout_s=120, ocr_budget_s=500) as w:
        doc, [message] = w.document(["Heading"])
        assert w.deliver(message) == 204
        error = page_error(w, doc, 1)
        assert error is not None and error["reason"] == "ocr_repetition_loop"
        stats = w.fault_stats()
        assert (stats["endless"], stats["abandoned"]) == (4, 4)  # the whole temperature ladder
        # What the client read is bounded by its own rule (one token per event here), and
        # the record bills it. (The server's count is not bounded: it keeps writing into
        # the socket's buffers until it sees the client gone, 2.3x more at load 3.)
        info = w.store.stat("out", naming.page_error_name(doc, 1))
        assert info is not None
        usage = records.parse_usage(info.metadata)
        assert usage is not None and usage["attempts"] == 4
        read = int(usage["completion_tokens"])
        assert 4 * 4096 < read <= 4 * (EVENTS_PER_TOKEN * 4096 + 64)
        assert read <= stats["completion_tokens"]


# --- 3. a long page is not a loop ----------------------------------------------------------

LONG = " ".join(f"entry{i}" for i in range(1, 6001))  # 6,000 distinct words: 6,000 tokens


def test_a_page_longer_than_max_tokens_gets_more_tokens_not_a_higher_temperature() -> None:
    with worker(FaultPlan()) as w:
        doc, [message] = w.document([LONG])
        assert w.deliver(message) == 204
        assert page_error(w, doc, 1) is None
        assert page_markdown(w, doc, 1) == answer(message, w)
        usage = provenance(w, doc, 1)
        assert (usage["attempts"], usage["temperature"], usage["finish_reason"]) == (2, 0.2, "stop")
        assert usage["completion_tokens"] == 4096 + 6001  # the cut reply, then the whole one
        assert usage["prompt_tokens"] == 2 * 2145
        assert w.fault_stats()["invalid"] == 0  # never more tokens than the context leaves


def test_a_page_longer_than_the_context_fails_for_good_as_too_long_not_as_a_loop() -> None:
    # max_tokens 1,500 plus the largest page's prompt fits 5,000 (the worker checks that at
    # start), but the 6,000-token page does not fit what the context leaves after its prompt
    # (5,000 - 2,145): asked again with every token the context allows, it still ends length.
    context = 5000
    with worker(
        FaultPlan(), max_model_len=context, ocr_max_model_len=context, ocr_max_tokens=1500
    ) as w:
        doc, [message] = w.document([LONG])
        assert w.deliver(message) == 204
        error = page_error(w, doc, 1)
        assert error is not None and error["reason"] == "ocr_page_too_long", error
        assert "5000" in error["message"]
        assert page_markdown(w, doc, 1) is None  # never a truncated page
        assert w.fault_stats()["invalid"] == 0
