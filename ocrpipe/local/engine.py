"""The local OCR engine: vLLM's OpenAI-compatible API subset, backed by rapidocr on the CPU.

``python -m ocrpipe.local.engine --host 127.0.0.1 --port 8000`` serves

- ``GET /health``: 200 with an empty body once the engine is loaded (as vLLM);
- ``GET /v1/models``: the one served model, shaped like vLLM's answer;
- ``POST /v1/chat/completions``: exactly one image (a ``data:image/...;base64,`` URL in an
  ``image_url`` content part) in, the page's text as Markdown out, in vLLM's reply shape;
  with ``"stream": true``, as vLLM's Server-Sent Events (:func:`completion_events`), whose
  ``delta.content`` pieces add up to exactly the non-streamed ``message.content``.

Errors use vLLM's error body (0.30) ``{"error": {"message", "type", "param", "code"}}``:
404 for a model name that is not served (``param`` ``"model"``), 400 for anything else wrong
with the request.

Serving a model whose entry in ``ocrpipe/models.json`` says it writes figure boxes (or with
``--figure-boxes``), the engine stands in for LightOnOCR's bbox variants: it finds the page's
non-text regions and references each as they do, ``![image](image_N.png)x1,y1,x2,y2``
(:mod:`ocrpipe.local.figure_regions`). ``/v1/models`` reports the entry's context length.

rapidocr (3.10, ``Global.use_cls=False``) ships its ONNX models in the wheel and never needs
the network. One engine is built per process and warmed up before the server listens, so
``/health`` answers 200 only when a page can be OCR'd. Pages are OCR'd in a pool of
``--threads`` worker threads so the event loop keeps answering ``/health`` meanwhile. No lock
is needed around the engine: onnxruntime's ``InferenceSession.run`` may be called from several
threads at once, and rapidocr keeps no per-call state on shared objects (its models load
lazily under their own locks, and the warm-up loads them anyway).

A client that disconnects before its reply (a worker whose budget ran out) is let go as vLLM
lets it go: its page is dropped from the queue if no thread has taken it yet, and a page
already being OCR'd finishes without its reply being sent (:class:`ClientGone`).

The request-parsing and reply-building helpers here are shared with the fault-injecting
server (:mod:`ocrpipe.local.faults`), so both speak the same dialect.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from PIL import Image, ImageDraw, ImageFont, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive

from ocrpipe.local.boxes_to_markdown import TextBox, boxes_to_markdown
from ocrpipe.local.figure_regions import figure_regions, figures_markdown
from ocrpipe.logs import configure_logging
from ocrpipe.models import load_models
from ocrpipe.settings import cpu_count

logger = logging.getLogger(__name__)

DEFAULT_MODEL = load_models().default
DEFAULT_MAX_MODEL_LEN = 16384  # a model not in ocrpipe/models.json
OWNED_BY = "ocrpipe-local"
# LightOnOCR's Pixtral encoder sees 14 px patches merged 2 x 2: one token per 28 x 28 px,
# after vLLM scales the image down (never up) so that its longest side is at most
# IMAGE_MAX_SIDE (the model's vision_config.image_size). Used for ``usage.prompt_tokens``.
IMAGE_TOKEN_PX = 28
IMAGE_MAX_SIDE = 1540

_DATA_URL = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)
_TOKEN = re.compile(r"\S+")


# ---------------------------------------------------------------- the OpenAI request schema


class _ImageUrl(BaseModel):
    url: str
    detail: str | None = None


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: _ImageUrl


_ContentPart = Annotated[_TextPart | _ImagePart, Field(discriminator="type")]


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_ContentPart] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's extension: usage so far in every chunk


class _ChatRequest(BaseModel):
    # OpenAI clients send many optional fields (seed, stop, logprobs...): accepted, ignored.
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: _StreamOptions | None = None


@dataclass(frozen=True)
class PageRequest:
    """What a chat completion request asks of an OCR server, once validated."""

    image: bytes
    max_tokens: int | None
    temperature: float | None
    text_tokens: int
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    continuous_usage: bool = False  # stream_options.continuous_usage_stats


class ApiError(Exception):
    """An answer in vLLM's error shape; ``kind`` is the ``type`` field, ``param`` the
    request field at fault, if one is."""

    def __init__(self, status: int, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequestError", message)


def error_response(
    status: int,
    kind: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    param: str | None = None,
) -> JSONResponse:
    error = {"message": message, "type": kind, "param": param, "code": status}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.kind, str(exc), param=exc.param)


def parse_chat_request(body: bytes, model_name: str) -> PageRequest:
    """Validate a chat completion request body; raise :class:`ApiError` (400, 404)."""
    try:
        request = _ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise bad_request(f"invalid chat completion request: {problems}") from exc
    if request.model != model_name:
        raise ApiError(
            404, "NotFoundError", f"The model `{request.model}` does not exist.", param="model"
        )

    images: list[str] = []
    text_tokens = 0
    for message in request.messages:
        if isinstance(message.content, str):
            text_tokens += count_tokens(message.content)
            continue
        for part in message.content or []:
            if isinstance(part, _ImagePart):
                images.append(part.image_url.url)
            else:
                text_tokens += count_tokens(part.text)
    if len(images) != 1:
        raise bad_request(f"exactly one image per request is supported, got {len(images)}")
    match = _DATA_URL.fullmatch(images[0])
    if match is None:
        raise bad_request("the image must be a data:image/...;base64, URL")
    try:
        image = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"the image's base64 payload does not decode: {exc}") from exc
    if not image:
        raise bad_request("the image is empty")
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options is only allowed when stream is true")  # as vLLM
    options = request.stream_options or _StreamOptions()
    return PageRequest(
        image=image,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        temperature=request.temperature,
        text_tokens=text_tokens,
        stream=request.stream,
        include_usage=options.include_usage,
        continuous_usage=options.continuous_usage_stats,
    )


# -------------------------------------------------------------------------- the reply shape


def count_tokens(text: str) -> int:
    """Whitespace-separated tokens: the stand-in for a tokenizer."""
    return len(_TOKEN.findall(text))


def truncate_tokens(text: str, limit: int | None) -> tuple[str, int, bool]:
    """``text`` cut after ``limit`` tokens (layout kept): (text, tokens, whether cut)."""
    tokens = list(_TOKEN.finditer(text))
    if limit is None or len(tokens) <= limit:
        return text, len(tokens), False
    return text[: tokens[limit - 1].end()], limit, True


def image_tokens(width: int, height: int) -> int:
    """vLLM's count for LightOnOCR (vllm/model_executor/models/pixtral.py,
    ``get_patch_grid_size``): scaled down by the ratio that fits the longest side in
    :data:`IMAGE_MAX_SIDE` (floored), then ceil(w/28) x ceil(h/28)."""
    ratio = max(width / IMAGE_MAX_SIDE, height / IMAGE_MAX_SIDE)
    if ratio > 1:
        width, height = math.floor(width / ratio), math.floor(height / ratio)
    return math.ceil(width / IMAGE_TOKEN_PX) * math.ceil(height / IMAGE_TOKEN_PX)


def chat_completion_body(
    model: str, content: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "tool_calls": []},
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
        ],
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def token_pieces(text: str) -> list[str]:
    """``text`` cut after each token, layout kept: ``"".join(token_pieces(t)) == t``."""
    ends = [match.end() for match in _TOKEN.finditer(text)]
    if not ends:
        return [text] if text else []
    pieces = [text[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    pieces[-1] += text[ends[-1] :]
    return pieces


def completion_events(
    model: str,
    content: str,
    finish_reason: str,
    prompt_tokens: int,
    page: PageRequest,
    *,
    pieces: Iterable[str] | None = None,
    error: Mapping[str, Any] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """A streamed reply as vLLM sends it, as ``(tokens sent so far, SSE event)`` pairs.

    One ``chat.completion.chunk`` with the assistant role and empty content, one chunk per
    token (``delta.content``), the last one carrying ``finish_reason``; then, if
    ``stream_options.include_usage``, a chunk with no choices and the usage; then
    ``data: [DONE]``. With ``continuous_usage_stats`` every chunk carries the usage so far.

    ``pieces`` (one token each, read lazily: it may be endless) replaces the tokens of
    ``content``. With ``error`` the stream ends as vLLM ends one whose engine failed
    mid-reply: no finish_reason, then ``data: {"error": error}``, then ``data: [DONE]``.
    """
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(delta: dict[str, str], finish: str | None, tokens: int) -> bytes:
        chunk: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if page.continuous_usage:
            chunk["usage"] = _usage(prompt_tokens, tokens)
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

    source = iter(pieces if pieces is not None else (token_pieces(content) or [""]))
    yield 0, event({"role": "assistant", "content": ""}, None, 0)
    tokens = 0
    piece = next(source, "")
    for following in source:  # one piece ahead: the last one carries finish_reason
        tokens += 1 if piece else 0
        yield tokens, event({"content": piece}, None, tokens)
        piece = following
    tokens += 1 if piece else 0
    if error is not None:
        yield tokens, event({"content": piece}, None, tokens)
        yield tokens, f"data: {json.dumps({'error': dict(error)})}\n\n".encode()
        yield tokens, b"data: [DONE]\n\n"
        return
    yield tokens, event({"content": piece}, finish_reason, tokens)
    if page.include_usage:
        usage = {"id": ident, "object": "chat.completion.chunk", "created": created}
        usage |= {"model": model, "choices": [], "usage": _usage(prompt_tokens, tokens)}
        yield tokens, f"data: {json.dumps(usage)}\n\n".encode()
    yield tokens, b"data: [DONE]\n\n"


def completion_limit(page: PageRequest, prompt_tokens: int, max_model_len: int) -> int:
    """The tokens a reply may have, as vLLM decides it: ``max_tokens`` reaching the context
    alone is refused (400, as vLLM 0.30), and a prompt plus ``max_tokens`` over the context
    is clamped to what the context leaves (the reply then ends ``length``)."""
    if page.max_tokens is not None and page.max_tokens >= max_model_len:
        raise bad_request(
            f"'max_tokens' is too large: {page.max_tokens}. This model's maximum context length"
            f" is {max_model_len} tokens and your request has {prompt_tokens} input tokens"
        )
    left = max(1, max_model_len - prompt_tokens)
    return left if page.max_tokens is None else min(page.max_tokens, left)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


EVENT_STREAM = "text/event-stream"


async def _bodies(events: Iterator[tuple[int, bytes]]) -> AsyncIterator[bytes]:
    for _, event in events:
        yield event


def models_body(model: str, created: int, max_model_len: int) -> dict[str, Any]:
    card = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY,
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [],
    }
    return {"object": "list", "data": [card]}


async def health(_: Request) -> Response:
    return Response(status_code=200)


# -------------------------------------------------------------------------------- the engine


class OcrEngine(Protocol):
    """Recognizes the text boxes of one RGB page image. Called from worker threads."""

    def recognize(self, image: Image.Image) -> list[TextBox]: ...


class RapidOcrEngine:
    """rapidocr with its bundled models, loaded and warmed up once."""

    def __init__(self, *, intra_op_threads: int | None = None) -> None:
        from rapidocr import RapidOCR  # heavy: imported only when an engine is built

        params: dict[str, Any] = {"Global.use_cls": False, "Global.log_level": "error"}
        if intra_op_threads is not None:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = intra_op_threads
        self._ocr = RapidOCR(params=params)
        self.recognize(_warm_up_image())  # loads the detection and recognition models now

    def recognize(self, image: Image.Image) -> list[TextBox]:
        # A PIL image, never a str: rapidocr fetches str arguments that look like URLs.
        result = self._ocr(image)
        boxes, txts, scores = (getattr(result, name, None) for name in ("boxes", "txts", "scores"))
        if boxes is None or txts is None or scores is None:
            return []
        found: list[TextBox] = []
        for quad, text, score in zip(boxes.tolist(), txts, scores, strict=True):
            (x0, y0), (x1, y1), (x2, y2), (x3, y3) = quad
            corners = ((x0, y0), (x1, y1), (x2, y2), (x3, y3))
            found.append(TextBox(corners, str(text), float(score)))
        return found


def _warm_up_image() -> Image.Image:
    image = Image.new("RGB", (480, 96), "white")
    ImageDraw.Draw(image).text(
        (16, 24), "ocrpipe warm-up", fill="black", font=ImageFont.load_default(size=36)
    )
    return image


def decode_image(data: bytes) -> Image.Image:
    """The page as an upright RGB image (transparency flattened on white); 400 if unreadable."""
    try:
        image: Image.Image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        image.load()
    except Exception as exc:  # Pillow's decoders raise many kinds of error on corrupt input
        raise bad_request(f"the image cannot be decoded: {exc}") from exc
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, "white")
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def ocr_page(engine: OcrEngine, data: bytes, *, figure_boxes: bool = False) -> tuple[str, int, int]:
    """Decode, recognize and lay out one page: (Markdown, width, height). Blocking. With
    ``figure_boxes``, as a bbox model: figures referenced with their boxes."""
    image = decode_image(data)
    boxes = engine.recognize(image)
    if figure_boxes:
        markdown = figures_markdown(boxes, figure_regions(image, boxes), image.size)
    else:
        markdown = boxes_to_markdown(boxes)
    return markdown, image.width, image.height


class ClientGone(Exception):
    """The client disconnected before its page's reply: nothing is sent."""


async def until_disconnected(receive: Receive) -> None:
    """Return when the client disconnects (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _Pool:
    """The OCR worker threads, started on first use and stopped with the app."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self.pending = 0  # requests waiting for a thread or being OCR'd

    async def run(
        self, fn: Callable[[], tuple[str, int, int]], receive: Receive
    ) -> tuple[str, int, int]:
        """``fn`` in an OCR thread, unless the client goes away first (:class:`ClientGone`):
        a page still waiting for a thread is then never OCR'd, as vLLM aborts a request whose
        client disconnected; one already being OCR'd finishes, unsent."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="ocr")
        future = self._executor.submit(fn)
        result = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(until_disconnected(receive))
        self.pending += 1
        logger.debug("page waiting for an OCR thread (%d pending)", self.pending)
        try:
            waiting: set[asyncio.Future[Any]] = {result, gone}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.pending -= 1
            gone.cancel()
        if result.done():
            return result.result()
        started = not future.cancel()  # a page not started yet is dropped from the queue
        result.cancel()
        raise ClientGone("being OCR'd, its reply dropped" if started else "dropped unread")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def create_app(
    engine: OcrEngine,
    *,
    model_name: str = DEFAULT_MODEL,
    threads: int = 1,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    figure_boxes: bool = False,
) -> Starlette:
    """The engine server around an already-built engine (build it once per process);
    ``figure_boxes``: answer as a bbox model."""
    if threads < 1:
        raise ValueError("threads must be at least 1")
    pool = _Pool(threads)
    created = int(time.time())

    async def models(_: Request) -> Response:
        return JSONResponse(models_body(model_name, created, max_model_len))

    async def chat_completions(request: Request) -> Response:
        try:
            page = parse_chat_request(await request.body(), model_name)
            started = time.perf_counter()
            markdown, width, height = await pool.run(
                lambda: ocr_page(engine, page.image, figure_boxes=figure_boxes), request.receive
            )
            prompt_tokens = page.text_tokens + image_tokens(width, height)
            limit = completion_limit(page, prompt_tokens, max_model_len)
        except ApiError as exc:
            logger.info("chat completion refused: %s %s", exc.status, exc)
            return api_error_response(exc)
        except ClientGone as exc:
            logger.info("the client has gone: page %s", exc)
            return Response(status_code=499)  # nobody reads it
        except Exception:
            logger.exception("OCR failed")
            return error_response(500, "InternalServerError", "OCR failed, see the server log")
        content, completion_tokens, cut = truncate_tokens(markdown, limit)
        logger.info(
            "page %dx%d OCR'd in %.0f ms: %d tokens%s",
            width,
            height,
            (time.perf_counter() - started) * 1000,
            completion_tokens,
            " (cut)" if cut else "",
        )
        finish_reason = "length" if cut else "stop"
        if page.stream:  # the page is OCR'd at once: its tokens follow without a pause
            events = completion_events(model_name, content, finish_reason, prompt_tokens, page)
            return StreamingResponse(_bodies(events), media_type=EVENT_STREAM)
        return JSONResponse(
            chat_completion_body(
                model_name, content, finish_reason, prompt_tokens, completion_tokens
            )
        )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            pool.close()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m ocrpipe.local.engine",
        description="Local OCR server speaking vLLM's OpenAI API subset, backed by rapidocr.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=DEFAULT_MODEL, help="the served model id")
    parser.add_argument("--threads", type=int, default=1, help="pages OCR'd at once")
    parser.add_argument(
        "--max-model-len", type=int, help="default: the model's entry in ocrpipe/models.json"
    )
    parser.add_argument(
        "--figure-boxes",
        action=argparse.BooleanOptionalAction,
        help="answer as a bbox model (default: the model's entry in ocrpipe/models.json)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")

    spec = load_models().get(args.model_name)
    if args.max_model_len is None:
        args.max_model_len = spec.max_model_len if spec else DEFAULT_MAX_MODEL_LEN
    if args.figure_boxes is None:
        args.figure_boxes = spec.figure_boxes if spec else False

    configure_logging(args.log_level, service="ocr-engine")
    # Several pages at once share the cores instead of each asking onnxruntime for all of them.
    intra = max(1, cpu_count() // args.threads) if args.threads > 1 else None
    started = time.perf_counter()
    engine = RapidOcrEngine(intra_op_threads=intra)
    logger.info("rapidocr loaded in %.1f s", time.perf_counter() - started)
    app = create_app(
        engine,
        model_name=args.model_name,
        threads=args.threads,
        max_model_len=args.max_model_len,
        figure_boxes=args.figure_boxes,
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level.lower(), log_config=None
    )


if __name__ == "__main__":
    main()
