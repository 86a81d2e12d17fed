"""Nothing from an input reaches the logs unescaped: an object name with newlines, control
characters or terminal escapes stays inside one JSON line and round-trips exactly."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from ocrpipe.logs import JsonFormatter, log_context

HOSTILE = [
    'report.pdf"}\n{"severity": "CRITICAL", "message": "forged"}',
    "line\rreturn\x85next\u2028line\u2029para",
    "\x1b[2J\x1b[31mred\x1b[0m\x07bell\x9b31mcsi\x7fdel\x00nul\ttab",
    "ünïcødé/名前/📄.pdf",
]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.escaping")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield stream
    logger.removeHandler(handler)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_stays_one_escaped_json_line(captured: io.StringIO, name: str) -> None:
    logger = logging.getLogger("test.escaping")
    with log_context(doc_id=name, page=3):
        logger.warning("input rejected: %s", name, extra={"reason": name})
    text = captured.getvalue()
    assert text.endswith("\n") and len(text.splitlines()) == 1  # splitlines: \x85, \u2028 too
    line = text.rstrip("\n")
    assert not [c for c in line if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"]
    entry = json.loads(line)
    assert entry["message"] == f"input rejected: {name}"
    assert entry["reason"] == name
    assert entry["logging.googleapis.com/labels"]["doc_id"] == name
    assert entry["severity"] == "WARNING"
