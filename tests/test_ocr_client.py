"""The OCR client through httpx.MockTransport: what it sends, and how it retries."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

from ocrpipe.errors import OcrRejected, OcrUnavailable
from ocrpipe.settings import Settings
from ocrpipe.testing.clock import FakeClock
from ocrpipe.worker.ocr_client import MAX_BACKOFF_SECONDS, OcrClient, OcrParams, parse_retry_after
from tests.fakes import ScriptedOcrServer, completion, request_image

IMAGE = b"\x89PNG fake image bytes"


async def test_sends_the_image_alone_the_way_lightonocr_expects() -> None:
    server = ScriptedOcrServer([completion("# Title\n\nText")])
    clock = FakeClock()
    result = await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert result.markdown == "# Title\n\nText"
    (body,) = server.requests
    assert body["model"] == "lightonai/LightOnOCR-2-1B"
    assert body["temperature"] == 0.2 and body["top_p"] == 0.9 and body["max_tokens"] == 4096
    messages = body["messages"]
    assert isinstance(messages, list)
    (message,) = messages
    assert message["role"] == "user"
    (part,) = message["content"]
    assert part["type"] == "image_url"
    assert part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(IMAGE).decode()


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(503, text="loading"),
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(429),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("reset"),
    ],
    ids=["503", "500", "502", "429", "refused", "timeout", "reset"],
)
async def test_transient_trouble_is_retried_with_backoff(failure: object) -> None:
    server = ScriptedOcrServer([failure, failure, completion("ok")])  # type: ignore[list-item]
    clock = FakeClock()
    client = server.client(clock)
    result = await client.ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert result.markdown == "ok" and result.usage.attempts == 3
    assert len(clock.sleeps) == 2 and all(0 <= s <= MAX_BACKOFF_SECONDS for s in clock.sleeps)
    assert sum(client.stats.by_cause.values()) == 2


async def test_retry_after_is_honoured() -> None:
    server = ScriptedOcrServer(
        [httpx.Response(429, headers={"Retry-After": "7"}), completion("ok")]
    )
    clock = FakeClock()
    await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert clock.sleeps == [7.0]


@pytest.mark.parametrize("budget", [5.0, 60.0, 540.0])
async def test_the_budget_is_never_overrun(budget: float) -> None:
    server = ScriptedOcrServer([httpx.Response(503)])
    clock = FakeClock()
    deadline = clock.now + budget
    with pytest.raises(OcrUnavailable) as info:
        await server.client(clock).ocr_page(IMAGE, "image/png", deadline=deadline)
    assert clock.now <= deadline
    assert info.value.push_status == 503
    assert len(server.requests) >= 2


async def test_retry_after_longer_than_the_budget_gives_up_at_once() -> None:
    server = ScriptedOcrServer([httpx.Response(429, headers={"Retry-After": "120"})])
    clock = FakeClock()
    with pytest.raises(OcrUnavailable):
        await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 30)
    assert clock.sleeps == [] and len(server.requests) == 1


async def test_request_timeout_is_capped_by_the_remaining_budget() -> None:
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        return completion("ok")

    clock = FakeClock()
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://ocr")
    client = OcrClient(
        http,
        OcrParams.from_settings(Settings(), model="m", request_timeout_s=300),
        clock=clock,
        sleep=clock.sleep,
    )
    await client.ocr_page(IMAGE, "image/png", deadline=clock.now + 42)
    assert seen == [42]


async def test_a_repetition_loop_climbs_the_temperature_ladder() -> None:
    server = ScriptedOcrServer(
        [
            completion("la la la", "repetition"),  # vLLM's repetition_detection ended it
            completion("| a |\n" * 1000, "length"),  # a loop past a page: cut, unstreamed too
            completion("fine"),
        ]
    )
    clock = FakeClock()
    result = await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert result.markdown == "fine" and result.usage.temperature == 0.5
    assert [r["temperature"] for r in server.requests] == [0.2, 0.3, 0.5]
    assert [r["max_tokens"] for r in server.requests] == [4096] * 3


async def test_a_loop_at_every_temperature_fails_the_page_for_good() -> None:
    server = ScriptedOcrServer([completion("la la la", "repetition")])
    clock = FakeClock()
    with pytest.raises(OcrRejected) as info:
        await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert info.value.reason == "ocr_repetition_loop" and info.value.push_status == 204
    assert [r["temperature"] for r in server.requests] == [0.2, 0.3, 0.5, 0.8]


DISTINCT = " ".join(f"word{i}" for i in range(4096))  # a long page's text, cut: no loop


async def test_a_long_reply_is_asked_again_with_what_the_context_leaves() -> None:
    server = ScriptedOcrServer(
        [completion(DISTINCT, "length", prompt_tokens=2145), completion("whole page")]
    )
    clock = FakeClock()
    client = server.client(clock, max_model_len=8192)
    result = await client.ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert result.markdown == "whole page"
    assert [r["temperature"] for r in server.requests] == [0.2, 0.2]
    assert [r["max_tokens"] for r in server.requests] == [4096, 8192 - 2145]
    assert (result.usage.attempts, result.usage.temperature) == (2, 0.2)
    assert client.stats.by_cause == {"long_page": 1}


async def test_a_long_reply_that_ends_repeating_itself_gets_more_tokens_one_step_up() -> None:
    rows = "<tr>" + "<td>0.00</td>" * 10 + "</tr>\n"  # 100 wide rows: a page holds them
    server = ScriptedOcrServer(
        [completion("<table>\n" + rows * 100, "length", prompt_tokens=2145), completion("ok")]
    )
    clock = FakeClock()
    client = server.client(clock, max_model_len=8192)
    result = await client.ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert result.markdown == "ok" and result.usage.temperature == 0.3
    assert [r["temperature"] for r in server.requests] == [0.2, 0.3]
    assert [r["max_tokens"] for r in server.requests] == [4096, 8192 - 2145]
    assert client.stats.by_cause == {"long_reply": 1}


async def test_without_usage_the_prompt_is_estimated_from_the_image_size() -> None:
    server = ScriptedOcrServer([completion(DISTINCT, "length"), completion("whole")])
    clock = FakeClock()
    image = io.BytesIO()
    Image.new("L", (1089, 1540), 255).save(image, "PNG")  # A4 at 1540 px: 39 x 55 tokens
    await server.client(clock).ocr_page(image.getvalue(), "image/png", deadline=clock.now + 60)
    assert [r["max_tokens"] for r in server.requests] == [4096, 8192 - (39 * 55 + 55 + 32)]


async def test_a_reply_with_no_room_left_in_the_context_climbs_then_fails_as_too_long() -> None:
    server = ScriptedOcrServer([completion(DISTINCT, "length", prompt_tokens=5000)])
    clock = FakeClock()
    with pytest.raises(OcrRejected) as info:
        await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert info.value.reason == "ocr_page_too_long" and info.value.push_status == 204
    assert "max_model_len 8192" in info.value.message
    assert [r["temperature"] for r in server.requests] == [0.2, 0.3, 0.5, 0.8]
    assert [r["max_tokens"] for r in server.requests] == [4096, 3192, 3192, 3192]


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_client_errors_are_not_retried(status: int) -> None:
    server = ScriptedOcrServer([httpx.Response(status, json={"message": "bad image"})])
    clock = FakeClock()
    with pytest.raises(OcrRejected) as info:
        await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert info.value.reason == f"ocr_http_{status}"
    assert len(server.requests) == 1


async def test_auth_headers_are_sent() -> None:
    class Auth:
        async def headers(self) -> dict[str, str]:
            return {"Authorization": "Bearer t0ken"}

    server = ScriptedOcrServer([completion("ok")])
    http = httpx.AsyncClient(transport=httpx.MockTransport(server), base_url="http://ocr")
    from ocrpipe.worker.ocr_client import OcrClient, OcrParams

    await OcrClient(http, OcrParams.from_settings(Settings(), model="m"), auth=Auth()).ocr_page(
        IMAGE, "image/png", deadline=float("inf")
    )
    assert server.headers[0]["authorization"] == "Bearer t0ken"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),
        ("Thu, 01 Jan 1970 00:01:40 -0000", 60.0),
        ("soon", None),
        (None, None),
        ("\xb2", None),  # str.isdigit() says yes, float() crashes
        ("\u0661\u0662", None),  # Arabic-Indic digits: float() reads 12, RFC 9110 does not
        ("1.5", None),
        ("-3", None),
        ("+3", None),
        ("Fri, 31 Dec 99999 23:59:59 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=40.0) == seconds


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_auth_and_routing_errors_are_retried_and_logged_as_configuration_trouble(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Right after a deploy IAM is still propagating: the page must not fail for good."""
    server = ScriptedOcrServer(
        [httpx.Response(status, text="denied"), httpx.Response(status), completion("ok")]
    )
    clock = FakeClock()
    with caplog.at_level(logging.ERROR, logger="ocrpipe.worker.ocr_client"):
        result = await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert result.markdown == "ok" and result.usage.attempts == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all("configuration" in r.getMessage() and "\n" not in r.getMessage() for r in errors)
    assert "IAM" in errors[0].getMessage() and "audience" in errors[0].getMessage()


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_auth_errors_that_last_the_whole_budget_nack_for_a_replayable_retry(
    status: int,
) -> None:
    server = ScriptedOcrServer([httpx.Response(status)])
    clock = FakeClock()
    deadline = clock.now + 30
    with pytest.raises(OcrUnavailable) as info:
        await server.client(clock).ocr_page(IMAGE, "image/png", deadline=deadline)
    assert info.value.push_status == 503 and info.value.reason == f"ocr_unavailable:{status}"
    assert len(server.requests) >= 2 and clock.now <= deadline


def malformed(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})


MALFORMED = {
    "not-utf8": b'{"choices": [{"message": {"content": "\xff\xfe"}}]}',
    "not-json": b"<html>gateway</html>",
    "no-choices": b'{"choices": []}',
    "no-message": b'{"choices": [{"finish_reason": "stop"}]}',
    "empty": b"",
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_reply_is_tried_a_few_times_then_fails_the_page_for_good(
    body: bytes,
) -> None:
    """One delivery once made 45 requests in 516 s (about 450 GPU inferences) on a reply
    that could never parse."""
    server = ScriptedOcrServer([malformed(body)])
    clock = FakeClock()
    with pytest.raises(OcrRejected) as info:
        await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 540)
    assert info.value.reason == "ocr_malformed_reply" and info.value.push_status == 204
    assert len(server.requests) == 3


async def test_the_number_of_malformed_replies_tolerated_is_a_setting() -> None:
    server = ScriptedOcrServer([malformed(b"nope")])
    clock = FakeClock()
    with pytest.raises(OcrRejected):
        await server.client(clock, malformed_attempts=1).ocr_page(
            IMAGE, "image/png", deadline=clock.now + 540
        )
    assert len(server.requests) == 1


async def test_one_malformed_reply_then_a_good_one_is_a_result() -> None:
    server = ScriptedOcrServer([malformed(b"{"), completion("ok")])
    clock = FakeClock()
    result = await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert result.markdown == "ok" and result.usage.attempts == 2


@pytest.mark.parametrize("value", [b"\xb2", "\u0661\u0662".encode(), b"later"])
async def test_a_retry_after_that_is_not_a_number_or_a_date_is_ignored(value: bytes) -> None:
    """``\xb2`` passes ``str.isdigit()`` and used to crash ``float()``: the push answered 500."""
    server = ScriptedOcrServer(
        [httpx.Response(429, headers=[(b"Retry-After", value)]), completion("ok")]
    )
    clock = FakeClock()
    result = await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 60)
    assert result.markdown == "ok"
    assert len(clock.sleeps) == 1 and clock.sleeps[0] <= MAX_BACKOFF_SECONDS


async def test_a_retry_after_date_is_capped_at_the_remaining_budget() -> None:
    server = ScriptedOcrServer(
        [httpx.Response(503, headers={"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"})]
    )
    clock = FakeClock()
    with pytest.raises(OcrUnavailable):
        await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 30)
    assert clock.sleeps == [] and len(server.requests) == 1


class TricklingServer:
    """A real HTTP server that answers 200 and then sends its body one byte every 0.1 s, for
    as long as the client stays: each byte resets a read timeout, so only a wall-clock
    deadline stops the request. :attr:`client_left` is set when the client hangs up."""

    def __init__(self, body_bytes: int = 10**6, interval: float = 0.1) -> None:
        self._body_bytes = body_bytes
        self._interval = interval
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self.client_left = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {self._body_bytes}\r\n\r\n"
            )
            try:
                conn.sendall(head.encode())
                for _ in range(self._body_bytes):
                    if self._stop.wait(self._interval):
                        return
                    conn.sendall(b" ")
            except OSError:
                self.client_left.set()  # the client gave up and closed the connection

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


async def test_the_budget_is_a_wall_clock_limit_even_for_a_server_that_trickles() -> None:
    """A server sending one byte every 0.5 s kept a 3 s budget busy for 10 s. This one
    trickles for days: without the wall-clock limit the request would never end; with it,
    the client gives up when the budget does and hangs up on the server."""
    server = TricklingServer()
    client = OcrClient.create(
        server.url, OcrParams.from_settings(Settings(), model="m", request_timeout_s=300)
    )
    try:
        with pytest.raises(OcrUnavailable) as info:
            async with asyncio.timeout(60):  # the request never ends without its limit
                await client.ocr_page(IMAGE, "image/png", deadline=time.monotonic() + 3)
        hung_up = await asyncio.to_thread(server.client_left.wait, 60)
    finally:
        await client.aclose()
        server.close()
    assert hung_up, "the client gave up but never closed the connection"
    assert info.value.push_status == 503 and client.stats.by_cause == {"timeout": 1}


async def test_waiting_for_an_in_flight_slot_counts_against_the_budget() -> None:
    """A page waiting for a slot used to wait outside its budget. Here the only slot is held
    until the test ends: without the limit the second page would wait for ever."""
    holding, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        holding.set()
        await release.wait()  # holds the only slot
        return completion("ok")

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://ocr")
    client = OcrClient(http, OcrParams.from_settings(Settings(), model="m", max_in_flight=1))
    slow = client.ocr_page(IMAGE, "image/png", deadline=time.monotonic() + 600)
    first = asyncio.create_task(slow)
    await holding.wait()
    try:
        with pytest.raises(OcrUnavailable):
            async with asyncio.timeout(60):  # the wait never ends without the budget's limit
                await client.ocr_page(IMAGE, "image/png", deadline=time.monotonic() + 3)
    finally:
        release.set()
        await first
        await http.aclose()
    assert calls == 1  # the page that never got a slot sent nothing
    assert client.stats.by_cause == {"slot_wait": 1}


async def test_a_looping_page_is_cut_while_streaming_then_answered_one_step_up() -> None:
    """Against the real fault server: the loop at temperature 0.2 is cut long before
    max_tokens, the next temperature answers, and the usage counts every token read. The
    loop runs to 12,000 tokens (6 s at 2000 tokens/s): a client that did not cut it, or a
    server that went on generating after the cut, would count all of them."""
    from ocrpipe.local.faults import FaultPlan, create_app, serve_in_background
    from tests.test_faults import LONG_LOOP_TOKENS, page, settled

    plan = FaultPlan(seed=1, plength=1.0, tokens_per_s=2000)
    image = page("loops", "The real text of the page.")
    params = OcrParams.from_settings(Settings(), max_tokens=LONG_LOOP_TOKENS)
    with serve_in_background(create_app(plan)) as url:
        client = OcrClient.create(url, params)
        try:
            result = await client.ocr_page(image, "image/png", deadline=time.monotonic() + 60)
        finally:
            await client.aclose()
        served = settled(url)
    assert result.markdown.endswith("The real text of the page.")
    assert "page-sha256" in result.markdown  # the fault server's own answer, not a loop
    assert result.usage.temperature == 0.3 and result.usage.finish_reason == "stop"
    assert result.usage.attempts == 2
    assert client.stats.by_cause == {"repetition": 1}
    # The loop was cut where the rule cuts it: a few hundred tokens.
    assert 0 < client.stats.loop_tokens < 1000
    assert result.usage.completion_tokens > client.stats.loop_tokens
    assert (served["streamed"], served["abandoned"]) == (2, 1)
    assert served["completion_tokens"] < LONG_LOOP_TOKENS


async def test_each_page_counts_its_own_attempts_when_pages_run_concurrently() -> None:
    """Usage is billed per page: pages answered at once report 1 attempt each even while
    another page of the same client is retried meanwhile (3 attempts)."""
    flaky_done = asyncio.Event()
    flaky_attempts = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal flaky_attempts
        if request_image(json.loads(request.content)) != b"flaky":
            await flaky_done.wait()  # the other pages stay in flight through the retries
            return completion("ok")
        flaky_attempts += 1
        if flaky_attempts < 3:
            return httpx.Response(503)
        flaky_done.set()
        return completion("ok")

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://ocr")
    clock = FakeClock()
    params = OcrParams.from_settings(Settings(), model="lightonai/LightOnOCR-2-1B")
    client = OcrClient(http, params, clock=clock, sleep=clock.sleep)
    others = [client.ocr_page(f"page {n}".encode(), "image/png", deadline=clock.now + 60)
              for n in range(9)]  # fmt: skip
    flaky = client.ocr_page(b"flaky", "image/png", deadline=clock.now + 60)
    results = await asyncio.gather(*others, flaky)
    assert [r.usage.attempts for r in results] == [1] * 9 + [3]
    assert client.stats.requests == 12
