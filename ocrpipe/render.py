"""Render a document's pages in child processes, with a time and memory limit per page.

pypdfium2 is not thread-safe (two threads rendering text pages crashed Python 10 of 10
times here) and functions-framework serves events from threads, so every PDFium and Pillow
call, counting pages included, happens in a render process (:mod:`ocrpipe.render_child`).
Each holds the document open and renders the pages it is sent, one at a time.

A hostile file cannot take the splitter down:

* a page that renders longer than ``page_timeout_s`` is killed with its process and comes
  back as a :class:`PageFailure` (``page_render_timeout``); a new process takes its place;
* a page that needs more memory than the process's ``RLIMIT_AS`` fails
  (``page_render_failed``), and so does a page whose process crashes outright;
* the other pages go on.

Pages come back in the order asked, through a bounded window (two tasks queued per
process, at most ``4 * processes`` finished pages waiting for a slow one), so a long
document never sits in memory.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from ocrpipe.errors import BadInput
from ocrpipe.inputs import InputKind
from ocrpipe.render_child import COUNT_SEQ, serve
from ocrpipe.sources import MIN_SHORT_SIDE, RenderedPage, image_scale, page_scale

__all__ = [
    "MIN_SHORT_SIDE",
    "PageFailure",
    "PdfRenderer",
    "RenderLimits",
    "RenderedPage",
    "Renderer",
    "image_scale",
    "page_scale",
]

_QUEUED_PER_PROCESS = 2


@dataclass(frozen=True)
class PageFailure:
    """A page that could not be rendered: it gets an error record, not a message."""

    page: int
    reason: str  # page_render_timeout, page_render_failed, image_too_large, ...
    message: str


@dataclass(frozen=True)
class RenderLimits:
    page_timeout_s: float = 60.0
    memory_bytes: int = 1024 * 2**20  # RLIMIT_AS per render process; 0: none
    max_image_pixels: int = 100_000_000


@dataclass
class _Child:
    process: BaseProcess
    conn: Connection
    tasks: deque[tuple[int, int]] = field(default_factory=deque)  # (seq, page), head running
    started: float | None = None  # when the head task started (child's monotonic clock)


class Renderer:
    """Processes holding one open document. Use as a context manager."""

    def __init__(
        self,
        path: Path,
        kind: InputKind,
        *,
        processes: int,
        longest_side: int,
        limits: RenderLimits | None = None,
    ) -> None:
        self._args = (str(path), kind.value, longest_side)
        self._kind = kind
        self._limits = limits or RenderLimits()
        self._context = multiprocessing.get_context("forkserver")
        self._children: list[_Child] = []
        self.restarts = 0
        for _ in range(processes):
            self._children.append(self._spawn())

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children if c.process.pid is not None]

    def close(self) -> None:
        for child in self._children:
            with contextlib.suppress(OSError):
                child.conn.send(None)
        deadline = time.monotonic() + 2
        for child in self._children:
            child.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join()
            child.conn.close()
        self._children = []

    # --- the document ---------------------------------------------------------------------

    def page_count(self) -> int:
        """Open the document in a render process and count its pages (or raise BadInput)."""
        child = self._children[0]
        child.conn.send(("count",))
        child.tasks.append((COUNT_SEQ, 0))
        what = "PDF" if self._kind is InputKind.PDF else "image"
        corrupt = "pdf_corrupt" if self._kind is InputKind.PDF else "image_corrupt"
        while True:
            outcome = self._next_outcome()
            if outcome is None:
                continue
            seq, result = outcome
            assert seq == COUNT_SEQ
            if isinstance(result, int):
                return result
            assert isinstance(result, PageFailure)
            reason = result.reason
            if reason in ("page_render_failed", "page_render_timeout"):
                reason = corrupt
            raise BadInput(f"the {what} cannot be opened: {result.message}", reason=reason)

    def render(self, pages: Iterable[int]) -> Iterator[RenderedPage | PageFailure]:
        """Render 1-based ``pages``; yield a page or its failure, in the order given."""
        todo = iter(pages)
        retry: deque[tuple[int, int]] = deque()  # queued on a process that was replaced
        done: dict[int, RenderedPage | PageFailure] = {}
        sent = next_out = 0
        window = 2 * _QUEUED_PER_PROCESS * len(self._children)
        exhausted = False
        while True:
            while retry or (not exhausted and sent - next_out < window):
                child = min(self._children, key=lambda c: len(c.tasks))
                if len(child.tasks) >= _QUEUED_PER_PROCESS:
                    break
                if retry:
                    task = retry.popleft()
                else:
                    page = next(todo, None)
                    if page is None:
                        exhausted = True
                        break
                    task = (sent, page)
                    sent += 1
                self._send(child, task)
            if next_out in done:
                yield done.pop(next_out)
                next_out += 1
                continue
            if exhausted and not retry and next_out == sent:
                return
            outcome = self._next_outcome(retry)
            if outcome is not None:
                seq, result = outcome
                assert not isinstance(result, int)
                done[seq] = result

    # --- processes ------------------------------------------------------------------------

    def _spawn(self) -> _Child:
        parent_end, child_end = self._context.Pipe()
        limits = self._limits
        process = self._context.Process(
            target=serve,
            args=(child_end, *self._args, limits.memory_bytes, limits.max_image_pixels),
            daemon=True,
        )
        process.start()
        child_end.close()
        return _Child(process, parent_end)

    def _send(self, child: _Child, task: tuple[int, int]) -> None:
        child.tasks.append(task)
        child.conn.send(("render", *task))

    def _next_outcome(
        self, retry: deque[tuple[int, int]] | None = None
    ) -> tuple[int, RenderedPage | PageFailure | int] | None:
        """Wait for one message from any busy process; handle deaths and timeouts.

        Returns ``(seq, result)`` when a task finished (or failed), None otherwise.
        """
        busy = [c for c in self._children if c.tasks]
        now = time.monotonic()
        timeout = self._limits.page_timeout_s
        deadlines = [c.started + timeout - now for c in busy if c.started is not None]
        wait_s = max(0.0, min(deadlines)) if deadlines else timeout
        ready = wait([c.conn for c in busy], timeout=wait_s)
        for child in busy:
            if child.conn not in ready:
                continue
            try:
                message: tuple[Any, ...] = child.conn.recv()
            except (EOFError, OSError):
                code = child.process.exitcode
                child.process.join(timeout=5)
                code = child.process.exitcode if code is None else code
                return self._replace(child, "page_render_failed", _crash_message(code), retry)
            if message[0] == "start":
                child.started = float(message[2])
                continue
            seq, page = child.tasks.popleft()
            child.started = None
            if message[0] == "count":
                return seq, int(message[1])
            if message[0] == "page":
                return seq, message[2]
            return seq, PageFailure(page, str(message[2]), str(message[3]))
        now = time.monotonic()
        for child in busy:
            if child.started is not None and now - child.started > timeout:
                stopped = f"the render process took longer than {timeout:g} s and was stopped"
                return self._replace(child, "page_render_timeout", stopped, retry)
        return None

    def _replace(
        self, child: _Child, reason: str, message: str, retry: deque[tuple[int, int]] | None
    ) -> tuple[int, PageFailure]:
        """Kill ``child`` (its head task failed), start a fresh process in its place, and
        hand its queued tasks back for resending."""
        seq, page = child.tasks.popleft()
        if child.process.is_alive():
            child.process.kill()
        child.process.join()
        child.conn.close()
        if retry is not None:
            retry.extendleft(reversed(child.tasks))
        self._children[self._children.index(child)] = self._spawn()
        self.restarts += 1
        return seq, PageFailure(page, reason, message)


def _crash_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"the render process crashed (signal {-exitcode})"
    return f"the render process exited unexpectedly (code {exitcode})"


class PdfRenderer(Renderer):
    """A :class:`Renderer` for a PDF."""

    def __init__(
        self,
        path: Path,
        *,
        processes: int,
        longest_side: int,
        limits: RenderLimits | None = None,
    ) -> None:
        super().__init__(
            path, InputKind.PDF, processes=processes, longest_side=longest_side, limits=limits
        )
