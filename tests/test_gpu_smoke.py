"""The GPU image's smoke script, run against the local OCR engine server: the same checks
an operator runs against the deployed vLLM service (health, model list, one real OCR)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

SMOKE = Path(__file__).resolve().parents[1] / "gpu_image" / "smoke.py"
MODEL = "lightonai/LightOnOCR-2-1B"


@pytest.fixture(scope="module")
def engine_url() -> object:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ocrpipe.local.engine", "--host", "127.0.0.1",
         "--port", str(port), "--model-name", MODEL],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def smoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SMOKE), *args], capture_output=True, text=True, timeout=300
    )


def test_smoke_passes_against_the_local_engine(engine_url: str) -> None:
    result = smoke("--url", engine_url, "--model", MODEL, "--wait", "120")
    assert result.returncode == 0, result.stdout + result.stderr


def test_smoke_fails_clearly_for_a_model_the_server_does_not_serve(engine_url: str) -> None:
    result = smoke("--url", engine_url, "--model", "someone/else", "--wait", "120")
    assert result.returncode == 1
    assert "someone/else" in result.stdout + result.stderr
