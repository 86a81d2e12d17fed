"""The worker reads the served model's context length (vLLM's ``max_model_len`` in
``GET /v1/models``) when it starts, and refuses to start when a page's prompt plus
``OCRPIPE_OCR_MAX_TOKENS`` cannot fit: vLLM 0.30 refuses max_tokens >= max_model_len (400,
every page failed for good) and clamps a reply that would overflow (``length``, which the
worker reads as a loop). Against the real server: tests/test_vllm_contract.py."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from ocr_worker.app import create_app
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.worker.context_fit import ContextTooShort, check_fit, largest_prompt_tokens
from tests.fakes import ScriptedOcrServer, completion


def settings(**fields: object) -> Settings:
    # Unverified pushes are allowed only against the emulators (never contacted here).
    emulator = "http://127.0.0.1:4443"
    return Settings(verify_push_auth=False, storage_emulator_host=emulator, **fields)  # type: ignore[arg-type]


def test_the_largest_page_is_a_1540_px_square() -> None:
    """55 x 55 tokens of 28 px, and room for the chat template (12 tokens measured)."""
    assert 55 * 55 + 12 <= largest_prompt_tokens(settings()) <= 55 * 55 + 64


def test_the_defaults_fit_lightonocr_2_1b() -> None:
    check_fit(settings(), 8192)


def test_max_tokens_that_cannot_fit_are_named_with_what_would() -> None:
    with pytest.raises(ContextTooShort) as info:
        check_fit(settings(ocr_max_tokens=6000), 8192)
    message = str(info.value)
    assert "OCRPIPE_OCR_MAX_TOKENS=6000" in message and "8192" in message
    assert f"at most {8192 - largest_prompt_tokens(settings())}" in message


def test_the_worker_refuses_to_start_when_its_replies_cannot_fit() -> None:
    server = ScriptedOcrServer([completion("never asked")], max_model_len=8192)
    app = create_app(
        settings(ocr_max_tokens=6000),
        store=MemoryStore(),
        ocr=server.client(max_tokens=6000),
        publisher=MemoryPublisher(),
    )
    with pytest.raises(ContextTooShort, match="OCRPIPE_OCR_MAX_TOKENS"), TestClient(app):
        pass


def test_the_worker_starts_and_says_so_when_the_server_cannot_be_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A GPU service scaled to zero may not answer while the worker starts: it starts
    anyway, and says it did not check (the worker logs JSON lines on stdout)."""
    server = ScriptedOcrServer([completion("ok")], max_model_len=None)
    app = create_app(
        settings(), store=MemoryStore(), ocr=server.client(), publisher=MemoryPublisher()
    )
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
    warnings = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if "WARNING" in line
    ]
    assert any("max_model_len" in w["message"] for w in warnings), warnings


def test_the_served_context_length_is_read_from_v1_models() -> None:
    server = ScriptedOcrServer([completion("ok")], max_model_len=16384)
    app = create_app(
        settings(), store=MemoryStore(), ocr=server.client(), publisher=MemoryPublisher()
    )
    with TestClient(app):
        pass
    assert server.gets == ["/v1/models"]


def test_a_context_setting_longer_than_the_served_one_is_refused() -> None:
    """OCRPIPE_OCR_MAX_MODEL_LEN sizes the second request of a long page (what the context
    leaves): above what vLLM serves, that request would be refused or clamped."""
    with pytest.raises(ContextTooShort, match="OCRPIPE_OCR_MAX_MODEL_LEN=16384"):
        check_fit(settings(ocr_max_model_len=16384), 8192)
    check_fit(settings(ocr_max_model_len=8192), 16384)  # a shorter setting only wastes room
