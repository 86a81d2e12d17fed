"""Stopping a process tree whose members left its session (as the vLLM server a benchmark
starts does): nothing is orphaned."""

from __future__ import annotations

import os
import subprocess
import sys

from ocrpipe.testing.processes import descendants, parent, running, stop_tree
from ocrpipe.testing.waiting import wait_for

# A parent that starts a grandchild in a session of its own, says its pid, and waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""

# The same, but the parent unwinds on SIGTERM and stops its grandchild itself.
POLITE = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
def stop(*_):
    child.terminate()
    child.wait()
    print("stopped", flush=True)
    raise SystemExit(0)
signal.signal(signal.SIGTERM, stop)
print(child.pid, flush=True)
time.sleep(600)
"""


def start(code: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    grandchild = int(process.stdout.readline())
    return process, grandchild


def test_descendants_follow_children_out_of_their_session() -> None:
    process, grandchild = start(PARENT)
    try:
        assert grandchild in descendants(process.pid)
        assert parent(grandchild) == process.pid and parent(process.pid) == os.getpid()
        assert os.getsid(grandchild) != os.getsid(process.pid)
    finally:
        stop_tree(process, grace_s=0)
    wait_for(lambda: running(grandchild), lambda up: not up, what="the grandchild to go")


def test_a_process_killed_takes_its_whole_tree_with_it() -> None:
    process, grandchild = start(PARENT)
    stop_tree(process, grace_s=0)
    assert process.returncode is not None
    wait_for(lambda: running(grandchild), lambda up: not up, what="the grandchild to go")
    assert parent(process.pid) is None  # reaped by stop_tree


def test_a_process_that_unwinds_on_sigterm_is_let_to() -> None:
    process, grandchild = start(POLITE)
    stop_tree(process, grace_s=60)
    assert process.returncode == 0
    assert process.stdout is not None and process.stdout.read() == "stopped\n"
    assert not running(grandchild)
