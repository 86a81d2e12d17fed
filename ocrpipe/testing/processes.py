"""A process and everything it started, even what left its session.

The local stack's parts and the vLLM server run in sessions of their own, so a signal to a
process group does not reach them; the parent links in ``/proc`` still do. Used where a
test or benchmark must stop a process it started whatever that process left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that are still running (none if it is gone)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(child) for child in (task / "children").read_text().split())
    except OSError:
        pass
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    found: list[int] = []
    pending = children(pid)
    while pending:
        child = pending.pop(0)
        found.append(child)
        pending.extend(children(child))
    return found


def _stat(pid: int) -> tuple[str, list[str]] | None:
    """``pid``'s name and the fields of ``/proc/PID/stat`` after it (state, parent, ...;
    the name is cut out first, as it may hold spaces and parentheses); None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()


def running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (exited, not yet reaped by its parent) does not."""
    stat = _stat(pid)
    return stat is not None and stat[1][0] != "Z"


def parent(pid: int) -> int | None:
    """The process that started ``pid`` (or adopted it when that one died); None once
    ``pid`` is gone."""
    stat = _stat(pid)
    return None if stat is None else int(stat[1][1])


def started(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), so a pid reused meanwhile is told
    apart; None once it is gone."""
    stat = _stat(pid)
    return None if stat is None else stat[1][19]


def stop_tree(process: subprocess.Popen[bytes] | subprocess.Popen[str], grace_s: float) -> None:
    """Stop ``process`` and everything below it: SIGTERM, up to ``grace_s`` s for it to
    unwind (and stop what it started itself), then SIGKILL to whatever of the tree is left.
    The tree is read before each signal: once a parent dies its children are re-parented."""
    if process.poll() is None:
        tree = {pid: started(pid) for pid in descendants(process.pid)}
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            tree |= {pid: started(pid) for pid in descendants(process.pid)}
            process.kill()
        for pid, when in tree.items():
            if when is not None and started(pid) == when:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    process.wait()


def describe(pid: int) -> str:
    """``pid``'s resident memory and command line, for a report; a zombie (exited, never
    waited for) is named with the parent that has not reaped it."""
    stat = _stat(pid)
    if stat is None:
        return f"{pid}: gone"
    name, (state, reaper, *_) = stat
    if state == "Z":
        return f"{pid}: {name}, exited and never waited for by its parent {describe(int(reaper))}"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return f"{pid}: gone"
    rss = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")), "0")
    return f"{pid}: {int(rss) // 1024} MiB, {command.strip()[:160]}"
