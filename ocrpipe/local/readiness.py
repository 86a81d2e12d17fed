"""Waiting for a process to answer: until a port accepts connections, a URL answers, or a log
says the process is ready, failing at once, with the process's own words, if it exits
first. One loop for the local stack, the fault server, the benchmarks and the tests.

A probe is a function that says whether the process answers yet (:func:`tcp_accepts`,
:func:`http_answers`, :func:`log_says`, or any ``() -> bool``); ``died`` says why waiting is
pointless (``None`` while the process runs: :func:`exited` for a ``Popen``).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

START_S = 120.0  # how long a server a test or benchmark starts may take on a loaded machine


class NotReady(RuntimeError):
    """The process did not answer in time, or exited instead."""


def wait_until_ready(
    probe: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    died: Callable[[], str | None] | None = None,
    interval: float = 0.1,
) -> None:
    """Until ``probe()`` is true. Raises :class:`NotReady` with ``died()``'s reason as soon
    as it gives one, or ``"{what} within {timeout} s"`` when the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        if died is not None and (reason := died()) is not None:
            raise NotReady(reason)
        if probe():
            return
        if time.monotonic() > deadline:
            raise NotReady(f"{what} within {timeout:.0f} s")
        time.sleep(interval)


def tcp_accepts(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    def probe() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex((host, port)) == 0

    return probe


def http_answers(
    url: str, ok: Callable[[int], bool] = lambda status: status < 500
) -> Callable[[], bool]:
    """A GET of ``url`` gets an answer whose status ``ok`` accepts (default: below 500)."""

    def probe() -> bool:
        try:
            return ok(httpx.get(url, timeout=2).status_code)
        except httpx.TransportError:
            return False

    return probe


def log_says(path: Path, text: str, since: int = 0) -> Callable[[], bool]:
    """``text`` is in the log at ``path`` after byte ``since`` (for a process without a port
    to wait on)."""

    def probe() -> bool:
        return path.exists() and text.encode() in path.read_bytes()[since:]

    return probe


def exited(process: subprocess.Popen[Any], log: Path | None = None) -> Callable[[], str | None]:
    """For ``died``: the process's exit, with the end of its log when there is one."""

    def reason() -> str | None:
        code = process.poll()
        if code is None:
            return None
        tail = ""
        if log is not None and log.exists():
            tail = ":\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        return f"{process.args!r} exited with {code}{tail}"

    return reason
