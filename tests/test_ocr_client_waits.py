"""What the OCR client says while the OCR server refuses connections: vLLM does not listen
until its model is loaded (a cold GPU instance: a minute or more), so a worker that waits in
silence looks hung. (Against the real server: tests/test_vllm_lifecycle.py.)"""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from tests.fakes import FakeClock, ScriptedOcrServer, completion

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
