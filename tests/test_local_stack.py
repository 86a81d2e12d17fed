"""The local stack's own contract, without starting it: the settings it reports are the
settings its services get, and it notices when one of its parts dies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocrpipe.local.stack import Child, LocalStack, StackError


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


def test_watch_names_the_part_that_exited_with_its_log(tmp_path: Path) -> None:
    stack = LocalStack(log_dir=tmp_path)
    log = tmp_path / "worker.log"
    with log.open("wb") as handle:
        script = "import sys; print('worker: cannot bind'); sys.exit(3)"
        process = subprocess.Popen([sys.executable, "-c", script], stdout=handle)
    stack.children.append(Child("worker", process, log))
    with pytest.raises(StackError, match=r"worker exited with 3:\nworker: cannot bind"):
        stack.watch(interval=0.05)
