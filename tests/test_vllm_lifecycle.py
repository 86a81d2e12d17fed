"""The worker's OCR client across a vLLM server's life: asked while the server is still
loading (vLLM refuses connections until it is ready), and when vLLM's engine dies in the
middle of a reply (the 200 stream ends with an error event). These need a server of their
own, started and killed here; the session's server (``vllm``) is left alone."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ocrpipe.testing.tiny_lightonocr import TEMPLATE_TOKENS
from ocrpipe.testing.vllm_server import VllmServer
from ocrpipe.worker.completion_stream import StreamErrorEvent, stream_completion
from tests.test_vllm_contract import body, image_tokens, ocr_client, page_png

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def starting_vllm(
    vllm_venv: Path, vllm_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """A second server, started but not waited for."""
    server = VllmServer(vllm_venv, vllm_model, tmp_path_factory.mktemp("vllm-lifecycle"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class TokenTap(httpx.AsyncBaseTransport):
    """httpx's own transport, with ``generating`` set once a streamed reply's body carries
    generated text: the event that a reply is under way, in place of polling a gauge."""

    TEXT = re.compile(rb'"content":"[^"]')

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.generating = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tapped(response.stream, self),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Tapped(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, tap: TokenTap) -> None:
        self._stream, self._tap = stream, tap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            if TokenTap.TEXT.search(chunk):
                self._tap.generating.set()
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


async def watch(server: VllmServer) -> None:
    """Return when the server process exits (a test's task then fails instead of waiting)."""
    assert server.process is not None
    while server.process.poll() is None:
        await asyncio.sleep(0.5)


async def test_a_page_sent_while_vllm_loads_is_answered_once_it_is_ready(
    starting_vllm: VllmServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ocrpipe")
    client = ocr_client(starting_vllm)
    try:
        page = asyncio.ensure_future(
            client.ocr_page(page_png(600, 800), "image/png", deadline=time.monotonic() + 500)
        )
        died = asyncio.ensure_future(watch(starting_vllm))
        await asyncio.wait({page, died}, return_when=asyncio.FIRST_COMPLETED)
        died.cancel()
        if not page.done():
            page.cancel()
            pytest.fail(f"vLLM exited while loading:\n{starting_vllm.log_tail()}")
        result = page.result()
    finally:
        await client.aclose()
    refused = client.stats.by_cause.get("connection", 0)
    assert refused >= 1, client.stats.by_cause
    assert result.usage.finish_reason == "stop"
    assert result.usage.attempts == refused + 1
    # Only the one reply was read and billed.
    assert result.usage.prompt_tokens == image_tokens(600, 800) + TEMPLATE_TOKENS
    # The wait was not silent: the worker said the server refused, and for how long.
    assert re.search(r"refuses connections.*waited \d+ s", caplog.text)
    assert re.search(r"answers again after \d+ s", caplog.text)


async def test_when_the_engine_dies_mid_reply_the_stream_ends_with_an_error_event(
    starting_vllm: VllmServer,
) -> None:
    """Killing vLLM's engine core (the process that runs the model) while a reply streams:
    the API server ends the 200 stream with ``data: {"error": ...}``, which the worker
    reads as server trouble (retryable, never a page), then shuts itself down."""
    starting_vllm.wait_ready()
    request = body(starting_vllm, page_png(300, 200), max_tokens=4000, ignore_eos=True)
    tap = TokenTap()
    async with httpx.AsyncClient(base_url=starting_vllm.url, timeout=300, transport=tap) as http:
        reply = asyncio.ensure_future(stream_completion(http, "/v1/chat/completions", request))
        generating = asyncio.ensure_future(tap.generating.wait())
        await asyncio.wait({reply, generating}, return_when=asyncio.FIRST_COMPLETED)
        generating.cancel()
        # Killed at the first text read, with thousands of tokens still to come.
        assert not reply.done(), f"the reply ended before any text was read: {reply}"
        os.kill(starting_vllm.engine_core_pid(), signal.SIGKILL)
        with pytest.raises(StreamErrorEvent, match="error mid-reply") as info:
            await reply
    assert "InternalServerError 500" in str(info.value)
    assert info.value.completion_tokens > 0  # what it cost until then is known
    assert starting_vllm.process is not None
    starting_vllm.process.wait(timeout=120)  # vLLM stops serving without its engine
