"""The local OCR engine server: vLLM's API subset, real rapidocr on a generated page."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from PIL import Image
from rapidfuzz.distance import Levenshtein

from ocrpipe.local.boxes_to_markdown import TextBox, rect
from ocrpipe.local.engine import DEFAULT_MODEL, RapidOcrEngine, create_app, image_tokens
from ocrpipe.local.faults import serve_in_background
from ocrpipe.local.stack import free_port
from ocrpipe.testing.waiting import QUIET_S

PARAGRAPHS = (
    "Quarterly Report 2024",
    "Revenue grew by 12.5 percent over the previous quarter, driven by strong demand for the"
    " new product line in the north and south regions. Operating costs stayed within budget.",
    "The team shipped 3,480 orders to 912 customers; the average delivery took 2.4 days."
    " Invoices dated before 15 March are now due, and payment reminders were sent by email.",
    "Next steps: review the contract terms, estimate the annual service cost, and publish the"
    " summary table with the figures for each office.",
)


def born_digital_page(paragraphs: tuple[str, ...], longest_side: int = 1540) -> bytes:
    """A PDF typeset with reportlab, rendered like the splitter does (pypdfium2, PNG)."""
    import pypdfium2 as pdfium
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import simpleSplit
    from reportlab.pdfgen import canvas

    width, height = A4
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    y = height - 72
    for paragraph in paragraphs:
        for text in simpleSplit(paragraph, "Helvetica", 12, width - 144):
            pdf.setFont("Helvetica", 12)
            pdf.drawString(72, y, text)
            y -= 16
        y -= 16
    pdf.showPage()
    pdf.save()
    document = pdfium.PdfDocument(buffer.getvalue())
    try:
        page = document[0]
        image = page.render(scale=longest_side / max(page.get_size())).to_pil()
    finally:
        document.close()
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def data_url(image: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(image).decode()}"


def chat(*images: bytes, model: str = DEFAULT_MODEL, **extra: Any) -> dict[str, Any]:
    """The request LightOnOCR's client sends: the image alone as the user message."""
    parts = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in images]
    return {
        "model": model,
        "messages": [{"role": "user", "content": parts}],
        "temperature": 0.2,
        "top_p": 0.9,
        **extra,
    }


def collapse(text: str) -> str:
    return " ".join(text.split())


class FakeEngine:
    """Implements the OcrEngine protocol with fixed boxes; can block until released."""

    def __init__(self, boxes: list[TextBox], *, block: bool = False) -> None:
        self.boxes = boxes
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0  # pages recognized (started)
        if not block:
            self.release.set()

    def recognize(self, image: Image.Image) -> list[TextBox]:
        self.calls += 1
        self.started.set()
        self.release.wait(timeout=QUIET_S)  # a bound for a test that never releases it
        return self.boxes


@pytest.fixture(scope="module")
def rapidocr_engine() -> RapidOcrEngine:
    return RapidOcrEngine()


async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            yield client


@pytest.fixture
async def client(rapidocr_engine: RapidOcrEngine) -> AsyncIterator[httpx.AsyncClient]:
    async for c in client_for(create_app(rapidocr_engine)):
        yield c


SENTENCE = [rect(10, 10, 200, 40, "one two three"), rect(10, 41, 200, 71, "four five six")]


@pytest.fixture
async def fake_client() -> AsyncIterator[httpx.AsyncClient]:
    async for c in client_for(create_app(FakeEngine(SENTENCE))):
        yield c


BLANK = png(Image.new("RGB", (200, 300), "white"))


async def test_health_is_200_with_an_empty_body(fake_client: httpx.AsyncClient) -> None:
    response = await fake_client.get("/health")
    assert response.status_code == 200
    assert response.content == b""


async def test_models_lists_the_served_model_like_vllm(fake_client: httpx.AsyncClient) -> None:
    response = await fake_client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == card["root"] == DEFAULT_MODEL
    assert card["object"] == "model"
    assert card["owned_by"] == "ocrpipe-local"
    assert isinstance(card["created"], int)
    assert card["max_model_len"] > 4096


async def test_ocr_of_a_born_digital_page_reads_its_text(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat(born_digital_page(PARAGRAPHS)))
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == DEFAULT_MODEL
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["tool_calls"] == []
    content = choice["message"]["content"]
    cer = Levenshtein.normalized_distance(collapse(content), collapse(" ".join(PARAGRAPHS)))
    assert cer <= 0.02, f"CER {cer:.2%}:\n{content}"
    assert len(content.split("\n\n")) == len(PARAGRAPHS), content
    usage = body["usage"]
    assert usage["completion_tokens"] == len(content.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_a_blank_page_gives_empty_markdown(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat(BLANK))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == ""
    assert response.json()["choices"][0]["finish_reason"] == "stop"


async def test_max_tokens_cuts_the_reply_with_finish_reason_length(
    fake_client: httpx.AsyncClient,
) -> None:
    response = await fake_client.post("/v1/chat/completions", json=chat(BLANK, max_tokens=4))
    [choice] = response.json()["choices"]
    assert choice["message"]["content"] == "one two three\nfour"
    assert choice["finish_reason"] == "length"
    assert response.json()["usage"]["completion_tokens"] == 4


async def test_wrong_model_is_404_in_vllm_error_shape(fake_client: httpx.AsyncClient) -> None:
    response = await fake_client.post("/v1/chat/completions", json=chat(BLANK, model="gpt-4o"))
    assert response.status_code == 404
    body = vllm_error(response)
    assert body["type"] == "NotFoundError"
    assert body["param"] == "model"
    assert "gpt-4o" in body["message"]


def vllm_error(response: httpx.Response) -> dict[str, Any]:
    """vLLM's error body (0.30): ``{"error": {"message", "type", "param", "code"}}``, as
    tests/test_vllm_contract.py sees the real server send it."""
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == response.status_code
    return dict(error)


def vllm_image_tokens(width: int, height: int) -> int:
    """What vLLM counts for LightOnOCR (measured in tests/test_vllm_contract.py): the
    longest side scaled down, never up, to 1540 px, then one token per 28 x 28 px."""
    ratio = max(width / 1540, height / 1540)
    if ratio > 1:
        width, height = math.floor(width / ratio), math.floor(height / ratio)
    return math.ceil(width / 28) * math.ceil(height / 28)


@pytest.mark.parametrize(
    "size",
    [(1089, 1540), (1190, 1540), (1540, 866), (411, 1540), (1540, 1540), (6160, 770),
     (770, 6160), (6160, 1540), (16, 128), (160, 120), (3000, 2000)],
    ids=["A4", "Letter", "slide", "receipt", "square", "sliver", "tall sliver", "4:1 strip",
         "thinnest", "icon", "large photo"],
)  # fmt: skip
def test_prompt_tokens_of_an_image_are_vllms(size: tuple[int, int]) -> None:
    """Every size the renderer produces (slivers up to 4 x 1540 px long) and images sent as
    they are: the local engine bills what vLLM would."""
    assert image_tokens(*size) == vllm_image_tokens(*size)


def text_only() -> dict[str, Any]:
    return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "OCR this"}]}


def with_url(url: str) -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url}}
    return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": [part]}]}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(text_only(), "got 0", id="no image"),
        pytest.param(chat(BLANK, BLANK), "got 2", id="two images"),
        pytest.param(with_url("https://example.com/page.png"), "data:image", id="remote URL"),
        pytest.param(with_url("data:image/png;base64,@@@"), "base64", id="bad base64"),
        pytest.param(chat(b"not an image at all"), "cannot be decoded", id="not an image"),
        pytest.param({"model": DEFAULT_MODEL}, "messages", id="no messages"),
        pytest.param(
            chat(BLANK, stream_options={"include_usage": True}), "stream", id="stream options"
        ),
    ],
)
async def test_bad_requests_are_400(
    fake_client: httpx.AsyncClient, payload: dict[str, Any], message: str
) -> None:
    response = await fake_client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 400
    body = vllm_error(response)
    assert body["type"] == "BadRequestError"
    assert message in body["message"]


async def test_invalid_json_is_400(fake_client: httpx.AsyncClient) -> None:
    response = await fake_client.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert vllm_error(response)["type"] == "BadRequestError"


async def test_health_answers_while_a_page_is_being_ocrd() -> None:
    engine = FakeEngine(SENTENCE, block=True)
    async for client in client_for(create_app(engine)):
        ocr = asyncio.create_task(client.post("/v1/chat/completions", json=chat(BLANK)))
        assert await asyncio.to_thread(engine.started.wait, QUIET_S)
        health = await client.get("/health")
        assert health.status_code == 200
        assert not ocr.done()
        engine.release.set()
        response = await ocr
        assert response.json()["choices"][0]["message"]["content"] == "one two three\nfour five six"


async def wait_for(condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds (the test's own timeout bounds it)."""
    while not condition():
        await asyncio.sleep(0.02)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


async def test_a_page_whose_client_has_gone_is_dropped_before_it_is_ocrd(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As vLLM aborts a request whose client disconnected: a worker that gave up on a page
    (its budget ran out, the delivery was redelivered) must not leave the engine OCR'ing it
    while the pages that are wanted wait behind it."""
    caplog.set_level(logging.DEBUG, logger="ocrpipe.local.engine")
    engine = FakeEngine(SENTENCE, block=True)
    with serve_in_background(create_app(engine, threads=1)) as url:
        async with (
            httpx.AsyncClient(base_url=url, timeout=60) as first,
            httpx.AsyncClient(base_url=url, timeout=60) as second,
        ):
            wanted = asyncio.ensure_future(first.post("/v1/chat/completions", json=chat(BLANK)))
            await wait_for(engine.started.is_set)  # the only OCR thread is busy
            abandoned = asyncio.ensure_future(
                second.post("/v1/chat/completions", json=chat(BLANK, stream=True))
            )
            await wait_for(lambda: logged(caplog, "waiting for an OCR thread") >= 2)
            abandoned.cancel()  # the client goes away: its connection closes
            await asyncio.gather(abandoned, return_exceptions=True)
            await wait_for(lambda: logged(caplog, "client has gone") >= 1)
            engine.release.set()
            assert (await wanted).status_code == 200
    assert engine.calls == 1  # the abandoned page was never OCR'd
    assert "socket.send() raised exception" not in caplog.text


def test_the_engine_refuses_connections_until_it_can_ocr_then_is_healthy() -> None:
    """vLLM's cold start (tests/test_vllm_contract.py): nothing listens while the model
    loads, then /health is 200; never a 503 in between. The engine loads rapidocr first."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ocrpipe.local.engine", "--port", str(port), "--log-level",
         "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    refused, answered = 0, []
    try:
        while True:
            assert process.poll() is None, "the engine exited while loading"
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code
            except httpx.ConnectError:
                refused += 1
                time.sleep(0.05)
                continue
            answered.append(status)
            if status == 200:
                break
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert refused > 0 and answered == [200]
