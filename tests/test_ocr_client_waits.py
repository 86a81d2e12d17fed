"""What the OCR client says while the OCR server refuses connections: vLLM does not listen
until its model is loaded (a cold GPU instance: a minute or more), so a worker that waits in
silence looks hung. (Against the real server: tests/test_vllm_lifecycle.py.)"""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from ocrpipe.errors import OcrRejected
from ocrpipe.testing.clock import FakeClock
from tests.fakes import ScriptedOcrServer, completion

IMAGE = b"\x89PNG fake image bytes"


def waited(records: list[logging.LogRecord]) -> list[float]:
    """The seconds each WARNING about refused connections says the client has waited."""
    found = []
    for record in records:
        message = record.getMessage()
        if record.levelno == logging.WARNING and "refuses connections" in message:
            match = re.search(r"waited (\d+) s", message)
            assert match, message
            found.append(float(match.group(1)))
    return found


async def test_refused_connections_are_logged_with_how_long_the_client_has_waited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    server = ScriptedOcrServer([*[refused] * 12, completion("ok")])
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="ocrpipe")
    result = await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 500)
    assert result.markdown == "ok"
    seconds = waited(caplog.records)
    total = sum(clock.sleeps)
    assert seconds and seconds[0] == 0  # the first refusal is reported at once
    assert seconds == sorted(seconds) and seconds[-1] >= total - 60  # then as it goes on
    assert len(seconds) < 12  # not once per attempt: at most every 30 s
    assert re.search(r"answers again after \d+ s", caplog.text)


def vllm_500(message: str) -> httpx.Response:
    error = {"message": message, "type": "InternalServerError", "param": None, "code": 500}
    return httpx.Response(500, json={"error": error})


async def test_the_same_500_for_a_page_three_times_is_a_permanent_failure() -> None:
    """vLLM answers 500 for an image it cannot take (over PIL's pixel limit, measured in
    tests/test_vllm_contract.py), the same every time: retrying it until the budget ends,
    then again on each of the ten deliveries, only burns time."""
    bomb = vllm_500("Image size (400000000 pixels) exceeds limit of 178956970 pixels")
    server = ScriptedOcrServer([bomb])
    clock = FakeClock()
    started = clock.now
    with pytest.raises(OcrRejected) as info:
        await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 500)
    assert info.value.reason == "ocr_http_500"
    assert info.value.usage is not None and info.value.usage.attempts == 3
    assert len(server.requests) == 3 and clock.now - started < 60


async def test_500s_that_change_are_retried_until_they_stop() -> None:
    """A 500 whose answer differs from the last (an engine restarting, a real transient
    fault) stays retryable."""
    server = ScriptedOcrServer(
        [
            vllm_500("engine step failed (1)"),
            vllm_500("engine step failed (2)"),
            vllm_500("engine step failed (3)"),
            vllm_500("engine step failed (4)"),
            completion("ok"),
        ]
    )
    clock = FakeClock()
    result = await server.client(clock).ocr_page(IMAGE, "image/png", deadline=clock.now + 500)
    assert result.markdown == "ok" and result.usage.attempts == 5
