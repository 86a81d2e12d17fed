"""Shared fixtures. The local stack (real emulators) starts once per session, on free
ports, only for tests that ask for it, with IAM enforced (the authorizing proxies and the
grants of ocrpipe/iam.json), as every stack is unless a test says otherwise."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from ocrpipe.local.stack import LocalStack, free_ports
from ocrpipe.operations.status import DocumentStatus, document_status
from ocrpipe.settings import Settings
from ocrpipe.storage import GcsStore


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
