"""``ocrpipe up`` as a user runs it: in the foreground, usable from a second shell with
``--local``, and Ctrl-C stops every process it started."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocrpipe.local.readiness import wait_until_ready
from ocrpipe.local.stack import LocalStack, Ports, StackError, find_pubsub_emulator, free_ports
from ocrpipe.testing.processes import descendants, describe, running, stop_tree

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.pdf"
OCRPIPE = str(Path(sys.executable).with_name("ocrpipe"))


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def child_running(parent: int, command: str) -> int:
    """The pid of ``parent``'s child whose command line contains ``command``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue  # it exited meanwhile
        if ppid == parent and command in cmdline:
            return int(proc.name)
    raise AssertionError(f"no child of {parent} runs {command}")


def ctrl_c_as_in_a_terminal() -> None:
    """A shell's background job (nohup, &) ignores SIGINT and its children inherit that:
    give ocrpipe up the Ctrl-C a terminal would, however this test run was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class RunningUp:
    """An ``ocrpipe up`` run by :func:`ocrpipe_up`; ``output`` and ``returncode`` once stopped."""

    folder: Path
    env: dict[str, str]
    ports: Ports
    pid: int
    output: str = ""
    returncode: int | None = None

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """``ocrpipe COMMAND`` in a second shell, in the same folder."""
        return subprocess.run([OCRPIPE, *command], cwd=self.folder, env=self.env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip


@contextmanager
def ocrpipe_up(folder: Path, *options: str) -> Iterator[RunningUp]:
    """``ocrpipe up OPTIONS`` on free ports in ``folder``, in the foreground as a user runs
    it, until the block ends; then Ctrl-C (SIGTERM if that does not stop it)."""
    ports = free_ports()
    args = [f"--{name}-port={port}" for name, port in vars(ports).items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCRPIPE_")}
    up = subprocess.Popen([OCRPIPE, "up", *options, *args], cwd=folder, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=ctrl_c_as_in_a_terminal)  # fmt: skip
    running = RunningUp(folder, env, ports, up.pid)

    def up_exited() -> str | None:
        if up.poll() is None:
            return None
        return f"ocrpipe up exited with {up.returncode}: {up.stdout.read() if up.stdout else ''}"

    try:
        env_file = folder / ".ocrpipe" / "local.env"  # written once every part answers
        wait_until_ready(  # ocrpipe up stops itself when a part does not start in its time
            env_file.exists, what="ocrpipe up did not come up", timeout=300, died=up_exited,
            interval=0.3,
        )  # fmt: skip
        yield running
    finally:
        up.send_signal(signal.SIGINT)
        try:
            running.output, _ = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            up.terminate()  # SIGTERM stops it too: leave no stack behind
            up.communicate(timeout=60)
            raise
        running.returncode = up.returncode


@pytest.mark.e2e
def test_up_submit_and_ctrl_c(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "sample.pdf")
    follow: subprocess.Popen[str] | None = None
    with ocrpipe_up(tmp_path) as up:
        try:
            # A third shell follows the documents as the stack's project owner.
            follow = subprocess.Popen(
                [OCRPIPE, "follow", "--local", "--count", "1", "--timeout", "300"],
                cwd=tmp_path, env=up.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            assert follow.stderr is not None
            started = follow.stderr.readline()  # once its subscription exists
            assert "following ocrpipe-documents" in started, started + follow.stderr.read()
            submit = up.run("submit", "--local", "sample.pdf", "--wait", "--timeout", "240")
            assert submit.returncode == 0, submit.stdout + submit.stderr
            assert "sample.pdf: done" in submit.stdout
            assert "gs://ocrpipe-output/sample.pdf/@" in submit.stdout
            followed, _ = follow.communicate(timeout=300)
            assert follow.returncode == 0, followed
            assert followed.startswith("done sample.pdf  ") and "/document.md" in followed
            # A worker that dies is started again, and the stack goes on.
            os.kill(child_running(up.pid, "ocr_worker.app:create_app"), signal.SIGKILL)
            shutil.copy(EXAMPLE, tmp_path / "again.pdf")
            again = up.run("submit", "--local", "again.pdf", "--wait", "--timeout", "240")
            assert again.returncode == 0, again.stdout + again.stderr
        finally:
            if follow is not None and follow.poll() is None:
                follow.kill()
                follow.communicate()
    assert up.returncode == 0, up.output
    assert "Buckets are in memory" in up.output and "--data-dir" in up.output
    assert "worker exited with -9: started it again (restart 1" in up.output
    assert "parts started again while the stack ran: worker 1" in up.output
    assert "stopping" in up.output
    assert not (tmp_path / ".ocrpipe" / "local.env").exists()
    assert not (tmp_path / ".ocrpipe" / "owner.env").exists()
    assert all(port_is_free(port) for port in vars(up.ports).values())


@pytest.mark.e2e
def test_the_demo_runs_where_the_default_ports_are_taken(tmp_path: Path) -> None:
    """The README's first command on a machine already running something on 8085 (another
    `ocrpipe up`, an emulator): the demo's stack takes free ports of its own."""
    default = Ports()
    with contextlib.ExitStack() as held:
        for port in (default.pubsub, default.gcs):
            sock = held.enter_context(socket.socket())
            with contextlib.suppress(OSError):  # already taken by someone else: as good
                sock.bind(("127.0.0.1", port))
                sock.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCRPIPE_")}
        demo = subprocess.Popen(
            [OCRPIPE, "demo", str(EXAMPLE), "--timeout", "300"], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            stdout, stderr = demo.communicate(timeout=420)
        finally:  # interrupted: the demo stops its stack on SIGTERM, and what is left dies
            stop_tree(demo, grace_s=60)
    assert demo.returncode == 0, stdout + stderr
    assert "sample.pdf: done" in stdout and "<!-- page 1 -->" in stdout


def test_a_taken_port_gets_a_clear_message() -> None:
    ports = free_ports()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports.gcs))
        busy.listen()
        with pytest.raises(StackError, match=f"gcs port {ports.gcs} already in use"):
            LocalStack(ports=ports).start()


def test_a_missing_pubsub_emulator_says_how_to_install_it() -> None:
    with pytest.raises(StackError, match="gcloud components install pubsub-emulator"):
        find_pubsub_emulator(())


def test_sigterm_to_the_demo_stops_its_stack(tmp_path: Path) -> None:
    """A demo killed politely (a CI job cancelled, a `kill`) stops the stack it started,
    as `ocrpipe up` does: its parts run in sessions of their own and would outlive it."""
    demo = subprocess.Popen(
        [OCRPIPE, "demo", str(EXAMPLE), "--timeout", "300"], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    parts: list[int] = []
    try:
        assert demo.stdout is not None
        submitted = ""
        while "submitted" not in submitted and demo.poll() is None:
            submitted = demo.stdout.readline()  # the stack is up once the file is submitted
        assert "submitted" in submitted, "the demo ended before it submitted its file"
        parts = descendants(demo.pid)
        assert parts, "the demo runs no stack"
        demo.send_signal(signal.SIGTERM)
        demo.communicate(timeout=120)
        left = [pid for pid in parts if running(pid)]
        assert left == [], [describe(pid) for pid in left]
    finally:
        stop_tree(demo, grace_s=0)
        for pid in parts:  # what outlived a demo that died: leave nothing behind
            if running(pid):
                os.kill(pid, signal.SIGKILL)
