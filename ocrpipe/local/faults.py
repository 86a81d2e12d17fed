"""A fault-injecting OCR server for chaos tests and benchmarks.

It speaks the same API subset as vLLM and the local engine (:mod:`ocrpipe.local.engine`):
``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (same validation, same
reply shape), but it runs no OCR. A page's answer is ``page-sha256:<hex>`` of the decoded
image bytes, followed by the value of the PNG text chunk ``ocrpipe-text`` when there is one,
so identical inputs always get identical outputs whatever faults happen on the way.

What can go wrong, and how each request's fate is decided (:func:`decide`):

- ``503`` (vLLM-like error body), ``429`` (with ``Retry-After: N``), ``reset`` (the TCP
  connection is reset without an answer) and ``hang`` (no answer for ``hang_seconds``, given
  up as soon as the client disconnects, then 504) are drawn for each request from
  ``sha256(seed, sha256(image), attempt)``, where ``attempt`` counts the requests seen for
  that image (1, 2, ...). Reruns with the same seed give every page the same sequence of
  faults whatever order the pages arrive in.
- ``abort``, ``error`` (shares ``pabort``, ``perror``): the reply stops after a third of
  the page's tokens with that ``finish_reason``, as vLLM ends a request it dropped or one
  that failed. ``stream_error`` (``pstream_error``): a streamed reply stops after a third of
  its tokens with vLLM's in-stream error event (``data: {"error": {"message", "type",
  "param", "code"}}``, then ``data: [DONE]``), as when its engine dies mid-reply; unstreamed,
  a 500. These are drawn with the faults above, from the same draw.
- ``first_attempts`` N: faults are drawn only for each page's first N requests, so a test
  can say "fails twice, then answers" without hunting for a seed.
- ``length``: a page is *loopy* with probability ``plength``, drawn from
  ``sha256(seed, sha256(image))`` (a property of the page, as real repetition loops are), or
  when its PNG carries the text chunk ``ocrpipe-loop``: the block it loops on, sent three
  characters per token (a block of whitespace only, one character per token); by default
  a blank line and "the same line again", a word per token. A loopy page answers its
  text, then the block again and again, with ``finish_reason: "length"`` while the
  request's temperature is at most 0.2 (or absent), and normally above it, so that a
  client that raises the temperature succeeds. With
  ``loop_always`` it loops at every temperature: the page fails after the client's whole
  temperature ladder.
- ``endless``: every reply is the page's text and then distinct words for ever, whatever
  ``max_tokens`` says (a server that ignores it); unstreamed, eight times the limit.
- A page whose text chunk repeats itself (a sign-in sheet, a sheet of labels) is answered
  faithfully, repetition and all: the faithful counterpart of a loop.
- The context: ``max_tokens`` at or over ``max_model_len`` is refused with 400 (as vLLM
  0.30), and a prompt plus ``max_tokens`` over it is clamped: the reply ends ``length``
  where the context ends (:func:`ocrpipe.local.engine.completion_limit`).
- ``slow_ms`` adds latency to every answered page; ``cold_seconds``: the server does not
  listen for that long after start (a connection is refused, as vLLM refuses them while its
  model loads; it never answers 503 for it), then serves (:func:`main`,
  :func:`serve_in_background`); ``batch_size`` K and ``service_time`` S mimic vLLM's
  continuous batching: at most K pages are served at once, each takes S seconds, the others
  queue.

Streaming: a request with ``"stream": true`` gets its reply (a normal answer or a loop) as
vLLM's Server-Sent Events (:func:`ocrpipe.local.engine.completion_events`), one token per
chunk at ``tokens_per_s`` per request (5000 by default, so tests stay quick), after the
page's ``service_time``, holding its ``batch_size`` slot until the last token. A client that
disconnects stops the stream at once, as vLLM aborts a request whose client has gone: the
tokens sent until then are what it cost. Non-streamed replies are answered as before.

``GET /stats`` returns the counts by outcome (``ok``, ``503``, ``429``, ``reset``, ``hang``,
``abort``, ``error``, ``stream_error``, ``endless``, ``length``, ``invalid``,
``total``), ``streamed`` (streamed replies started),
``abandoned`` (streams the client left before the end), ``completion_tokens`` (tokens
generated, for streams only those sent: with a rate R, ``completion_tokens / R`` is the GPU
time the replies took) and gauges (``in_flight``, ``max_in_flight``, ``hanging``);
``POST /stats/reset`` zeroes them and forgets the attempt numbers, which starts a new run:
the next run with the same seed sees the same faults again.

Connection resets need the connection's transport: under uvicorn (h11 or httptools) it is
the ``transport`` of the request cycle that ASGI's ``send`` is bound to. The socket gets
``SO_LINGER`` 0 and the transport is aborted, which sends a TCP RST; an httpx client raises
``httpx.ReadError`` (or ``RemoteProtocolError``). Under an in-process client (Starlette's
TestClient, ``httpx.ASGITransport``) there is no socket: a ``ConnectionResetError`` is raised
out of the app instead, which those clients re-raise.

``python -m ocrpipe.local.faults --port 8001 --seed 1 --p503 0.2 --cold-seconds 30`` (see
``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import itertools
import logging
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ocrpipe.local.engine import (
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_MODEL,
    EVENT_STREAM,
    ApiError,
    PageRequest,
    api_error_response,
    bad_request,
    chat_completion_body,
    completion_events,
    completion_limit,
    error_response,
    image_tokens,
    models_body,
    parse_chat_request,
    token_pieces,
)
from ocrpipe.local.readiness import START_S, wait_until_ready
from ocrpipe.logs import configure_logging

logger = logging.getLogger(__name__)

OUTCOMES = (
    "ok", "503", "429", "reset", "hang", "abort", "error", "stream_error", "endless", "length",
    "invalid",
)  # fmt: skip
# Replies that go wrong after they started: (outcome, the FaultPlan field of its share).
BROKEN_REPLIES = (("abort", "pabort"), ("error", "perror"), ("stream_error", "pstream_error"))
BROKEN_SHARE = 1 / 3  # of the page's tokens sent before a broken reply ends
LOOP_MAX_TEMPERATURE = 0.2
LOOP_PHRASE = "the same line again"
DEFAULT_LOOP_BLOCK = f"\n\n{LOOP_PHRASE}"  # sent a word per token
LOOP_CHARS_PER_TOKEN = 3  # a loop block a page carries
DEFAULT_LOOP_TOKENS = 4096
ENDLESS_WHOLE_FACTOR = 8  # a non-streamed endless reply: this many times its token limit
DEFAULT_TOKENS_PER_S = 5000.0
PACING_TICK_S = 0.01  # tokens due within this much time are sent together
MAX_PENDING_EVENTS = 256  # ... but never more events than this at once (endless streams)
COUNTERS = ("total", "streamed", "abandoned", "completion_tokens")
PNG_TEXT_KEY = "ocrpipe-text"
PNG_LOOP_KEY = "ocrpipe-loop"  # a page carrying this text chunk loops on that block
_TRANSPORT_KEY = "ocrpipe.transport"

T = TypeVar("T")


@dataclass(frozen=True)
class FaultPlan:
    """What the fault server does; probabilities are per request and add up to at most 1."""

    seed: int = 0
    p503: float = 0.0
    p429: float = 0.0
    retry_after: int = 1
    preset: float = 0.0
    phang: float = 0.0
    hang_seconds: float = 3600.0
    pabort: float = 0.0
    perror: float = 0.0
    pstream_error: float = 0.0
    first_attempts: int = 0
    endless: bool = False
    plength: float = 0.0
    loop_always: bool = False
    slow_ms: int = 0
    cold_seconds: float = 0.0
    batch_size: int = 0
    service_time: float = 0.0
    tokens_per_s: float = DEFAULT_TOKENS_PER_S

    def __post_init__(self) -> None:
        names = ("p503", "p429", "preset", "phang", *(field for _, field in BROKEN_REPLIES))
        probabilities = {n: getattr(self, n) for n in names}
        for name, p in {**probabilities, "plength": self.plength}.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p} is not a probability")
        if sum(probabilities.values()) > 1.0 + 1e-9:
            total = sum(probabilities.values())
            raise ValueError(f"{' + '.join(names)} = {total} > 1")
        for name in (
            "retry_after",
            "hang_seconds",
            "slow_ms",
            "cold_seconds",
            "service_time",
            "tokens_per_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.batch_size < 0:
            raise ValueError("batch_size must not be negative (0: unlimited)")
        if self.first_attempts < 0:
            raise ValueError("first_attempts must not be negative (0: every attempt)")


def _unit(*parts: object) -> float:
    """A number in [0, 1) that depends on ``parts`` only."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def page_loops(plan: FaultPlan, image_sha: str) -> bool:
    return _unit(plan.seed, "loop", image_sha) < plan.plength


def decide(
    plan: FaultPlan,
    image_sha: str,
    attempt: int,
    temperature: float | None,
    *,
    loops: bool = False,
) -> str:
    """The outcome of one request: one of ``ok 503 429 reset hang abort error stream_error
    endless length``. ``loops``: the page loops whatever ``plength`` draws (it carries a
    loop block)."""
    if not plan.first_attempts or attempt <= plan.first_attempts:
        draw = _unit(plan.seed, "fault", image_sha, attempt)
        edge = 0.0
        ladder = (
            ("503", plan.p503),
            ("429", plan.p429),
            ("reset", plan.preset),
            ("hang", plan.phang),
            *((outcome, getattr(plan, field)) for outcome, field in BROKEN_REPLIES),
        )
        for outcome, p in ladder:
            edge += p
            if draw < edge:
                return outcome
    if plan.endless:
        return "endless"
    low_temperature = temperature is None or temperature <= LOOP_MAX_TEMPERATURE + 1e-9
    if (loops or page_loops(plan, image_sha)) and (low_temperature or plan.loop_always):
        return "length"
    return "ok"


class _State:
    """Counters and the batch semaphore; touched from the event loop only."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.started = time.monotonic()
        self.attempts: dict[str, int] = {}
        self.counts = dict.fromkeys((*OUTCOMES, *COUNTERS), 0)
        self.in_flight = 0
        self.max_in_flight = 0
        self.hanging = 0
        self._batch: asyncio.Semaphore | None = None

    def restart(self) -> None:
        self.started = time.monotonic()
        self._batch = None  # a semaphore belongs to one event loop

    def batch(self) -> asyncio.Semaphore:
        if self._batch is None:
            self._batch = asyncio.Semaphore(self.plan.batch_size)
        return self._batch

    def count(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] += n

    def next_attempt(self, image_sha: str) -> int:
        self.attempts[image_sha] = self.attempts.get(image_sha, 0) + 1
        return self.attempts[image_sha]

    def stats(self) -> dict[str, int]:
        gauges = {"in_flight": self.in_flight, "max_in_flight": self.max_in_flight}
        return {**self.counts, **gauges, "hanging": self.hanging}

    def reset_stats(self) -> None:
        self.counts = dict.fromkeys(self.counts, 0)
        self.attempts.clear()
        self.max_in_flight = self.in_flight


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run ``work`` until it finishes or the client goes away: (finished, result)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.done() and not task.cancelled():
        return True, task.result()
    return False, None


async def _reset_connection(request: Request) -> Response:
    transport = request.scope.get(_TRANSPORT_KEY)
    if not isinstance(transport, asyncio.Transport):
        raise ConnectionResetError("injected connection reset")
    sock = transport.get_extra_info("socket")
    if sock is not None:  # linger 0: close() sends RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # Let the server see the connection drop, so that it does not try to answer on it.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_until_disconnected(request.receive), timeout=1.0)
    return Response(status_code=500)  # never sent: the connection is gone


@dataclass(frozen=True)
class _Page:
    """What the fault server knows of a page: its answer, size and loop block."""

    answer: str
    width: int
    height: int
    loop_block: str | None  # the PNG's loop chunk: the page loops on it


def loop_pieces(block: str) -> list[str]:
    """One copy of a loop block a page carries, as tokens: :data:`LOOP_CHARS_PER_TOKEN`
    characters each, about what LightOnOCR's tokenizer makes of HTML and Markdown (a tag a
    token, a digit a token), so that a loop's tokens per row are near a real one's; one
    character per token for a block of whitespace only (the worst case for a detector)."""
    if not block.strip():
        return list(block)
    step = LOOP_CHARS_PER_TOKEN
    return [block[i : i + step] for i in range(0, len(block), step)]


def _endless(answer: str) -> Iterator[str]:
    """The answer, then distinct words for ever: a server that ignores max_tokens."""
    yield from token_pieces(answer)
    for index in itertools.count(1):
        yield f" w{index}"


@dataclass(frozen=True)
class _Reply:
    pieces: Iterable[str]  # one token each; endless for "endless" streams
    finish_reason: str
    error: dict[str, Any] | None = None  # an in-stream error event ends the stream


def _reply(page: PageRequest, info: _Page, outcome: str, limit: int) -> _Reply:
    """The tokens of an answered page; ``limit``: what max_tokens and the context allow."""
    answer = token_pieces(info.answer)
    if outcome == "length":
        cap = limit if page.max_tokens is not None else min(limit, DEFAULT_LOOP_TOKENS)
        block = token_pieces(DEFAULT_LOOP_BLOCK)
        if info.loop_block is not None:
            block = loop_pieces(info.loop_block)
        copies = cap // max(1, len(block)) + 1
        return _Reply((answer + block * copies)[:cap], "length")
    if outcome == "endless":
        return _Reply(_endless(info.answer), "length")
    if outcome in ("abort", "error", "stream_error"):
        sent = answer[: max(1, round(len(answer) * BROKEN_SHARE))]
        if outcome != "stream_error":
            return _Reply(sent, outcome)
        error = {"message": "injected fault: the engine died mid-reply", "type":
                 "InternalServerError", "param": None, "code": 500}  # fmt: skip
        return _Reply(sent, "", error)
    if len(answer) > limit:
        return _Reply(answer[:limit], "length")
    return _Reply(answer, "stop")


def _page_text(page: PageRequest) -> _Page:
    """The deterministic answer for a page, its size and loop block; 400 if not an image."""
    try:
        image = Image.open(io.BytesIO(page.image))  # reads the header and chunks before IDAT
    except Exception as exc:  # Pillow raises many kinds of error on corrupt input
        raise bad_request(f"the image cannot be decoded: {exc}") from exc
    with image:
        text = image.info.get(PNG_TEXT_KEY)
        loop = image.info.get(PNG_LOOP_KEY)
        width, height = image.size
    answer = f"page-sha256:{hashlib.sha256(page.image).hexdigest()}"
    if isinstance(text, str) and text:
        answer += f"\n\n{text}"
    return _Page(answer, width, height, loop if isinstance(loop, str) and loop else None)


class _FaultApp(Starlette):
    """Starlette, plus the connection's transport in the scope (for injected resets)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if isinstance(transport, asyncio.Transport):
                scope[_TRANSPORT_KEY] = transport
        await super().__call__(scope, receive, send)


def create_app(
    plan: FaultPlan,
    *,
    model_name: str = DEFAULT_MODEL,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
) -> Starlette:
    state = _State(plan)
    created = int(time.time())

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def models(_: Request) -> Response:
        return JSONResponse(models_body(model_name, created, max_model_len))

    async def serve_page(reply: _Reply, prompt_tokens: int, limit: int) -> dict[str, Any]:
        pieces = list(itertools.islice(reply.pieces, ENDLESS_WHOLE_FACTOR * limit))
        tokens = sum(1 for piece in pieces if piece)
        async with in_service():
            await asyncio.sleep(plan.service_time + plan.slow_ms / 1000)
        state.count("completion_tokens", tokens)
        content = "".join(pieces)
        return chat_completion_body(model_name, content, reply.finish_reason, prompt_tokens, tokens)

    async def stream_page(
        page: PageRequest, reply: _Reply, prompt_tokens: int
    ) -> AsyncIterator[bytes]:
        """The reply's tokens at ``plan.tokens_per_s``, after the page's service time; the
        tokens sent are counted, so a client that leaves early stops the count there."""
        events = completion_events(
            model_name, "", reply.finish_reason, prompt_tokens, page,
            pieces=reply.pieces, error=reply.error,
        )  # fmt: skip
        sent, finished = 0, False
        state.count("streamed")
        try:
            async with in_service():
                await asyncio.sleep(plan.service_time + plan.slow_ms / 1000)
                clock = asyncio.get_running_loop().time
                started, pending, queued = clock(), list[bytes](), 0
                for tokens, event in events:
                    due = started + tokens / plan.tokens_per_s if plan.tokens_per_s else 0.0
                    if due - clock() > PACING_TICK_S or len(pending) >= MAX_PENDING_EVENTS:
                        if pending:
                            sent = queued  # handed to the server: counted even if lost
                            yield b"".join(pending)
                            pending.clear()
                        await asyncio.sleep(max(0.0, due - clock()))
                    pending.append(event)
                    queued = tokens
                sent = queued
                yield b"".join(pending)
                finished = True
        finally:
            state.count("completion_tokens", sent)
            if not finished:
                state.count("abandoned")

    @contextlib.asynccontextmanager
    async def in_service() -> AsyncIterator[None]:
        async with state.batch() if plan.batch_size else contextlib.nullcontext():
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                yield
            finally:
                state.in_flight -= 1

    async def hang() -> Response:
        state.hanging += 1
        try:
            await asyncio.sleep(plan.hang_seconds)
        finally:
            state.hanging -= 1
        return error_response(504, "GatewayTimeoutError", "injected hang: no answer in time")

    async def chat_completions(request: Request) -> Response:
        state.count("total")
        try:
            page = parse_chat_request(await request.body(), model_name)
            info = _page_text(page)
            prompt_tokens = page.text_tokens + image_tokens(info.width, info.height)
            limit = completion_limit(page, prompt_tokens, max_model_len)
        except ApiError as exc:  # refused before any fault, and without using an attempt
            state.count("invalid")
            return api_error_response(exc)
        image_sha = hashlib.sha256(page.image).hexdigest()
        attempt = state.next_attempt(image_sha)
        loops = info.loop_block is not None
        outcome = decide(plan, image_sha, attempt, page.temperature, loops=loops)
        state.count(outcome)
        logger.info("page %s attempt %d: %s", image_sha[:12], attempt, outcome)
        if outcome == "503":
            return error_response(503, "ServiceUnavailableError", "injected fault: unavailable")
        if outcome == "429":
            return error_response(
                429,
                "RateLimitError",
                "injected fault: rate limited",
                headers={"Retry-After": str(plan.retry_after)},
            )
        if outcome == "reset":
            return await _reset_connection(request)
        if outcome == "hang":
            finished, response = await _unless_disconnected(request, hang())
            return response if finished and response is not None else Response(status_code=499)
        reply = _reply(page, info, outcome, limit)
        if page.stream:
            stream = stream_page(page, reply, prompt_tokens)
            return StreamingResponse(stream, media_type=EVENT_STREAM)
        if reply.error is not None:
            return error_response(500, "InternalServerError", str(reply.error["message"]))
        finished, body = await _unless_disconnected(
            request, serve_page(reply, prompt_tokens, limit)
        )
        if not finished or body is None:
            return Response(status_code=499)  # the client is gone; nothing is sent
        return JSONResponse(body)

    async def stats(_: Request) -> Response:
        return JSONResponse(state.stats())

    async def reset_stats(_: Request) -> Response:
        state.reset_stats()
        return JSONResponse(state.stats())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        state.restart()
        yield

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/stats/reset", reset_stats, methods=["POST"]),
    ]
    return _FaultApp(routes=routes, lifespan=lifespan)


@contextlib.contextmanager
def serve_in_background(
    app: Any, host: str = "127.0.0.1", *, cold_seconds: float = 0.0
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free port; yields the base URL. With
    ``cold_seconds`` the URL comes at once and the port refuses connections for that long
    (bound, not listening), as vLLM's does while its model loads."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)

    def serve() -> None:
        time.sleep(cold_seconds)
        if not server.should_exit:
            server.run(sockets=[sock])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        if not cold_seconds:  # a cold server refuses connections until it serves
            wait_until_ready(
                lambda: bool(server.started),
                what="uvicorn did not start",
                timeout=START_S,
                died=lambda: None if thread.is_alive() else "uvicorn's thread ended",
                interval=0.01,
            )
        yield f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ocrpipe.local.faults",
        description="Fault-injecting OCR server speaking vLLM's OpenAI API subset.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model-name", default=DEFAULT_MODEL)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--p503", type=float, default=0.0, help="share of requests answered 503")
    parser.add_argument("--p429", type=float, default=0.0, help="share answered 429")
    parser.add_argument("--retry-after", type=int, default=1, help="429's Retry-After, seconds")
    parser.add_argument("--preset", type=float, default=0.0, help="share of connection resets")
    parser.add_argument("--phang", type=float, default=0.0, help="share of hanging requests")
    parser.add_argument("--hang-seconds", type=float, default=3600.0)
    parser.add_argument(
        "--pabort", type=float, default=0.0, help="share of replies ended early as 'abort'"
    )
    parser.add_argument(
        "--perror", type=float, default=0.0, help="share of replies ended early as 'error'"
    )
    parser.add_argument(
        "--pstream-error",
        type=float,
        default=0.0,
        help="share of replies whose stream ends early with an error event (500 unstreamed)",
    )
    parser.add_argument(
        "--first-attempts",
        type=int,
        default=0,
        help="draw faults only for each page's first N requests (0: every request)",
    )
    parser.add_argument(
        "--endless", action="store_true", help="replies ignore max_tokens and never end"
    )
    parser.add_argument(
        "--plength", type=float, default=0.0, help="share of pages that loop at temperature <= 0.2"
    )
    parser.add_argument(
        "--loop-always", action="store_true", help="looping pages loop at every temperature"
    )
    parser.add_argument("--slow-ms", type=int, default=0, help="latency added to every answer")
    parser.add_argument(
        "--cold-seconds",
        type=float,
        default=0.0,
        help="refuse connections for this long after start, as vLLM while it loads",
    )
    parser.add_argument("--batch-size", type=int, default=0, help="pages served at once (0: any)")
    parser.add_argument("--service-time", type=float, default=0.0, help="seconds per page")
    parser.add_argument(
        "--tokens-per-s",
        type=float,
        default=DEFAULT_TOKENS_PER_S,
        help="rate of a streamed reply's tokens, per request (0: as fast as possible)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = _parser()
    args = vars(parser.parse_args(argv))
    try:
        plan = FaultPlan(**{f.name: args[f.name] for f in fields(FaultPlan)})
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(args["log_level"], service="ocr-faults")
    logger.info("fault plan: %s", plan)
    app = create_app(plan, model_name=args["model_name"])
    if plan.cold_seconds:  # nothing listens meanwhile: connections are refused, as vLLM's
        logger.info("cold start: not listening for %.0f s", plan.cold_seconds)
        time.sleep(plan.cold_seconds)
    uvicorn.run(
        app,
        host=args["host"],
        port=args["port"],
        log_level=args["log_level"].lower(),
        log_config=None,
        timeout_graceful_shutdown=2,  # do not wait for injected hangs to end
    )


if __name__ == "__main__":
    main()
