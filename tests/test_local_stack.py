"""The local stack's own contract: the settings it reports are the settings its services
get, it is sized to its OCR engine, and it starts a part that dies again (without starting
a stack, except for the one end-to-end test of a restart)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ocrpipe.local.stack import (
    Child,
    LocalStack,
    Restart,
    StackError,
    fault_stack,
    free_port,
    free_ports,
)
from ocrpipe.storage import GcsStore
from ocrpipe.testing import waiting
from ocrpipe.testing.pdfs import text_pdf
from tests.conftest import unique_name, wait_until_finished

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.mark.skipif(not EPHEMERAL.exists(), reason="Linux's ephemeral port range is unknown")
def test_free_ports_are_below_the_ephemeral_range_and_distinct() -> None:
    """A port the kernel may hand to any outgoing connection as its local port can be taken
    between the pick and the bind: with two test suites on one machine, a stack's worker
    failed with 'Address already in use'. Free ports come from below that range."""
    low = int(EPHEMERAL.read_text().split()[0])
    for _ in range(20):
        ports = list(free_ports().all().values())
        assert len(set(ports)) == len(ports), ports
        singles = [free_port() for _ in range(5)]
        assert all(1024 <= port < low for port in [*ports, *singles]), (low, ports, singles)


def test_setting_overrides_are_what_the_stack_reports_and_what_services_get() -> None:
    stack = LocalStack(overrides={"max_input_bytes": 2 * 2**20})
    assert stack.settings.max_input_bytes == 2 * 2**20
    for identity in ("splitter", "worker", None):
        assert stack.env(identity)["OCRPIPE_MAX_INPUT_BYTES"] == str(2 * 2**20)


def test_an_unknown_or_invalid_override_is_refused_when_the_stack_is_made() -> None:
    with pytest.raises(StackError, match="ocr_budgt_s"):
        LocalStack(overrides={"ocr_budgt_s": 3})
    with pytest.raises(StackError, match="ocr_budget_s"):
        LocalStack(overrides={"ocr_budget_s": "soon"})


def test_the_fields_the_stack_owns_cannot_be_overridden() -> None:
    with pytest.raises(StackError, match="output_bucket"):
        LocalStack(overrides={"output_bucket": "elsewhere"})


def test_with_its_own_cpu_engine_the_stack_delivers_what_the_engine_can_serve() -> None:
    engine = LocalStack(overrides={"local_engine_threads": 3})
    assert engine.settings.engine_threads == 3
    assert engine.settings.delivery_max_in_flight == 6  # one being OCR'd, one waiting, per page
    assert engine.env(None)["OCRPIPE_LOCAL_DELIVERY_MAX_IN_FLIGHT"] == "6"  # the relay's
    default = LocalStack().settings
    assert default.engine_threads == max(1, len(os.sched_getaffinity(0)) // 2)
    assert default.delivery_max_in_flight == 2 * default.engine_threads


def test_a_gpu_url_or_an_explicit_limit_keeps_its_own_delivery() -> None:
    gpu = LocalStack(ocr_url="https://vllm.example.com")
    assert gpu.settings.delivery_max_in_flight == gpu.settings.ocr_max_in_flight == 32
    fault = LocalStack(ocr_command=["true"])  # a test's OCR server
    assert fault.settings.delivery_max_in_flight == 32
    chosen = LocalStack(overrides={"local_delivery_max_in_flight": 5})
    assert chosen.settings.delivery_max_in_flight == 5


PARTS = [
    "Pub/Sub emulator",
    "Pub/Sub authorizing proxy",
    "fake-gcs-server",
    "GCS authorizing proxy",
    "OCR engine",
    "worker",
    "splitter",
    "Eventarc stand-in",
    "topics and subscriptions",
    "push relay",
]


@pytest.mark.parametrize(
    ("options", "parts"),
    [
        ({}, PARTS),
        ({"iam": False}, [p for p in PARTS if "authorizing" not in p]),
        ({"ocr_url": "https://vllm.example.com"}, [p for p in PARTS if p != "OCR engine"]),
        ({"data_dir": Path("data")}, [*PARTS, "re-queuing unfinished documents"]),
    ],
)
def test_start_tells_what_it_starts_in_the_order_it_starts_it(
    options: dict[str, Any], parts: list[str]
) -> None:
    """What `ocrpipe up` prints while the stack starts: each part after those it talks to,
    and only the parts this stack runs."""
    stack = LocalStack(**options)
    steps = [step for step in stack._steps() if step.applies]
    assert [step.label for step in steps if step.label is not None] == parts
    gcs = [step.label for step in steps].index("fake-gcs-server")
    assert steps[gcs + 1].run == stack._create_buckets  # once it answers, under its label


def test_an_emulator_that_exits_stops_the_stack_naming_it_with_its_log(tmp_path: Path) -> None:
    stack = LocalStack(log_dir=tmp_path)
    log = tmp_path / "pubsub.log"
    with log.open("wb") as handle:
        script = "import sys; print('pubsub: out of memory'); sys.exit(3)"
        process = subprocess.Popen([sys.executable, "-c", script], stdout=handle)
    stack.children.append(Child("pubsub", process, log))
    with pytest.raises(StackError, match=r"pubsub exited with 3:\npubsub: out of memory"):
        stack.watch(interval=0.05)


def test_a_part_that_cannot_start_again_stops_the_stack(tmp_path: Path) -> None:
    broken = [sys.executable, "-c", "print('engine: no model'); raise SystemExit(4)"]
    stack = LocalStack(ports=free_ports(), log_dir=tmp_path, ocr_command=broken)
    log = tmp_path / "ocr.log"
    with log.open("wb") as handle:
        process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(9)"], stdout=handle)
    stack.children.append(Child("ocr", process, log, started=time.monotonic() - 3600))
    stack._ocr_command = broken
    with pytest.raises(StackError, match=r"(?s)ocr exited and could not start again: .*no model"):
        stack.watch(interval=0.05)


@pytest.mark.e2e
def test_a_part_that_dies_is_started_again_and_the_pipeline_goes_on(tmp_path: Path) -> None:
    restarts: list[Restart] = []
    stop = threading.Event()

    with fault_stack(log_dir=tmp_path) as stack:
        watcher = threading.Thread(
            target=stack.watch,
            kwargs={"interval": 0.1, "on_restart": restarts.append, "stop": stop},
        )
        watcher.start()
        try:
            for part in ("worker", "ocr", "splitter", "relay"):
                pid = next(c.process.pid for c in list(stack.children) if c.name == part)
                os.killpg(pid, signal.SIGKILL)
                if part != "relay":
                    wait_restarted(stack, restarts, part, watcher)
            # The pages are published while the relay is dead: its last pull is still open
            # at the emulator, which hands them to it (they would wait out the ack deadline).
            store = GcsStore.connect(stack.project, stack.settings.storage_emulator_host)
            name = unique_name("after-restarts")
            data, _ = text_pdf(2, seed=3, lines=3)
            store.upload(stack.settings.input_bucket, name, io.BytesIO(data), "application/pdf")
            wait_restarted(stack, restarts, "relay", watcher)
            final = wait_until_finished(stack, store, name)
        finally:
            stop.set()
            watcher.join()
    assert final.state == "done"
    assert [(r.name, r.count, r.returncode) for r in restarts] == [
        ("worker", 1, -9), ("ocr", 1, -9), ("splitter", 1, -9), ("relay", 1, -9)
    ]  # fmt: skip
    assert stack.restarts == {"worker": 1, "ocr": 1, "splitter": 1, "relay": 1}


def wait_restarted(
    stack: LocalStack, restarts: list[Restart], part: str, watcher: threading.Thread
) -> None:
    """Until the stack's watch has started ``part`` again: fails only when nothing moves (the
    part's log does not grow) for a generous while, or the watch itself ended."""
    assert stack.log_dir is not None
    log = stack.log_dir / f"{part}.log"

    def reading() -> tuple[bool, int]:
        return part in {r.name for r in restarts}, log.stat().st_size if log.exists() else 0

    waiting.wait_for(
        reading,
        lambda restarted: restarted[0],
        what=f"the {part} started again",
        alive=lambda: None if watcher.is_alive() else "the stack's watch ended",
    )
