"""Stopping a test run stops what it started: SIGTERM to pytest (a CI job cancelled, a
`kill` of ./scripts/test.sh) ends it the way Ctrl-C does, so every local stack a test
started is stopped by its own teardown instead of outliving the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ocrpipe.local.readiness import START_S, wait_until_ready
from ocrpipe.testing.processes import running

REPO = Path(__file__).resolve().parents[1]

A_TEST_WITH_A_STACK = """
from pathlib import Path

import pytest

from ocrpipe.local.stack import LocalStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    running = LocalStack(log_dir=tmp_path_factory.mktemp("stack"))
    running._spawn("worker", ["sleep", "600"], {})  # a part of the stack, in its own session
    Path("{pid_file}").write_text(str(running.children[0].process.pid))
    yield running
    running.stop()


def test_runs_long(stack):
    import time

    time.sleep(600)
"""


def test_sigterm_to_the_test_run_stops_the_stacks_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    test_file = tmp_path / "test_long.py"
    test_file.write_text(A_TEST_WITH_A_STACK.replace("{pid_file}", str(pid_file)))
    suite = ["-p", "tests.conftest", "-p", "no:cacheprovider"]  # this suite's own set-up
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", *suite, str(test_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_ready(
            pid_file.exists,
            what="the test to start its stack",
            timeout=START_S,
            died=lambda: None if run.poll() is None else run.communicate()[0],
        )
        child = int(pid_file.read_text())
        assert running(child)
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    # The stack's stop() waits for its parts (SIGKILL after 10 s), so by the time the run
    # has exited its part is gone and reaped: no grace period to race.
    if running(child):
        os.kill(child, signal.SIGKILL)  # leave nothing behind, then fail
        raise AssertionError(f"the stack's part outlived the test run:\n{output}")
