"""Streamed completions: the same text as a non-streamed reply, a loop cut early with the GPU
freed at once, the caller's deadline honoured, and malformed streams refused."""

from __future__ import annotations

import asyncio
import itertools
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from ocrpipe.local import engine
from ocrpipe.local.boxes_to_markdown import rect
from ocrpipe.local.faults import FaultPlan, create_app, serve_in_background
from ocrpipe.worker.completion_stream import (
    BYTES_PER_TOKEN,
    REPETITION,
    CompletionRefused,
    MalformedStream,
    StreamErrorEvent,
    stream_completion,
)
from tests.test_engine import BLANK, FakeEngine
from tests.test_faults import CHAT, LONG_LOOP_TOKENS, chat, page, settled

TRICKY = (
    "# Überschrift — 價格\n\n<table><tr><td>1\u00a0234,50 €</td><td>  x </td></tr></table>\n\n"
    "$$\\frac{a}{b}$$\ttab\n\n\n- item   with  spaces\n\n"
)
TEXTS = ["plain words", TRICKY, "", "trailing blank lines\n\n\n"]


@pytest.fixture
def fault_server() -> Iterator[Callable[[FaultPlan], str]]:
    """Start a live fault server (uvicorn, real sockets) per plan; yields its base URL."""
    with_servers: list[Any] = []

    def start(plan: FaultPlan) -> str:
        server = serve_in_background(create_app(plan))
        with_servers.append(server)
        return server.__enter__()

    yield start
    for server in reversed(with_servers):
        server.__exit__(None, None, None)


@pytest.mark.parametrize("text", TEXTS, ids=["plain", "tricky", "empty", "trailing"])
async def test_streamed_text_is_byte_identical_to_the_non_streamed_reply(
    fault_server: Callable[[FaultPlan], str], text: str
) -> None:
    url = fault_server(FaultPlan(tokens_per_s=0))
    body = chat(page("identical", text or None))
    async with httpx.AsyncClient(base_url=url) as http:
        plain = (await http.post(CHAT, json=body)).json()
        streamed = await stream_completion(http, CHAT, body)
    assert streamed.text == plain["choices"][0]["message"]["content"]
    assert streamed.text.encode() == plain["choices"][0]["message"]["content"].encode()
    assert streamed.finish_reason == plain["choices"][0]["finish_reason"] == "stop"
    assert streamed.completion_tokens == plain["usage"]["completion_tokens"]
    assert streamed.prompt_tokens == plain["usage"]["prompt_tokens"]
    assert not streamed.cut


async def test_the_local_engine_streams_the_same_markdown() -> None:
    boxes = [rect(10, 10, 200, 40, "Total  due"), rect(10, 41, 200, 71, "1 234,50 € — paid")]
    app = engine.create_app(FakeEngine(boxes))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as http:
            body = chat(BLANK)
            plain = (await http.post(CHAT, json=body)).json()
            streamed = await stream_completion(http, CHAT, body)
    assert streamed.text == plain["choices"][0]["message"]["content"] != ""
    assert (streamed.finish_reason, streamed.cut) == ("stop", False)
    assert streamed.completion_tokens == plain["usage"]["completion_tokens"]


async def test_a_loop_is_cut_early_and_the_server_stops_generating(
    fault_server: Callable[[FaultPlan], str],
) -> None:
    """The reply is cut after a few hundred tokens of a 12,000-token loop (6 s at 2000
    tokens/s): a client that read on, or a server that went on generating after the client
    left, would count the whole loop."""
    url = fault_server(FaultPlan(plength=1.0, tokens_per_s=2000))
    loop = chat(page("loopy"), 0.2, max_tokens=LONG_LOOP_TOKENS)
    async with httpx.AsyncClient(base_url=url) as http:
        cut = await stream_completion(http, CHAT, loop)
        after = settled(url)
        answered = await stream_completion(http, CHAT, chat(page("loopy"), 0.3))
    assert (cut.cut, cut.finish_reason) == (True, REPETITION)
    assert "the same line again" in cut.text
    assert 250 <= cut.completion_tokens <= 500  # where the rule cuts this loop, read or not
    assert after["abandoned"] == 1
    assert cut.completion_tokens <= after["completion_tokens"] < LONG_LOOP_TOKENS
    assert (answered.finish_reason, answered.cut) == ("stop", False)


async def test_without_a_rule_a_loop_runs_to_max_tokens(
    fault_server: Callable[[FaultPlan], str],
) -> None:
    url = fault_server(FaultPlan(plength=1.0, tokens_per_s=20000))
    async with httpx.AsyncClient(base_url=url) as http:
        reply = await stream_completion(http, CHAT, chat(page("loopy"), 0.2), rule=None)
        after = settled(url)
    assert (reply.finish_reason, reply.cut, reply.completion_tokens) == ("length", False, 4096)
    assert after["completion_tokens"] == 4096
    assert after["abandoned"] == 0


async def test_the_callers_deadline_cancels_the_stream_and_the_server_request(
    fault_server: Callable[[FaultPlan], str],
) -> None:
    """The loop would take two minutes (12,000 tokens at 100 tokens/s) and nothing cuts it
    but the caller's cancel scope, whose deadline strikes once the reply is streaming: a
    cancel that did not close the response would leave the call, and the server's
    generation, running to the end."""
    url = fault_server(FaultPlan(plength=1.0, tokens_per_s=100))
    loop = chat(page("slow"), 0.2, max_tokens=LONG_LOOP_TOKENS)

    async def strike_once_streaming(deadline: anyio.CancelScope) -> None:
        async with httpx.AsyncClient(base_url=url) as watcher:
            while (await watcher.get("/stats")).json()["streamed"] == 0:
                await asyncio.sleep(0.02)
        deadline.deadline = anyio.current_time()  # the caller's deadline strikes now

    async with httpx.AsyncClient(base_url=url) as http:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(600) as deadline:
                strike = asyncio.create_task(strike_once_streaming(deadline))
                await stream_completion(http, CHAT, loop, rule=None)
        await strike
        after = settled(url)
    assert after["abandoned"] == 1
    assert after["completion_tokens"] < LONG_LOOP_TOKENS


# ------------------------------------------------------------- protocol, without a server


def sse(*events: str) -> bytes:
    return "".join(f"data: {event}\n\n" for event in events).encode()


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> str:
    delta = {} if content is None else {"content": content}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def mock(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> tuple[httpx.AsyncClient, list[Any]]:
    sent: list[Any] = []
    headers = {"content-type": "text/event-stream", **(headers or {})}

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(status, content=body, headers=headers)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://m"), sent


async def test_the_request_asks_for_a_stream_with_usage() -> None:
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}})
    http, sent = mock(sse(chunk("a"), chunk(" b", "stop"), usage, "[DONE]"))
    async with http:
        reply = await stream_completion(http, CHAT, {"model": "m", "max_tokens": 5})
    assert sent[0]["stream"] is True
    assert sent[0]["stream_options"]["include_usage"] is True
    assert sent[0]["max_tokens"] == 5
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens) == ("a b", 7, 2)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (sse("{not json"), "not JSON"),
        (sse(json.dumps({"id": "x"})), "no choices"),
        (sse(chunk("half a rep"), "[DONE]"), "no finish_reason"),
        (sse(chunk("cut off")), "no finish_reason"),
        (sse(json.dumps({"choices": [{"delta": {"content": 5}}]})), "not a string"),
    ],
    ids=["bad json", "no choices", "no finish", "no end", "content not text"],
)
async def test_malformed_streams_raise_a_retryable_error(body: bytes, message: str) -> None:
    http, _ = mock(body)
    async with http:
        with pytest.raises(MalformedStream, match=message) as caught:
            await stream_completion(http, CHAT, {"model": "m"})
    assert caught.value.push_status == 503  # retried, never a silent empty page


async def test_an_error_event_is_server_trouble_with_what_the_server_said() -> None:
    error = {"message": "engine dead", "type": "InternalServerError", "param": None, "code": 500}
    running = {"prompt_tokens": 9, "completion_tokens": 2}
    http, _ = mock(sse(chunk("half", usage=running), chunk(" a", usage=running),
                       json.dumps({"error": error}), "[DONE]"))  # fmt: skip
    async with http:
        with pytest.raises(StreamErrorEvent) as caught:
            await stream_completion(http, CHAT, {"model": "m"})
    assert not isinstance(caught.value, MalformedStream)
    assert caught.value.push_status == 503
    assert str(caught.value).endswith("InternalServerError 500: engine dead")
    assert (caught.value.prompt_tokens, caught.value.completion_tokens) == (9, 2)


async def test_a_refused_request_carries_the_response_for_the_caller() -> None:
    http, _ = mock(b'{"object": "error", "code": 429}', 429, {"retry-after": "7"})
    async with http:
        with pytest.raises(CompletionRefused) as caught:
            await stream_completion(http, CHAT, {"model": "m"})
    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.json()["code"] == 429


async def test_a_server_that_does_not_stream_is_read_whole() -> None:
    reply = engine.chat_completion_body("m", "whole page", "stop", 3, 2)
    http, _ = mock(json.dumps(reply).encode(), headers={"content-type": "application/json"})
    async with http:
        result = await stream_completion(http, CHAT, {"model": "m"})
    assert (result.text, result.finish_reason, result.completion_tokens) == (
        "whole page",
        "stop",
        2,
    )


# --------------------------------------------------------------------- a reply is bounded


def endless(make: Callable[[int], bytes]) -> tuple[httpx.AsyncClient, list[int]]:
    """A server whose body never ends: ``make(i)`` is its i-th piece. Counts what it sent."""
    sent = [0]

    async def body() -> AsyncIterator[bytes]:
        for index in itertools.count():
            piece = make(index)
            sent[0] += len(piece)
            yield piece

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://m"), sent


@pytest.mark.parametrize(
    "make",
    [
        lambda i: sse(chunk(f" w{i}")),  # distinct words for ever: nothing to call a loop
        lambda i: b"data: " + b"x" * 65536 if i == 0 else b"x" * 65536,  # one endless line
        lambda i: sse(chunk("")),  # events without text for ever
    ],
    ids=["words", "one line", "empty events"],
)
async def test_a_reply_past_its_bound_is_cut_as_a_loop_with_flat_memory(
    make: Callable[[int], bytes],
) -> None:
    http, sent = endless(make)
    tracemalloc.start()
    try:
        async with http:
            reply = await stream_completion(http, CHAT, {"model": "m", "max_tokens": 1000})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (reply.cut, reply.overlong, reply.finish_reason) == (True, True, REPETITION)
    assert len(reply.text.encode()) <= BYTES_PER_TOKEN * 1000
    assert sent[0] < 4 * 2**20  # stopped reading: not the 20 MB such a server would send
    assert peak < 2 * 2**20


async def test_a_non_streamed_reply_is_bounded_and_judged_like_a_stream() -> None:
    huge = engine.chat_completion_body("m", "w " * 100_000, "stop", 3, 100_000)
    looping = engine.chat_completion_body("m", "head\n" + "| a | b |\n" * 1000, "length", 3, 4096)
    replies = []
    for body in (huge, looping):
        http, _ = mock(json.dumps(body).encode(), headers={"content-type": "application/json"})
        async with http:
            replies.append(await stream_completion(http, CHAT, {"model": "m", "max_tokens": 1000}))
    assert (replies[0].cut, replies[0].overlong) == (True, True)
    assert (replies[1].cut, replies[1].overlong, replies[1].finish_reason) == (
        True,
        False,
        REPETITION,
    )
    assert replies[1].text.count("| a | b |") <= 200  # where a stream would have been cut
