"""The OCR client: vLLM's OpenAI-compatible ``/v1/chat/completions``, the way
LightOnOCR-2-1B expects it (the page image alone as the user message).

Two kinds of retry, after olmOCR's split:

* :meth:`OcrClient._send` makes one HTTP attempt and classifies the answer;
  :meth:`OcrClient._send_with_backoff` retries transport trouble (connection errors,
  timeouts, 429, 5xx) with jittered exponential backoff, honouring ``Retry-After``, until
  the caller's deadline, which ends safely before the subscription's ack deadline. Then it
  raises :class:`OcrUnavailable` and the worker answers 503 so that Pub/Sub retries. The
  deadline is wall-clock: each attempt (slot wait, ID token, connect, send, the whole
  reply) runs under one limit of the time left.
* 401, 403 and 404 mean configuration trouble (IAM still propagating after a deploy, a
  wrong ID-token audience, a wrong URL or model name), not a bad page: they are retried the
  same way and logged at ERROR, so the delivery is nacked and stays replayable.
* Only a reply that ends ``finish_reason == "stop"`` is a page. vLLM ends a reply it
  dropped with ``abort`` and one that failed with ``error``, and a stream whose engine died
  mid-reply with an error event: server trouble, retried like a 503 (the partial text is
  never written, and it never counts as malformed), logged with what the server said.
  A finish_reason unknown here is treated the same way.
* A 200 that does not parse (not UTF-8, not JSON, no choices) is retried at most
  :attr:`OcrParams.malformed_attempts` times per page, then the page is rejected for good
  (``ocr_malformed_reply``): a server that answers garbage would otherwise burn GPU time
  until the budget ends, on every delivery.
* The same HTTP 500 body for one page :data:`SAME_500_LIMIT` times in a row fails the page
  for good (``ocr_http_500``): vLLM's 500 for an image it cannot take never changes. A 500
  whose body changes is transport trouble like any other.
* A repetition loop is not a result: :meth:`OcrClient.ocr_page` asks again one step up the
  temperature ladder (``Settings.ocr_temperatures``); after the last step the page is
  rejected for good (:class:`OcrRejected`, ``ocr_repetition_loop``). Replies are streamed
  (:mod:`ocrpipe.worker.completion_stream`), so a loop is cut as soon as it repeats past
  what the page could hold (the rule is sized from the page image, :func:`image_size`; see
  :mod:`ocrpipe.worker.repetition`), or passes the reply's bound (``finish_reason ==
  "repetition"``), instead of after ``max_tokens``: the GPU stops generating it at once. A
  page that really repeats itself is never cut.
* A long page is not a loop: a reply that reaches ``max_tokens`` (``finish_reason ==
  "length"``, with no loop a page could not hold in it, or it would have been cut) is asked
  again at the same temperature with what the model's context leaves
  (``Settings.ocr_max_model_len`` minus the prompt's tokens, as the server counted them).
  If its end repeats itself, it may be a loop of rows too long for the detector to judge
  within ``max_tokens``: the larger request then goes one temperature up, which ends a loop
  and still keeps a page that repeats. Only a ``length`` with no room left climbs the
  ladder alone; a page that ends so at every temperature fails as ``ocr_page_too_long``.

Every page's :class:`OcrUsage` (tokens, seconds, attempts, the temperature that worked) is
what the bill and the page's provenance are made of.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import anyio
import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from ocrpipe.errors import OcrRejected, OcrUnavailable
from ocrpipe.settings import Settings
from ocrpipe.usage import OcrUsage
from ocrpipe.worker.completion_stream import (
    CompletionRefused,
    MalformedStream,
    StreamedCompletion,
    StreamErrorEvent,
    stream_completion,
)
from ocrpipe.worker.repetition import DEFAULT_RULE, RepetitionRule, repeats_at_end

logger = logging.getLogger(__name__)

FINISHED = "stop"  # the only finish_reason whose text is a page
LOOP_REASONS = frozenset({"length", "repetition"})  # a loop: cut by vLLM, or by us
# Anything else (vLLM's abort and error, or a reason unknown here) is server trouble.
KNOWN_TROUBLE = frozenset({"abort", "error"})
IMAGE_TOKEN_PX = 28  # a Pixtral encoder's 14 px patches merged 2 x 2
PROMPT_SIDE = 1540  # the longest side vLLM scales a LightOnOCR image to
PROMPT_MARGIN = 32  # tokens of the chat template around the image
MIN_ATTEMPT_SECONDS = 1.0  # no attempt starts with less time than this left
MAX_BACKOFF_SECONDS = 30.0
REFUSED_LOG_EVERY_S = 30.0  # a WARNING while the OCR server refuses connections
SAME_500_LIMIT = 3  # the same 500 body this many times in a row: the page fails for good
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Not the page's fault: who may call the GPU service, or where it is, is misconfigured.
CONFIGURATION_STATUS = frozenset({401, 403, 404})
_DELAY_SECONDS = re.compile(r"[0-9]+")  # RFC 9110 delay-seconds: ASCII digits only


class AuthHeaders(Protocol):
    """Headers to add to each OCR request (a Google ID token in production)."""

    async def headers(self) -> dict[str, str]:
        """Raises :class:`OcrUnavailable` when no credential can be had right now."""
        ...


@dataclass(frozen=True)
class OcrParams:
    model: str
    max_tokens: int
    max_model_len: int  # the model's context: prompt plus reply
    top_p: float
    temperatures: tuple[float, ...]
    request_timeout_s: float
    max_in_flight: int
    malformed_attempts: int  # unparseable 200 replies per page before it fails for good

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> OcrParams:
        """The OCR parameters ``settings`` give, with ``overrides`` (tests, benchmarks)."""
        values: dict[str, Any] = {
            "model": settings.ocr_model,
            "max_tokens": settings.ocr_max_tokens,
            "max_model_len": settings.ocr_max_model_len,
            "top_p": settings.ocr_top_p,
            "temperatures": settings.ocr_temperatures,
            "request_timeout_s": settings.ocr_request_timeout_s,
            "max_in_flight": settings.ocr_max_in_flight,
            "malformed_attempts": settings.ocr_malformed_attempts,
        }
        return cls(**{**values, **overrides})

    def request(
        self, data_url: str, temperature: float, max_tokens: int | None = None
    ) -> dict[str, Any]:
        """The chat completion request for one page, the way LightOnOCR-2-1B expects it:
        the image alone as the user message (no text, no system prompt); ``max_tokens``
        defaults to :attr:`max_tokens` (a long page is asked again with more)."""
        image = {"type": "image_url", "image_url": {"url": data_url}}
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": [image]}],
            "temperature": temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens if max_tokens is None else max_tokens,
        }


def image_data_url(image: bytes, mime: str = "image/png") -> str:
    """A page image as the ``data:`` URL an OCR request carries."""
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


@dataclass(frozen=True)
class OcrResult:
    markdown: str
    usage: OcrUsage


@dataclass
class RetryStats:
    """Why requests were retried, for logs and benchmarks."""

    requests: int = 0
    by_cause: dict[str, int] = field(default_factory=dict)
    loop_tokens: int = 0  # completion tokens spent on replies that looped

    def count(self, cause: str) -> None:
        self.by_cause[cause] = self.by_cause.get(cause, 0) + 1


class AttemptFailed(OcrUnavailable):
    """One failed attempt that may succeed later, with the server's ``Retry-After``. (Not
    :class:`~ocrpipe.errors.RetryableError` itself: tenacity retries these inside the
    request; what reaches the worker is :class:`OcrUnavailable`.)"""

    def __init__(self, message: str, *, cause: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.retry_after = retry_after


class MalformedReply(Exception):
    """A 200 answer that is not a chat completion."""


@dataclass
class _PageAttempts:
    """What one :meth:`OcrClient.ocr_page` call has seen so far."""

    rule: RepetitionRule = DEFAULT_RULE  # when a reply runs past what this page holds
    requests: int = 0  # sent for this page, failed and looping ones included
    malformed: int = 0
    last_500: str | None = None  # the body of the last answer, if it was a 500
    same_500: int = 0  # answers in a row with that body
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def add(self, reply: StreamedCompletion) -> None:
        self.prompt_tokens += reply.prompt_tokens or 0
        self.completion_tokens += reply.completion_tokens
        self.seconds += reply.seconds


class OcrClient:
    """One per process: it owns the HTTP connection pool and the in-flight limit."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        params: OcrParams,
        *,
        auth: AuthHeaders | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = http
        self._params = params
        self._auth = auth
        self._clock = clock
        self._sleep = sleep
        self._in_flight = asyncio.Semaphore(params.max_in_flight)
        self.stats = RetryStats()
        self._refused_since: float | None = None  # the first of the refusals going on
        self._refused_logged: float | None = None

    @classmethod
    def create(
        cls, base_url: str, params: OcrParams, *, auth: AuthHeaders | None = None
    ) -> OcrClient:
        limits = httpx.Limits(
            max_connections=params.max_in_flight, max_keepalive_connections=params.max_in_flight
        )
        http = httpx.AsyncClient(base_url=base_url.rstrip("/"), limits=limits, timeout=None)
        return cls(http, params, auth=auth)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def served_max_model_len(self, *, timeout: float) -> int | None:
        """The context length vLLM serves this client's model with (``max_model_len`` of
        its card in ``GET /v1/models``), or None if the server does not say. HTTP and
        transport errors propagate; a missing credential raises :class:`OcrUnavailable`."""
        headers = await self._auth_headers()
        response = await self._http.get("/v1/models", headers=headers, timeout=timeout)
        response.raise_for_status()
        for card in response.json().get("data") or []:
            if isinstance(card, dict) and card.get("id") == self._params.model:
                value = card.get("max_model_len")
                return value if isinstance(value, int) and not isinstance(value, bool) else None
        return None

    async def ocr_page(self, image: bytes, mime: str, *, deadline: float) -> OcrResult:
        """OCR one page image; ``deadline`` is a value of the client's clock.

        A reply that ends ``length`` with no loop in it is a long page: it is asked again at
        the same temperature with what the model's context leaves (``max_model_len`` minus
        the prompt's tokens); if it ends repeating itself (:func:`repeats_at_end`: a loop
        of long rows, or a page that repeats past ``max_tokens``), with those tokens one
        step up. A loop (cut, or ``repetition``), or a ``length`` with no room left in the
        context, moves one step up the temperature ladder."""
        data_url = image_data_url(image, mime)  # once per page, for every request
        size = image_size(image)
        page = _PageAttempts(rule=RepetitionRule.for_page(*size) if size else DEFAULT_RULE)
        temperatures = self._params.temperatures
        temperature, finish_reason, max_tokens = temperatures[0], "", self._params.max_tokens
        looped = False  # some reply was a loop, not only too long for the context

        def usage() -> OcrUsage:
            return OcrUsage(
                model=self._params.model,
                temperature=temperature,
                finish_reason=finish_reason,
                attempts=page.requests,
                prompt_tokens=page.prompt_tokens,
                completion_tokens=page.completion_tokens,
                ocr_seconds=page.seconds,
            )

        step = 0
        while step < len(temperatures):
            temperature = temperatures[step]
            payload = self._params.request(data_url, temperature, max_tokens)
            try:
                reply = await self._send_with_backoff(payload, deadline, page)
            except OcrRejected as exc:  # refused for good: what it cost so far is billed
                exc.usage = exc.usage or usage()
                raise
            except OcrUnavailable as exc:  # the delivery fails: its cost is billed as well
                exc.usage = usage()
                raise
            page.add(reply)
            finish_reason = reply.finish_reason
            if finish_reason == FINISHED:
                return OcrResult(reply.text, usage())
            room = self._params.max_model_len - (reply.prompt_tokens or prompt_estimate(size))
            if finish_reason == "length" and room > max_tokens:
                # A long page: more tokens, what the model's context leaves. If the reply
                # ends repeating itself it may also be a loop that runs longer than a page
                # lets the detector see within max_tokens (rows of over ~100 characters):
                # then one step up too, which ends a loop and keeps a page that repeats.
                repeating = repeats_at_end(reply.text) and step + 1 < len(temperatures)
                logger.info(
                    "the reply reached max_tokens=%d at temperature %.1f %s; asking again with"
                    " %d tokens, what the model's context leaves%s",
                    max_tokens,
                    temperature,
                    "repeating itself" if repeating else "without a loop: a long page",
                    room,
                    ", one temperature up" if repeating else "",
                    extra={"reason": "ocr_long_reply" if repeating else "ocr_long_page"},
                )
                self.stats.count("long_reply" if repeating else "long_page")
                self.stats.loop_tokens += reply.completion_tokens if repeating else 0
                looped = looped or repeating
                step += 1 if repeating else 0
                max_tokens = room
                continue  # a long page is not a loop: the same temperature, unless repeating
            max_tokens = min(max_tokens, max(1, room))
            looped = looped or finish_reason != "length"
            self.stats.count(finish_reason)
            self.stats.loop_tokens += reply.completion_tokens
            logger.warning(
                "%s at temperature %.1f (%s after %d tokens), raising it",
                "repetition loop" if finish_reason != "length" else "no room left in the context",
                temperature,
                _how(reply),
                reply.completion_tokens,
                extra={"reason": finish_reason},
            )
            step += 1
        if looped:
            raise OcrRejected(
                f"the model looped at every temperature {list(temperatures)}",
                reason="ocr_repetition_loop",
                usage=usage(),
            )
        raise OcrRejected(
            f"the reply reached the end of the model's context (max_model_len"
            f" {self._params.max_model_len} tokens, page image included) at every temperature"
            f" {list(temperatures)} without repeating itself: more text than the model can"
            " write for one page, or a loop that changes as it goes",
            reason="ocr_page_too_long",
            usage=usage(),
        )

    async def _send_with_backoff(
        self, payload: dict[str, Any], deadline: float, page: _PageAttempts
    ) -> StreamedCompletion:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(AttemptFailed),
            wait=lambda state: self._wait(state, deadline),
            stop=lambda state: self._past_deadline(state, deadline),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(payload, deadline, page)
        except AttemptFailed as exc:
            raise OcrUnavailable(
                f"OCR server still unavailable when the request budget ran out: {exc}",
                reason=f"ocr_unavailable:{exc.cause}",
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(
        self, payload: dict[str, Any], deadline: float, page: _PageAttempts
    ) -> StreamedCompletion:
        """One request; a malformed reply is retryable only a few times per page."""
        try:
            return await self._send(payload, deadline, page)
        except MalformedReply as exc:
            self.stats.count("malformed")
            page.malformed += 1
            if page.malformed >= self._params.malformed_attempts:
                raise OcrRejected(
                    f"the OCR server answered {page.malformed} times with a reply that is not"
                    f" a chat completion: {exc}",
                    reason="ocr_malformed_reply",
                ) from exc
            raise AttemptFailed(f"malformed reply: {exc}", cause="malformed") from exc

    _jitter = staticmethod(wait_random_exponential(multiplier=0.5, max=MAX_BACKOFF_SECONDS))

    def _wait(self, state: RetryCallState, deadline: float) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AttemptFailed) and exc.retry_after is not None:
            # Never more than the budget has left: the stop rule then gives up at once.
            left = max(0.0, deadline - self._clock())
            return min(exc.retry_after, MAX_BACKOFF_SECONDS * 4, left)
        return float(self._jitter(state))

    def _past_deadline(self, state: RetryCallState, deadline: float) -> bool:
        return self._clock() + state.upcoming_sleep + MIN_ATTEMPT_SECONDS >= deadline

    async def _send(
        self, payload: dict[str, Any], deadline: float, page: _PageAttempts
    ) -> StreamedCompletion:
        """One attempt under one wall-clock limit: waiting for an in-flight slot, connect,
        send and the whole reply. A read timeout alone is not enough: a server that sends a
        byte now and then would reset it forever."""
        remaining = deadline - self._clock()
        if remaining < MIN_ATTEMPT_SECONDS:
            raise AttemptFailed("no time left for another attempt", cause="budget")
        timeout = min(self._params.request_timeout_s, remaining)
        phase = "id_token"  # what the attempt was waiting for when the limit struck
        try:
            with anyio.fail_after(timeout):
                headers = await self._auth_headers()
                phase = "slot_wait"
                async with self._in_flight:
                    phase = "timeout"
                    self.stats.requests += 1
                    page.requests += 1
                    reply = await stream_completion(
                        self._http,
                        "/v1/chat/completions",
                        payload,
                        headers=headers,
                        timeout=timeout,
                        rule=page.rule,
                    )
            self._answered()
        except CompletionRefused as exc:
            self._answered()
            self._same_500_again(exc.response, page)
            raise self._refusal(exc.response) from None
        except StreamErrorEvent as exc:
            page.prompt_tokens += exc.prompt_tokens or 0
            page.completion_tokens += exc.completion_tokens
            page.seconds += exc.seconds
            self.stats.count("stream_error")
            logger.warning(
                "%s after %d tokens; not a page, retrying within the budget",
                exc,
                exc.completion_tokens,
                extra={"reason": exc.reason},
            )
            raise AttemptFailed(str(exc), cause="stream_error") from exc
        except MalformedStream as exc:
            raise MalformedReply(str(exc)) from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            cause = phase
            self.stats.count(cause)
            raise AttemptFailed(f"no complete answer within {timeout:.1f} s", cause=cause) from exc
        except httpx.TransportError as exc:
            self.stats.count("connection")
            if isinstance(exc, httpx.ConnectError):
                self._refused(exc)
            raise AttemptFailed(f"{type(exc).__name__}: {exc}", cause="connection") from exc
        if reply.finish_reason != FINISHED and reply.finish_reason not in LOOP_REASONS:
            raise self._broken(reply, page)
        return reply

    def _broken(self, reply: StreamedCompletion, page: _PageAttempts) -> AttemptFailed:
        """A reply the server ended without finishing it (vLLM's ``abort``: a request it
        dropped; ``error``: one that failed; or a reason unknown here): server trouble. Its
        text is not the page; the tokens it cost are billed to the page."""
        page.add(reply)
        reason = reply.finish_reason
        cause = f"finish_{reason}" if reason in KNOWN_TROUBLE else "finish_unknown"
        self.stats.count(cause)
        logger.warning(
            "the OCR server ended the reply with finish_reason %s after %d tokens; not a page,"
            " retrying within the budget",
            reason[:40] or "(empty)",
            reply.completion_tokens,
            extra={"reason": f"ocr_{cause}"},
        )
        return AttemptFailed(
            f"the reply ended with finish_reason {reason[:40]!r}, not 'stop'", cause=cause
        )

    def _same_500_again(self, response: httpx.Response, page: _PageAttempts) -> None:
        """The page fails for good once the server has answered it with the same 500 body
        :data:`SAME_500_LIMIT` times in a row: vLLM's answer to an image it cannot take
        (over PIL's pixel limit) never changes, and retrying it would only burn the budget
        on every delivery until the message is dead-lettered."""
        if response.status_code != 500:
            page.last_500, page.same_500 = None, 0
            return
        body = response.text
        page.same_500 = page.same_500 + 1 if body == page.last_500 else 1
        page.last_500 = body
        if page.same_500 >= SAME_500_LIMIT:
            self.stats.count("500")
            raise OcrRejected(
                f"the OCR server answered this page {page.same_500} times with the same"
                f" HTTP 500: {_snippet(response)}",
                reason="ocr_http_500",
            )

    def _refused(self, exc: httpx.ConnectError) -> None:
        """A connection refused: vLLM listens only once its model is loaded. Said at once,
        then every :data:`REFUSED_LOG_EVERY_S` while it lasts, with how long it has."""
        now = self._clock()
        if self._refused_since is None:
            self._refused_since = now
        if self._refused_logged is None or now - self._refused_logged >= REFUSED_LOG_EVERY_S:
            self._refused_logged = now
            logger.warning(
                "the OCR server at %s refuses connections (%s): not listening yet (a model"
                " still loading) or down; waited %d s so far, retrying within the budget",
                self._http.base_url,
                exc,
                now - self._refused_since,
                extra={"reason": "ocr_connection_refused"},
            )

    def _answered(self) -> None:
        """An HTTP answer: the server listens (again)."""
        if self._refused_since is not None:
            logger.info(
                "the OCR server answers again after %d s of refused connections",
                self._clock() - self._refused_since,
            )
            self._refused_since = self._refused_logged = None

    async def _auth_headers(self) -> dict[str, str]:
        if self._auth is None:
            return {}
        try:
            return await self._auth.headers()
        except AttemptFailed:
            raise
        except OcrUnavailable as exc:
            self.stats.count("id_token")
            raise AttemptFailed(str(exc), cause="id_token") from exc

    def _refusal(self, response: httpx.Response) -> Exception:
        """What a non-2xx answer means: retry (overload, configuration) or fail the page."""
        status = response.status_code
        if status in RETRYABLE_STATUS:
            self.stats.count(str(status))
            return AttemptFailed(
                f"HTTP {status}: {_snippet(response)}",
                cause=str(status),
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        if status in CONFIGURATION_STATUS:
            self.stats.count(str(status))
            logger.error(
                "OCR server answered HTTP %d: configuration trouble, not a bad page (IAM still"
                " propagating after a deploy, a wrong ID-token audience, or a wrong OCR URL or"
                " model name); retrying within the budget: %s",
                status,
                _snippet(response),
                extra={"reason": f"ocr_http_{status}"},
            )
            return AttemptFailed(f"HTTP {status}: {_snippet(response)}", cause=str(status))
        return OcrRejected(
            f"OCR server refused the page: HTTP {status}: {_snippet(response)}",
            reason=f"ocr_http_{status}",
        )


def image_size(image: bytes) -> tuple[int, int] | None:
    """(width, height) of a page image from its header, or None if it cannot be read (the
    server will say what is wrong with the image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as opened:  # the header only
            return opened.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        return None


def prompt_estimate(size: tuple[int, int] | None) -> int:
    """The prompt's tokens when the server does not say: a Pixtral encoder's image tokens
    (the image scaled to at most 1540 px, one token per 28 x 28 px, one break per row) and
    a margin for the chat template."""
    width, height = size or (PROMPT_SIDE, PROMPT_SIDE)
    scale = min(1.0, PROMPT_SIDE / max(width, height, 1))
    columns = math.ceil(width * scale / IMAGE_TOKEN_PX)
    rows = math.ceil(height * scale / IMAGE_TOKEN_PX)
    return columns * rows + rows + PROMPT_MARGIN


def _how(reply: StreamedCompletion) -> str:
    if not reply.cut:
        return f"finish_reason={reply.finish_reason}"
    return "past its bound, cut" if reply.overlong else "past what the page holds, cut"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, as RFC 9110 section 10.2.3 defines
    it: delay-seconds (ASCII digits only) or an HTTP-date. Anything else is ignored."""
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, says RFC 5322
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _snippet(response: httpx.Response) -> str:
    return response.text[:200].replace("\n", " ")
