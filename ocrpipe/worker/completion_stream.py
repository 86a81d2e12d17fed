"""Read a chat completion as a stream, and stop it as soon as it loops.

:func:`stream_completion` POSTs the request with ``"stream": true`` (plus
``stream_options`` asking for the usage: ``include_usage`` and vLLM's
``continuous_usage_stats``) and reads vLLM's Server-Sent Events: ``data: {chunk}`` lines
whose ``choices[0].delta.content`` pieces add up to the reply, a chunk with
``finish_reason``, a chunk with ``usage`` and no choices, then ``data: [DONE]``. The text it
returns is exactly what the non-streamed ``message.content`` would have been.

Each piece goes through a :class:`~ocrpipe.worker.repetition.RepetitionDetector`. When the reply
ends in a verbatim loop, the response is closed at once, which closes the connection: vLLM
aborts a request whose client has disconnected, so the GPU stops generating it. The result
then says ``cut=True`` and ``finish_reason="repetition"``; the caller treats that like
``"length"`` (next temperature). Its ``completion_tokens`` are the last usage the server
sent (vLLM's ``continuous_usage_stats``), or else the number of content chunks received
(vLLM sends one per token unless speculative decoding or ``--stream-interval`` group them).

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


@dataclass(frozen=True)
class StreamedCompletion:
    text: str
    finish_reason: str  # the server's ("stop", "length"), or "repetition" when cut
    prompt_tokens: int | None  # None if the server never said
    completion_tokens: int
    cut: bool
    seconds: float  # from sending the request to closing the response


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
    when it loops by ``rule`` (``None``: never cut). ``timeout`` goes to httpx as is (the
    client's own by default)."""
    started = time.monotonic()
    payload = {**body, "stream": True, "stream_options": STREAM_OPTIONS}
    request = http.build_request(
        "POST", url, json=payload, headers=dict(headers or {}), timeout=timeout
    )
    reader = _Reader(RepetitionDetector(rule) if rule is not None else None)
    response = await http.send(request, stream=True)
    try:
        if response.status_code // 100 != 2:
            await response.aread()
            raise CompletionRefused(response)
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("application/json"):  # a server that does not stream
            reader.whole(await response.aread())
        else:
            async for data in _events(response.aiter_lines()):
                if reader.event(data):
                    break
    except StreamErrorEvent as exc:
        exc.seconds = time.monotonic() - started
        raise
    finally:
        await response.aclose()
    return reader.result(time.monotonic() - started)


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
    def __init__(self, detector: RepetitionDetector | None) -> None:
        self._detector = detector
        self._pieces: list[str] = []
        self._chunks = 0
        self._finish: str | None = None
        self._usage: Mapping[str, Any] | None = None
        self._cut = False

    def event(self, data: str) -> bool:
        """Take one event; True when reading should stop (``[DONE]`` or a loop)."""
        if data.strip() == "[DONE]":
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
                self._chunks += 1
                self._pieces.append(piece)
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
            if piece and self._detector is not None and self._detector.feed(piece):
                self._cut = True
                return True
        return False

    def whole(self, raw: bytes) -> None:
        """A non-streamed reply (a server that ignored ``stream``)."""
        try:
            reply = json.loads(raw)
            choice = reply["choices"][0]
            self._pieces = [str(choice["message"]["content"] or "")]
            self._finish = str(choice["finish_reason"])
            self._usage = reply.get("usage")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise MalformedStream(f"malformed reply: {raw[:200]!r}") from exc

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
        if self._cut:
            return StreamedCompletion(text, REPETITION, prompt, tokens, True, seconds)
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
