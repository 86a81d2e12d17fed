"""The worker's OCR client against the real vLLM OpenAI server (the vLLM tier).

One server per session (``vllm`` in conftest.py), started by gpu_image/entrypoint.sh with the
production flags and only the CPU overrides of :data:`ocrpipe.testing.vllm_server.CPU_OVERRIDES`,
serving a tiny, randomly initialised model with LightOnOCR's architecture. Its text is noise;
what is checked is everything the worker relies on: streaming, usage, finish reasons, what
vLLM refuses and how, and that cutting a reply stops the generation on the server.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from ocrpipe.errors import OcrRejected, OcrUnavailable
from ocrpipe.settings import Settings
from ocrpipe.testing.clock import FakeClock
from ocrpipe.testing.tiny_lightonocr import IMAGE_SIZE, TEMPLATE_TOKENS
from ocrpipe.testing.vllm_server import GPU_IMAGE, VllmServer
from ocrpipe.worker.completion_stream import CompletionRefused, stream_completion
from ocrpipe.worker.context_fit import ContextTooShort, check_ocr_context
from ocrpipe.worker.ocr_client import OcrClient, OcrParams

pytestmark = pytest.mark.vllm

A4 = (1089, 1540)  # an A4 page rendered with its longest side at 1540 px
# A sliver of a page (1 x 10000 pt): rendered 4 x 1540 px long and padded to 1:8.
SLIVER = (6160, 770)


def page_png(width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for row in range(min(40, height // 30)):
        draw.text((20, 10 + row * 30), f"line {row}: invoice total 1,234.56", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def image_tokens(width: int, height: int) -> int:
    """vLLM's count for LightOnOCR: the longest side scaled down (never up) to 1540 px,
    then one token per 28 x 28 px (14 px patches merged 2 x 2), partial ones included."""
    ratio = max(width / IMAGE_SIZE, height / IMAGE_SIZE)
    if ratio > 1:
        width, height = math.floor(width / ratio), math.floor(height / ratio)
    return math.ceil(width / 28) * math.ceil(height / 28)


def ocr_client(vllm: VllmServer, **overrides: Any) -> OcrClient:
    settings = Settings(ocr_url=vllm.url, ocr_model=vllm.model_id)
    return OcrClient.create(vllm.url, OcrParams.from_settings(settings, **overrides))


def body(vllm: VllmServer, *images: bytes, **fields: Any) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    return {
        "model": vllm.model_id,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 4096,
        **fields,
    }


def vllm_error(response: httpx.Response) -> dict[str, Any]:
    """vLLM's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == response.status_code
    return dict(error)


def test_nothing_listens_while_the_model_loads(vllm: VllmServer) -> None:
    """vLLM refuses connections until it is ready; it never answers 503 while loading."""
    assert vllm.loading is not None
    assert vllm.loading.refused > 0
    assert vllm.loading.answered == []


def test_models_lists_the_served_name_and_its_context_length(vllm: VllmServer) -> None:
    models = httpx.get(f"{vllm.url}/v1/models", timeout=30).json()["data"]
    assert [(m["id"], m["max_model_len"]) for m in models] == [(vllm.model_id, 8192)]


async def test_a_page_streams_to_stop_with_the_servers_own_token_counts(
    vllm: VllmServer,
) -> None:
    generated = vllm.metric("vllm:generation_tokens_total")
    prompted = vllm.metric("vllm:prompt_tokens_total")
    client = ocr_client(vllm)
    try:
        result = await client.ocr_page(page_png(*A4), "image/png", deadline=time.monotonic() + 600)
    finally:
        await client.aclose()
    usage = result.usage
    assert (usage.finish_reason, usage.attempts, usage.model) == ("stop", 1, vllm.model_id)
    assert usage.prompt_tokens == image_tokens(*A4) + TEMPLATE_TOKENS == 2145 + TEMPLATE_TOKENS
    assert usage.prompt_tokens == vllm.metric("vllm:prompt_tokens_total") - prompted
    assert usage.completion_tokens == vllm.metric("vllm:generation_tokens_total") - generated
    assert usage.completion_tokens > 0  # vLLM counts the end-of-reply token too


async def test_the_streamed_text_is_the_non_streamed_reply(vllm: VllmServer) -> None:
    request = body(vllm, page_png(400, 300), seed=7, max_tokens=48)
    plain = httpx.post(f"{vllm.url}/v1/chat/completions", json=request, timeout=300).json()
    async with httpx.AsyncClient(base_url=vllm.url, timeout=300) as http:
        streamed = await stream_completion(http, "/v1/chat/completions", request, rule=None)
    (choice,) = plain["choices"]
    assert streamed.text == choice["message"]["content"]
    assert streamed.finish_reason == choice["finish_reason"]
    assert streamed.prompt_tokens == plain["usage"]["prompt_tokens"]
    assert streamed.completion_tokens == plain["usage"]["completion_tokens"]


async def test_a_reply_that_reaches_max_tokens_finishes_with_length(vllm: VllmServer) -> None:
    request = body(vllm, page_png(300, 200), max_tokens=16, ignore_eos=True)
    async with httpx.AsyncClient(base_url=vllm.url, timeout=300) as http:
        reply = await stream_completion(http, "/v1/chat/completions", request)
    assert (reply.finish_reason, reply.completion_tokens, reply.cut) == ("length", 16, False)


async def test_cutting_a_looping_reply_stops_the_generation_on_the_server(
    vllm: VllmServer, vllm_model: Any
) -> None:
    """A reply forced into a loop (logit_bias on one token) is cut by the worker's detector;
    closing the stream aborts the request in vLLM: it never runs to max_tokens.

    max_tokens is as far from the cut as the 8,192-token context allows, and the check is
    that vLLM stopped before it, not how soon: how many tokens vLLM makes between the cut
    and the abort depends on the machine's load (2,339 once, on a machine running three
    test suites)."""
    vocab = json.loads((vllm_model / "tokenizer.json").read_text())["model"]["vocab"]
    loop_token = vocab["Ġtotal"]  # " total", over and over
    generated = vllm.metric("vllm:generation_tokens_total")
    ran_out = vllm.metric("vllm:request_success_total", finished_reason="length")
    request = body(
        vllm, page_png(300, 200), max_tokens=8000, ignore_eos=True, logit_bias={loop_token: 100}
    )
    async with httpx.AsyncClient(base_url=vllm.url, timeout=300) as http:
        reply = await stream_completion(http, "/v1/chat/completions", request)
    assert reply.cut and reply.finish_reason == "repetition"
    assert reply.text.endswith(" total total total")
    # Not aborted, it would run on to max_tokens (about 40 s here) before leaving the batch.
    while vllm.metric("vllm:num_requests_running") > 0:
        vllm.raise_if_exited()
        await asyncio.sleep(0.2)
    spent = vllm.metric("vllm:generation_tokens_total") - generated
    assert reply.completion_tokens <= spent < 8000, spent
    assert vllm.metric("vllm:request_success_total", finished_reason="length") == ran_out


async def test_an_image_vllm_cannot_read_is_rejected_without_retries(vllm: VllmServer) -> None:
    client = ocr_client(vllm)
    try:
        with pytest.raises(OcrRejected) as info:
            await client.ocr_page(b"not a PNG", "image/png", deadline=time.monotonic() + 600)
    finally:
        await client.aclose()
    assert info.value.reason == "ocr_http_400"
    assert info.value.usage is not None and info.value.usage.attempts == 1


async def test_two_images_in_one_prompt_are_refused_with_400(vllm: VllmServer) -> None:
    """--limit-mm-per-prompt '{"image": 1}', as LightOnOCR's model card asks."""
    png = page_png(300, 200)
    async with httpx.AsyncClient(base_url=vllm.url, timeout=300) as http:
        with pytest.raises(CompletionRefused) as info:
            await stream_completion(http, "/v1/chat/completions", body(vllm, png, png))
    response = info.value.response
    assert response.status_code == 400
    assert vllm_error(response)["param"] == "image"


async def test_an_unknown_model_is_404_and_retried_as_configuration_trouble(
    vllm: VllmServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The retries' clock is a fake one that moves only as the client backs off, so the
    # budget runs out after a few 404s however long each real request takes here.
    clock = FakeClock()
    settings = Settings(ocr_url=vllm.url, ocr_model=vllm.model_id)
    params = OcrParams.from_settings(settings, model="lightonai/no-such-model")
    client = OcrClient(
        httpx.AsyncClient(base_url=vllm.url, timeout=None), params, clock=clock, sleep=clock.sleep
    )
    try:
        with pytest.raises(OcrUnavailable) as info:
            await client.ocr_page(page_png(300, 200), "image/png", deadline=clock() + 60)
    finally:
        await client.aclose()
    assert info.value.reason == "ocr_unavailable:404"
    assert clock.sleeps, "the 404 was not retried"
    assert "configuration trouble" in caplog.text
    response = httpx.post(
        f"{vllm.url}/v1/chat/completions",
        json=body(vllm, page_png(300, 200), model="lightonai/no-such-model"),
        timeout=300,
    )
    assert response.status_code == 404 and vllm_error(response)["type"] == "NotFoundError"


def test_max_tokens_that_fill_the_context_are_refused_with_400(vllm: VllmServer) -> None:
    """vLLM 0.30 refuses max_tokens >= max_model_len outright (below it, a prompt that
    does not fit with max_tokens is clamped to the context instead)."""
    response = httpx.post(
        f"{vllm.url}/v1/chat/completions",
        json=body(vllm, page_png(300, 200), max_tokens=8192),
        timeout=300,
    )
    assert response.status_code == 400
    assert "maximum context length is 8192" in vllm_error(response)["message"]


def test_an_image_over_the_pixel_limit_is_a_500(vllm: VllmServer) -> None:
    """A decompression-bomb-sized image (PIL's limit) is an InternalServerError, the same
    every time: retrying it cannot help."""
    buffer = io.BytesIO()
    Image.new("1", (20_000, 10_000), 1).save(buffer, format="PNG")
    response = httpx.post(
        f"{vllm.url}/v1/chat/completions", json=body(vllm, buffer.getvalue()), timeout=300
    )
    assert response.status_code == 500
    error = vllm_error(response)
    assert error["type"] == "InternalServerError" and "exceeds limit" in error["message"]


@pytest.mark.parametrize(
    "size", [A4, (1190, 1540), (1540, 866), (411, 1540), SLIVER, (300, 100)],
    ids=["A4", "Letter", "slide", "receipt", "sliver", "small"],
)  # fmt: skip
def test_image_tokens_are_ceil_w_28_times_ceil_h_28_after_scaling_to_1540(
    vllm: VllmServer, size: tuple[int, int]
) -> None:
    response = httpx.post(
        f"{vllm.url}/v1/chat/completions",
        json=body(vllm, page_png(*size), max_tokens=1),
        timeout=300,
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == image_tokens(*size) + TEMPLATE_TOKENS


def test_the_gpu_smoke_test_passes_against_vllm_all_but_its_text_check(vllm: VllmServer) -> None:
    """gpu_image/smoke.py, the script a real deployment is checked with, against vLLM's own
    server: health, the model list and one OCR request pass; only reading the known sentence
    fails, since this model cannot read."""
    smoke = [sys.executable, str(GPU_IMAGE / "smoke.py"), "--url", vllm.url, "--model",
             vllm.model_id, "--wait", "60"]  # fmt: skip
    passed = subprocess.run([*smoke, "--no-text-check"], capture_output=True, text=True)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "smoke test passed" in passed.stdout
    read = subprocess.run(smoke, capture_output=True, text=True)
    assert read.returncode == 1
    assert "ok  GET /v1/models" in read.stdout and "FAIL" in read.stderr


async def test_the_worker_reads_vllms_context_length_and_checks_its_settings(
    vllm: VllmServer,
) -> None:
    fits = Settings(ocr_url=vllm.url, ocr_model=vllm.model_id)
    too_long = Settings(ocr_url=vllm.url, ocr_model=vllm.model_id, ocr_max_tokens=6000)
    client = ocr_client(vllm)
    try:
        assert await check_ocr_context(client, fits) == 8192
        with pytest.raises(ContextTooShort, match="OCRPIPE_OCR_MAX_TOKENS=6000"):
            await check_ocr_context(client, too_long)
    finally:
        await client.aclose()
