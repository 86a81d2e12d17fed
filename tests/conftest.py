"""Shared fixtures. The local stack (real emulators) starts once per session, on free
ports, only for tests that ask for it, with IAM enforced (the authorizing proxies and the
grants of ocrpipe/iam.json), as every stack is unless a test says otherwise."""

from __future__ import annotations

import contextlib
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from ocrpipe.local.stack import IDENTITIES, LocalStack, Ports
from ocrpipe.settings import Settings
from ocrpipe.status import DocumentStatus, document_status
from ocrpipe.storage import GcsStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports, below Linux's ephemeral range (so a
    later :func:`free_port` does not land inside the block)."""
    for _ in range(200):
        base = random.randint(20000, 32000 - count)
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def free_ports() -> Ports:
    pubsub, gcs, ocr, worker, splitter, eventarc = (free_port() for _ in range(6))
    proxies = free_port_block(2 * len(IDENTITIES))
    return Ports(pubsub, gcs, ocr, worker, splitter, eventarc, proxies=proxies)


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
