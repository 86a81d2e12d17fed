"""Read a chat completion as a stream, and stop it as soon as it loops.

:func:`stream_completion` POSTs the request with ``"stream": true`` (plus
``stream_options`` asking for the usage: ``include_usage`` and vLLM's
``continuous_usage_stats``) and reads vLLM's Server-Sent Events: ``data: {chunk}`` lines
whose ``choices[0].delta.content`` pieces add up to the reply, a chunk with
``finish_reason``, a chunk with ``usage`` and no choices, then ``data: [DONE]``. The text it
returns is exactly what the non-streamed ``message.content`` would have been.

Each piece goes through a :class:`~ocrpipe.worker.repetition.RepetitionDetector` (the caller
gives the rule for its page's size). When the reply ends in a loop that runs past what a
page holds, the response is closed at once, which closes the connection: vLLM aborts a
request whose client has disconnected, so the GPU stops generating it. The result then says
``cut=True`` and ``finish_reason="repetition"``; the caller treats that as a loop (next
temperature). Its ``completion_tokens`` are the last usage the server sent (vLLM's
``continuous_usage_stats``), or else the number of content chunks received (vLLM sends one
per token unless speculative decoding or ``--stream-interval`` group them). A reply that
vLLM's own ``repetition_detection`` ended arrives with that finish_reason too.

A reply is bounded, so that a server that ignores ``max_tokens`` cannot fill the worker's
memory: at most :data:`BYTES_PER_TOKEN` bytes of text per token of ``max_tokens`` (32: a
token of any tokenizer is far shorter), one event line at most that plus
:data:`EVENT_OVERHEAD` bytes, and at most :data:`EVENTS_PER_TOKEN` events per token (for
events without text). Past a bound the response is closed like a loop, with
``overlong=True``; a non-streamed reply over the same bounds is not read further either.
Memory stays flat: text up to the bound, one line at a time.

Deadlines belong to the caller: no timeout is added here. httpx's ``timeout`` (passed
through) bounds each network wait, not the whole reply; bound the whole reply with a
cancel scope around the call (``anyio.fail_after``, ``asyncio.timeout``): cancelling closes
the response, and with it the server's request.

Errors: a non-2xx answer raises :class:`CompletionRefused` carrying the response (body
read), for the caller to classify as it classifies non-streamed answers (429, 5xx...); a
stream that vLLM ends with an error event (``data: {"error": {...}}``, sent when its engine
fails mid-reply) raises :class:`StreamErrorEvent`, server trouble with what the server said;
a stream that breaks the protocol (bad JSON, no choices, no end) raises
:class:`MalformedStream`. Transport errors (``httpx.TransportError``, timeouts) propagate
unchanged, as from ``httpx.AsyncClient.post``. Whatever ``finish_reason`` the server gives
is returned as is: which ones make a page is the caller's decision.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from httpx._client import UseClientDefault

from ocrpipe.errors import OcrpipeError, OcrUnavailable
from ocrpipe.worker.repetition import DEFAULT_RULE, RepetitionDetector, RepetitionRule

REPETITION = "repetition"  # finish_reason of a reply cut by the detector
STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}
BYTES_PER_TOKEN = 32  # of reply text per token of max_tokens: the reply's bound
EVENTS_PER_TOKEN = 4  # events per token of max_tokens (role, usage and empty chunks too)
EVENT_OVERHEAD = 64 * 1024  # bytes of one event besides its text (JSON, usage)
ERROR_BODY_BYTES = 64 * 1024  # of a non-2xx answer, kept for the caller's message
DEFAULT_MAX_TOKENS = 4096  # when the request names none: vLLM's own is the context


@dataclass(frozen=True)
class StreamedCompletion:
    text: str
    finish_reason: str  # the server's ("stop", "length"), or "repetition" when cut
    prompt_tokens: int | None  # None if the server never said
    completion_tokens: int
    cut: bool
    seconds: float  # from sending the request to closing the response
    overlong: bool = False  # cut because the reply passed its bound, not by the detector


class MalformedStream(OcrUnavailable):
    """The server answered 200 but its event stream does not make a reply; retryable."""

    reason = "ocr_malformed_stream"


class StreamErrorEvent(OcrUnavailable):
    """The server ended a 200 stream with an error event: its engine failed mid-reply.
    Server trouble (retryable), never a reply and never a malformed one."""

    reason = "ocr_stream_error"

    def __init__(
        self,
        error: object,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int = 0,
        seconds: float = 0.0,
    ) -> None:
        detail = error if isinstance(error, dict) else {"message": error}
        kind, code = detail.get("type") or "error", detail.get("code")
        said = f"{kind}{f' {code}' if code is not None else ''}: {detail.get('message')}"
        super().__init__(f"the OCR server reported an error mid-reply: {said}"[:500])
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.seconds = seconds


class CompletionRefused(OcrpipeError):
    """A non-2xx answer, body read; the caller classifies ``response`` (429, 5xx, 4xx)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}", reason=f"ocr_http_{response.status_code}")
        self.response = response


async def stream_completion(
    http: httpx.AsyncClient,
    url: str,
    body: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: httpx.Timeout | float | None | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
    rule: RepetitionRule | None = DEFAULT_RULE,
) -> StreamedCompletion:
    """POST ``body`` to ``url`` as a streamed chat completion and read the reply; cut it
    when it loops by ``rule`` (``None``: never cut) or passes its bound (from ``body``'s
    ``max_tokens``). ``timeout`` goes to httpx as is (the client's own by default)."""
    started = time.monotonic()
    payload = {**body, "stream": True, "stream_options": STREAM_OPTIONS}
    request = http.build_request(
        "POST", url, json=payload, headers=dict(headers or {}), timeout=timeout
    )
    max_tokens = body.get("max_tokens")
    bound = _Bound.of(max_tokens if isinstance(max_tokens, int) else DEFAULT_MAX_TOKENS)
    reader = _Reader(RepetitionDetector(rule) if rule is not None else None, bound)
    response = await http.send(request, stream=True)
    try:
        if response.status_code // 100 != 2:
            raw, _ = await _read_capped(response, ERROR_BODY_BYTES)
            raise CompletionRefused(
                httpx.Response(
                    response.status_code,
                    headers=response.headers,
                    content=raw,
                    request=response.request,
                )
            )
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("application/json"):  # a server that does not stream
            raw, overflowed = await _read_capped(response, bound.whole_bytes)
            reader.whole(raw, overflowed)
        else:
            async for data in _events(_lines(response, bound.line_bytes)):
                if reader.event(data):
                    break
    except _Overlong:
        reader.overlong = True
    except StreamErrorEvent as exc:
        exc.seconds = time.monotonic() - started
        raise
    finally:
        await response.aclose()
    return reader.result(time.monotonic() - started)


@dataclass(frozen=True)
class _Bound:
    """How much of a reply is read, from its ``max_tokens``."""

    text_bytes: int
    events: int

    @classmethod
    def of(cls, max_tokens: int) -> _Bound:
        tokens = max(1, max_tokens)
        return cls(BYTES_PER_TOKEN * tokens, EVENTS_PER_TOKEN * tokens + 64)

    @property
    def line_bytes(self) -> int:
        return self.text_bytes + EVENT_OVERHEAD

    @property
    def whole_bytes(self) -> int:
        """A non-streamed reply: its text escaped in JSON (at most 6 bytes a byte), and
        the rest of the body."""
        return 6 * self.text_bytes + EVENT_OVERHEAD


class _Overlong(Exception):
    """The reply passed its bound."""


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the body, and whether there was more."""
    kept = bytearray()
    async for data in response.aiter_bytes():
        kept += data
        if len(kept) > cap:
            return bytes(kept[:cap]), True
    return bytes(kept), False


async def _lines(response: httpx.Response, cap: int) -> AsyncIterator[str]:
    """The body's lines (``\n``, ``\r\n`` or ``\r`` ended), none longer than ``cap``
    bytes: httpx's own ``aiter_lines`` would hold a line of any length."""
    pending = bytearray()
    async for data in response.aiter_bytes():
        pending += data
        while True:
            ends = [i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0]
            cut = min(ends, default=-1)
            if cut < 0 or (cut == len(pending) - 1 and pending[cut:] == b"\r"):
                break  # no whole line yet (a "\r" may be half of a "\r\n")
            line, ending = bytes(pending[:cut]), pending[cut : cut + 2]
            del pending[: cut + (2 if ending == b"\r\n" else 1)]
            yield _decode(line)
        if len(pending) > cap:
            raise _Overlong
    if pending:
        yield _decode(bytes(pending))


def _decode(line: bytes) -> str:
    try:
        return line.decode()
    except UnicodeDecodeError as exc:
        raise MalformedStream(f"the event stream is not UTF-8: {line[:200]!r}") from exc


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The ``data`` of each Server-Sent Event (multi-line data joined by newlines)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        # other fields (event:, id:, retry:) and comments (":...") carry nothing for us
    if data:
        yield "\n".join(data)


class _Reader:
    def __init__(self, detector: RepetitionDetector | None, bound: _Bound) -> None:
        self._detector = detector
        self._bound = bound
        self._pieces: list[str] = []
        self._bytes = 0
        self._events = 0
        self._chunks = 0
        self._finish: str | None = None
        self._usage: Mapping[str, Any] | None = None
        self._cut = False
        self.overlong = False

    def event(self, data: str) -> bool:
        """Take one event; True when reading should stop (``[DONE]``, a loop, the bound)."""
        if data.strip() == "[DONE]":
            return True
        self._events += 1
        if self._events > self._bound.events:
            self.overlong = True
            return True
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise MalformedStream(f"an event is not JSON: {data[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise MalformedStream(f"an event is not a JSON object: {data[:200]!r}")
        if "error" in chunk:
            prompt, completion = self._tokens()
            raise StreamErrorEvent(
                chunk["error"], prompt_tokens=prompt, completion_tokens=completion
            )
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise MalformedStream(f"a chunk has no choices: {data[:200]!r}")
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                raise MalformedStream(f"a choice has no delta: {data[:200]!r}")
            piece = delta.get("content") or ""
            if not isinstance(piece, str):
                raise MalformedStream(f"delta.content is not a string: {data[:200]!r}")
            if piece:
                self._bytes += len(piece.encode())
                if self._bytes > self._bound.text_bytes:
                    self.overlong = True
                    return True
                self._chunks += 1
                self._pieces.append(piece)
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
            if piece and self._detector is not None and self._detector.feed(piece):
                self._cut = True
                return True
        return False

    def whole(self, raw: bytes, overflowed: bool) -> None:
        """A non-streamed reply (a server that ignored ``stream``), judged by the same
        rule and bound as a stream: a loop in it reads as a cut one."""
        if overflowed:
            self.overlong = True
            return
        try:
            reply = json.loads(raw)
            choice = reply["choices"][0]
            text = str(choice["message"]["content"] or "")
            self._finish = str(choice["finish_reason"])
            self._usage = reply.get("usage")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise MalformedStream(f"malformed reply: {raw[:200]!r}") from exc
        if len(text.encode()) > self._bound.text_bytes:
            self.overlong = True
            return
        self._pieces = [text]
        if self._detector is not None:  # as if streamed: a loop anywhere in it is cut there
            step = RepetitionDetector.STEP
            for start in range(0, len(text), step):
                if self._detector.feed(text[start : start + step]):
                    self._pieces, self._cut = [text[: start + step]], True
                    return

    def _tokens(self) -> tuple[int | None, int]:
        """(prompt tokens if the server said, completion tokens so far): its last usage,
        or else the content chunks received."""
        usage = self._usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return (
            prompt if isinstance(prompt, int) else None,
            max(self._chunks, completion) if isinstance(completion, int) else self._chunks,
        )

    def result(self, seconds: float) -> StreamedCompletion:
        text = "".join(self._pieces)
        prompt, tokens = self._tokens()
        if self._cut or self.overlong:
            overlong = self.overlong and not self._cut
            return StreamedCompletion(text, REPETITION, prompt, tokens, True, seconds, overlong)
        if self._finish is None:  # a missing [DONE] alone is forgiven: the reply is whole
            raise MalformedStream(f"the stream ended with no finish_reason after {len(text)} chars")
        usage = self._usage or {}
        completion = usage.get("completion_tokens")
        return StreamedCompletion(
            text,
            self._finish,
            prompt,
            completion if isinstance(completion, int) else self._chunks,
            False,
            seconds,
        )
