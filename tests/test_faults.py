"""The fault-injecting OCR server: deterministic faults, stats, cold start, batching, and real
connection resets and hangs against a live uvicorn server."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from starlette.applications import Starlette

from ocrpipe.local.engine import DEFAULT_MODEL
from ocrpipe.local.faults import LOOP_PHRASE, FaultPlan, create_app, main, serve_in_background
from ocrpipe.local.readiness import START_S, wait_until_ready
from ocrpipe.settings import Settings
from ocrpipe.testing.waiting import wait_for
from ocrpipe.worker.ocr_client import OcrParams, image_data_url
from tests.test_engine import vllm_error

CHAT = "/v1/chat/completions"
OCR = OcrParams.from_settings(Settings())  # the model, top_p and max_tokens the worker sends


def page(
    name: str, text: str | None = None, loop: str | None = None, size: tuple[int, int] = (56, 84)
) -> bytes:
    """A PNG of one colour (small, or ``size``), different for each name, optionally carrying
    an ``ocrpipe-text`` chunk (its answer) and an ``ocrpipe-loop`` chunk (the block it loops
    on)."""
    shade = int.from_bytes(hashlib.sha256(name.encode()).digest()[:3], "big")
    info = PngInfo()
    if text is not None:
        info.add_text("ocrpipe-text", text)
    if loop is not None:
        info.add_text("ocrpipe-loop", loop)
    out = io.BytesIO()
    Image.new("RGB", size, shade).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def chat(image: bytes, temperature: float = 0.2, **extra: Any) -> dict[str, Any]:
    """The worker's request for ``image`` at ``temperature``, with ``extra`` fields."""
    return {**OCR.request(image_data_url(image), temperature), **extra}


def sha(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


# A loop long enough that a server which goes on generating after its client left is caught
# by the count alone: at the rates used here it runs for seconds after the client's cut.
LONG_LOOP_TOKENS = 12_000


def settled(url: str, quiet_s: float = 60) -> dict[str, int]:
    """A live fault server's stats once it serves nothing any more: a stream or a hang its
    client left ends when the server notices, not at once. Fails if the stats stay the same,
    still serving, for ``quiet_s`` s."""
    return wait_for(
        lambda: dict(httpx.get(f"{url}/stats", timeout=30).json()),
        lambda stats: stats["in_flight"] == stats["hanging"] == 0,
        what="the fault server to stop serving",
        quiet_s=quiet_s,
    )


async def client_for(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://faults") as client:
            yield client


Connect = Callable[[FaultPlan], AsyncIterator[httpx.AsyncClient]]


@pytest.fixture
def connect() -> Connect:
    return lambda plan: client_for(create_app(plan))


async def statuses(client: httpx.AsyncClient, image: bytes, times: int) -> list[int]:
    return [(await client.post(CHAT, json=chat(image))).status_code for _ in range(times)]


FLAKY = FaultPlan(seed=7, p503=0.3, p429=0.3)


async def test_same_seed_gives_each_page_the_same_faults_whatever_the_order(
    connect: Connect,
) -> None:
    target, others = page("target"), [page(f"other-{i}") for i in range(3)]
    async for client in connect(FLAKY):
        first_run = await statuses(client, target, 12)
    async for client in connect(FLAKY):
        for other in others:  # other pages first, interleaved: must not shift the target's faults
            await statuses(client, other, 2)
        second_run = await statuses(client, target, 12)
    assert first_run == second_run
    assert {200, 503, 429} <= set(first_run)
    async for client in connect(FaultPlan(seed=8, p503=0.3, p429=0.3)):
        assert await statuses(client, target, 12) != first_run


async def test_answer_is_derived_from_the_image_only(connect: Connect) -> None:
    image = page("with text", "Hello from the PNG")
    async for client in connect(FaultPlan()):
        replies = [(await client.post(CHAT, json=chat(image))).json() for _ in range(2)]
    contents = [reply["choices"][0]["message"]["content"] for reply in replies]
    assert contents[0] == contents[1] == f"page-sha256:{sha(image)}\n\nHello from the PNG"
    assert replies[0]["choices"][0]["finish_reason"] == "stop"
    assert replies[0]["id"] != replies[1]["id"]


async def test_stats_count_outcomes_and_reset_starts_a_new_run(connect: Connect) -> None:
    image = page("counted")
    async for client in connect(FLAKY):
        first = await statuses(client, image, 10)
        await client.post(CHAT, json=chat(image, model="other-model"))
        stats = (await client.get("/stats")).json()
        assert stats["total"] == 11
        assert stats["invalid"] == 1
        assert stats["ok"] == first.count(200)
        assert stats["503"] == first.count(503)
        assert stats["429"] == first.count(429)
        assert stats["reset"] == stats["hang"] == stats["length"] == 0

        reset = await client.post("/stats/reset")
        assert reset.status_code == 200
        assert reset.json()["total"] == 0
        assert await statuses(client, image, 10) == first


async def test_429_carries_retry_after(connect: Connect) -> None:
    async for client in connect(FaultPlan(p429=1.0, retry_after=7)):
        response = await client.post(CHAT, json=chat(page("busy")))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert vllm_error(response)["code"] == 429


async def test_503_has_a_vllm_like_error_body(connect: Connect) -> None:
    async for client in connect(FaultPlan(p503=1.0)):
        response = await client.post(CHAT, json=chat(page("down")))
    assert response.status_code == 503
    assert vllm_error(response)["code"] == 503


def test_a_cold_start_refuses_connections_then_serves() -> None:
    """As vLLM does (tests/test_vllm_contract.py): nothing listens while the model loads, so
    a connection is refused, never answered 503; then the server answers."""
    plan = FaultPlan(cold_seconds=1.0)
    with (
        serve_in_background(create_app(plan), cold_seconds=plan.cold_seconds) as url,
        httpx.Client(base_url=url) as client,
    ):
        with pytest.raises(httpx.ConnectError):
            client.get("/health")
        answers: list[httpx.Response] = []

        def answered() -> bool:
            try:
                answers.append(client.get("/health"))
            except httpx.ConnectError:
                return False
            return True

        wait_until_ready(answered, what="the fault server after its cold start", timeout=START_S)
        assert answers[0].status_code == 200  # its first answer, not a 503 while it loads
        assert client.post(CHAT, json=chat(page("early"))).status_code == 200
        stats = client.get("/stats").json()
    assert (stats["ok"], stats["total"]) == (1, 1)
    assert "cold" not in stats  # nothing reaches the app while it is cold


async def test_loop_fault_is_length_at_low_temperature_and_ok_above(connect: Connect) -> None:
    image = page("loopy")
    async for client in connect(FaultPlan(plength=1.0)):
        looped = (await client.post(CHAT, json=chat(image, 0.2, max_tokens=50))).json()
        answered = (await client.post(CHAT, json=chat(image, 0.5, max_tokens=50))).json()
    assert looped["choices"][0]["finish_reason"] == "length"
    assert looped["usage"]["completion_tokens"] == 50
    assert looped["choices"][0]["message"]["content"].count("the same line again") > 5
    assert answered["choices"][0]["finish_reason"] == "stop"
    assert answered["choices"][0]["message"]["content"] == f"page-sha256:{sha(image)}"


async def test_loop_always_loops_at_every_temperature(connect: Connect) -> None:
    image = page("hopeless")
    async for client in connect(FaultPlan(plength=1.0, loop_always=True)):
        for temperature in (0.2, 0.3, 0.5, 0.8):
            reply = (await client.post(CHAT, json=chat(image, temperature))).json()
            assert reply["choices"][0]["finish_reason"] == "length", temperature


async def test_batch_model_serves_at_most_k_pages_at_once(connect: Connect) -> None:
    pages = [page(f"batch-{i}") for i in range(6)]
    async for client in connect(FaultPlan(batch_size=2, service_time=0.2)):
        replies = await asyncio.gather(*(client.post(CHAT, json=chat(p)) for p in pages))
        stats = (await client.get("/stats")).json()
    assert [reply.status_code for reply in replies] == [200] * 6
    assert stats["max_in_flight"] == 2
    assert stats["ok"] == 6


async def test_requests_are_validated_like_the_engine(connect: Connect) -> None:
    async for client in connect(FaultPlan(p503=1.0)):
        wrong_model = await client.post(CHAT, json=chat(page("x"), model="gpt-4o"))
        no_image = await client.post(
            CHAT, json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
        )
        models = await client.get("/v1/models")
    assert wrong_model.status_code == 404
    assert vllm_error(wrong_model)["type"] == "NotFoundError"
    assert no_image.status_code == 400
    assert models.json()["data"][0]["id"] == DEFAULT_MODEL


async def test_in_process_reset_raises_connection_reset(connect: Connect) -> None:
    async for client in connect(FaultPlan(preset=1.0)):
        with pytest.raises(ConnectionResetError):
            await client.post(CHAT, json=chat(page("reset")))


def test_reset_is_a_transport_error_on_a_live_server() -> None:
    with serve_in_background(create_app(FaultPlan(preset=1.0))) as url, httpx.Client() as client:
        with pytest.raises(httpx.TransportError):
            client.post(f"{url}{CHAT}", json=chat(page("reset")))
        assert client.get(f"{url}/health").status_code == 200  # the server itself is fine
        assert client.get(f"{url}/stats").json()["reset"] == 1


def test_hang_outlives_the_client_timeout_and_ends_on_disconnect() -> None:
    plan = FaultPlan(phang=1.0, hang_seconds=3600)
    with serve_in_background(create_app(plan)) as url, httpx.Client() as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{url}{CHAT}", json=chat(page("hang")), timeout=0.5)
        stats = settled(url, quiet_s=30)  # the hang itself would last an hour
    assert stats["hang"] == 1


@pytest.mark.parametrize(
    "plan",
    [
        {"p503": 0.6, "p429": 0.5},
        {"plength": 1.5},
        {"p503": -0.1},
        {"batch_size": -1},
        {"hang_seconds": -1},
        {"p503": 0.5, "pabort": 0.3, "pstream_error": 0.3},
        {"first_attempts": -1},
    ],
)
def test_impossible_plans_are_refused(plan: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**plan)


def test_cli_refuses_an_impossible_plan() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--p503", "0.7", "--p429", "0.6"])
    assert exc.value.code == 2


def events(body: bytes) -> list[Any]:
    """The data of each Server-Sent Event, JSON-decoded except ``[DONE]``."""
    found: list[Any] = []
    for block in body.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            data = block.removeprefix("data: ")
            found.append(data if data == "[DONE]" else json.loads(data))
    return found


async def test_streamed_reply_is_shaped_like_vllms_event_stream(connect: Connect) -> None:
    image = page("streamed", "one two  three\n")
    body = chat(image, stream=True, stream_options={"include_usage": True})
    async for client in connect(FaultPlan()):
        response = await client.post(CHAT, json=body)
        plain = (await client.post(CHAT, json=chat(image))).json()
    assert response.headers["content-type"].startswith("text/event-stream")
    first, *chunks, usage, done = events(response.content)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["object"] == "chat.completion.chunk"
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks]
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]
    assert len(pieces) == plain["usage"]["completion_tokens"]  # one token per chunk
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "stop"]
    assert usage["choices"] == []
    assert usage["usage"] == plain["usage"]
    assert done == "[DONE]"


async def test_streamed_loop_runs_to_max_tokens_with_running_usage(connect: Connect) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = chat(page("loopy"), 0.2, max_tokens=300, stream=True, stream_options=options)
    async for client in connect(FaultPlan(plength=1.0)):
        found = events((await client.post(CHAT, json=body)).content)
        stats = (await client.get("/stats")).json()
    chunks = [e for e in found[1:-1] if e["choices"]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert [c["usage"]["completion_tokens"] for c in chunks[-2:]] == [299, 300]
    assert (
        "".join(c["choices"][0]["delta"]["content"] for c in chunks).count(LOOP_PHRASE) == 74
    )  # 4 tokens each
    assert (stats["length"], stats["streamed"], stats["completion_tokens"]) == (1, 1, 300)


def test_streamed_tokens_come_at_the_set_rate() -> None:
    """1000 tokens at 2000 tokens/s take at least half a second: a server that ignored the
    rate would answer at once. Only the lower bound is a test (a busy machine only adds
    time); that the server keeps to the rate, not slower, is a figure of ``python -m bench
    loops`` (its uncut streamed arm's wall-clock time against tokens / R)."""
    body = chat(page("paced"), 0.2, max_tokens=1000, stream=True)
    with serve_in_background(create_app(FaultPlan(plength=1.0, tokens_per_s=2000))) as url:
        started = time.monotonic()
        response = httpx.post(f"{url}{CHAT}", json=body, timeout=30)
        seconds = time.monotonic() - started
        stats = httpx.get(f"{url}/stats").json()
    assert response.status_code == 200
    assert seconds >= 0.45
    assert stats["completion_tokens"] == 1000


def test_a_stream_left_early_stops_generating() -> None:
    """The client leaves after about 50 tokens of a 12,000-token loop (12 s at 1000 tokens/s):
    a server that went on generating for a client that is gone would count the whole loop."""
    body = chat(page("left"), 0.2, max_tokens=LONG_LOOP_TOKENS, stream=True)
    plan = FaultPlan(plength=1.0, tokens_per_s=1000)
    with serve_in_background(create_app(plan)) as url, httpx.Client() as client:
        with client.stream("POST", f"{url}{CHAT}", json=body) as response:
            for index, _ in enumerate(response.iter_lines()):
                if index > 100:  # an event is two lines: about 50 tokens read
                    break
        stats = settled(url)
    assert stats["abandoned"] == 1
    assert 50 <= stats["completion_tokens"] < LONG_LOOP_TOKENS


def test_cli_takes_a_token_rate_and_refuses_a_negative_one() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--tokens-per-s", "-5"])
    assert exc.value.code == 2
    assert FaultPlan(tokens_per_s=0).tokens_per_s == 0


# --- replies that break after they started, loops of any shape, endless replies, the context

WORDS_30 = " ".join(f"word{i}" for i in range(1, 31))


@pytest.mark.parametrize("reason", ["abort", "error"])
async def test_a_broken_reply_stops_a_third_of_the_way_then_the_page_answers(
    connect: Connect, reason: str
) -> None:
    image = page(f"broken-{reason}", WORDS_30)
    plan = FaultPlan(
        pabort=1.0 if reason == "abort" else 0.0,
        perror=1.0 if reason == "error" else 0.0,
        first_attempts=1,
    )
    async for client in connect(plan):
        broken = (await client.post(CHAT, json=chat(image))).json()
        whole = (await client.post(CHAT, json=chat(image))).json()
        stats = (await client.get("/stats")).json()
    assert broken["choices"][0]["finish_reason"] == reason
    assert broken["usage"]["completion_tokens"] == 10  # a third of 31 tokens, rounded
    assert whole["choices"][0]["message"]["content"].startswith(
        broken["choices"][0]["message"]["content"]
    )
    assert whole["choices"][0]["message"]["content"].endswith("word30")
    assert (stats[reason], stats["ok"]) == (1, 1)


async def test_an_engine_that_dies_mid_stream_ends_it_with_vllms_error_event(
    connect: Connect,
) -> None:
    image = page("engine-dies", WORDS_30)
    async for client in connect(FaultPlan(pstream_error=1.0)):
        streamed = events((await client.post(CHAT, json=chat(image, stream=True))).content)
        unstreamed = await client.post(CHAT, json=chat(image))
    *chunks, error, done = streamed[1:]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 10
    assert error == {
        "error": {
            "message": "injected fault: the engine died mid-reply",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    assert done == "[DONE]"
    assert unstreamed.status_code == 500
    assert vllm_error(unstreamed)["type"] == "InternalServerError"


@pytest.mark.parametrize(
    ("block", "pieces"),
    [
        ("\n", ["\n"]),
        ("  ", [" ", " "]),
        ("<tr><td>0</td></tr>\n", ["<tr", "><t", "d>0", "</t", "d><", "/tr", ">\n"]),
    ],
    ids=["newline", "spaces", "table row"],
)
async def test_a_page_loops_on_the_block_it_carries(
    connect: Connect, block: str, pieces: list[str]
) -> None:
    image = page(f"loop-{block!r}", "Title", loop=block)
    body = chat(image, max_tokens=40, stream=True)
    async for client in connect(FaultPlan()):
        found = events((await client.post(CHAT, json=body)).content)
        answered = (await client.post(CHAT, json=chat(image, 0.5))).json()
    deltas = [e["choices"][0]["delta"]["content"] for e in found[1:-1]]
    assert len(deltas) == 40 and found[-2]["choices"][0]["finish_reason"] == "length"
    assert deltas[2:] == (pieces * 40)[:38]  # after "page-sha256:..." and "Title"
    assert answered["choices"][0]["finish_reason"] == "stop"


def test_an_endless_reply_ignores_max_tokens_and_stops_when_the_client_leaves() -> None:
    body = chat(page("endless"), max_tokens=10, stream=True)
    plan = FaultPlan(endless=True, tokens_per_s=0)
    with serve_in_background(create_app(plan)) as url, httpx.Client() as client:
        with client.stream("POST", f"{url}{CHAT}", json=body) as response:
            pieces = []
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    pieces.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
                if len(pieces) > 1000:
                    break
        stats = settled(url)  # an endless reply never ends by itself
    assert len(set(pieces[2:])) == len(pieces[2:])  # distinct words: no loop to spot
    assert (stats["endless"], stats["abandoned"]) == (1, 1)


async def test_the_context_clamps_a_reply_and_refuses_max_tokens_as_large_as_it() -> None:
    image = page("long", " ".join(f"w{i}" for i in range(300)))  # 56 x 84 px: 6 image tokens
    app = create_app(FaultPlan(), max_model_len=100)
    async for client in client_for(app):
        clamped = (await client.post(CHAT, json=chat(image, max_tokens=99))).json()
        refused = await client.post(CHAT, json=chat(image, max_tokens=100))
    assert clamped["choices"][0]["finish_reason"] == "length"
    assert clamped["usage"] == {"prompt_tokens": 6, "completion_tokens": 94, "total_tokens": 100}
    assert refused.status_code == 400
    assert "maximum context length" in vllm_error(refused)["message"]
