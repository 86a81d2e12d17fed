"""The GPU image's smoke script, run against the local OCR engine server: the same checks
an operator runs against the deployed vLLM service (health, model list, one real OCR)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrpipe.local.readiness import NotReady, exited, http_answers, wait_until_ready
from ocrpipe.local.stack import free_port

SMOKE = Path(__file__).resolve().parents[1] / "gpu_image" / "smoke.py"
MODEL = "lightonai/LightOnOCR-2-1B"


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "ocrpipe.local.engine", "--host", "127.0.0.1",
             "--port", str(port), "--model-name", MODEL],
            stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Fail at once, with the engine's own words, if it dies instead of starting."""
    healthy = http_answers(f"{url}/health", lambda status: status == 200)
    try:
        wait_until_ready(
            healthy, what="the OCR engine did not answer /health", timeout=120,
            died=exited(process), interval=0.2,
        )  # fmt: skip
    except NotReady as exc:
        pytest.fail(f"{exc}\n{log.read_text()}")


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
