"""Render a document's pages in child processes, with a time and memory limit per page.

pypdfium2 is not thread-safe (two threads rendering text pages crashed Python 10 of 10
times here) and functions-framework serves events from threads, so every PDFium and Pillow
call, counting pages included, happens in a render process
(:mod:`ocrpipe.splitter.rendering.render_process`). Each holds the document open and renders the
pages it is sent, one at a time.

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

from ocrpipe.errors import BadInput, OcrpipeError
from ocrpipe.file_kinds import InputKind
from ocrpipe.settings import Settings
from ocrpipe.splitter.rendering.page_decoders import RenderedPage
from ocrpipe.splitter.rendering.render_process import COUNT_SEQ, serve

_QUEUED_PER_PROCESS = 2


@dataclass(frozen=True)
class PageFailure:
    """A page that could not be rendered: it gets an error record, not a message."""

    page: int
    reason: str  # page_render_timeout, page_render_failed, image_too_large, ...
    message: str


@dataclass(frozen=True)
class RenderLimits:
    page_timeout_s: float
    memory_bytes: int  # RLIMIT_AS per render process; 0: none
    max_image_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RenderLimits:
        """The limits ``settings`` give, with ``overrides`` (tests)."""
        values: dict[str, Any] = {
            "page_timeout_s": settings.render_page_timeout_s,
            "memory_bytes": settings.render_memory_mb * 2**20,
            "max_image_pixels": settings.max_image_pixels,
        }
        return cls(**{**values, **overrides})


@dataclass(frozen=True)
class _Count:
    """A render process's answer to "how many pages?"."""

    pages: int


class _OrderedWindow:
    """Hands out results of tasks numbered 0, 1, 2, ... strictly in that order.

    What it keeps true: every task number below :attr:`sent` has been yielded (below
    ``next_out``), or is finished and held here, or is still queued in a render process
    (or waiting to be resent after its process was replaced). At most :attr:`size` tasks
    are outstanding (sent but not yet yielded), so one slow page holds back at most
    ``size`` finished pages in memory.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.next_out = 0
        self._finished: dict[int, RenderedPage | PageFailure] = {}

    @property
    def has_room(self) -> bool:
        return self.sent - self.next_out < self.size

    @property
    def drained(self) -> bool:
        return self.next_out == self.sent

    def issue(self) -> int:
        """The number of the next task to send."""
        self.sent += 1
        return self.sent - 1

    def finish(self, seq: int, result: RenderedPage | PageFailure) -> None:
        self._finished[seq] = result

    def pop_next(self) -> RenderedPage | PageFailure | None:
        """The next result in order, if it is finished."""
        result = self._finished.pop(self.next_out, None)
        if result is not None:
            self.next_out += 1
        return result


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
        dpi: float | None = None,
        limits: RenderLimits | None = None,
    ) -> None:
        """Pages come out with their longest side at most ``longest_side`` px, PDF pages at
        ``dpi`` below that. ``dpi`` and ``limits``: the default settings' if None."""
        dpi = Settings().render_dpi if dpi is None else dpi
        self._args = (str(path), kind.value, longest_side, dpi)
        self._kind = kind
        self._limits = limits or RenderLimits.from_settings(Settings())
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
        outcome = None
        while outcome is None:
            outcome = self._next_outcome()
        result = outcome[1]
        if isinstance(result, _Count):
            return result.pages
        if isinstance(result, RenderedPage):
            raise OcrpipeError("a render process answered a page to a count request")
        what = "PDF" if self._kind is InputKind.PDF else "image"
        reason = result.reason
        if reason in ("page_render_failed", "page_render_timeout"):
            reason = "pdf_corrupt" if self._kind is InputKind.PDF else "image_corrupt"
        raise BadInput(f"the {what} cannot be opened: {result.message}", reason=reason)

    def render(self, pages: Iterable[int]) -> Iterator[RenderedPage | PageFailure]:
        """Render 1-based ``pages``; yield a page or its failure, in the order given."""
        todo = iter(pages)
        resend: deque[tuple[int, int]] = deque()  # queued on a process that was replaced
        window = _OrderedWindow(2 * _QUEUED_PER_PROCESS * len(self._children))
        more = True
        while True:
            more = self._send_more(window, todo, resend, more)
            ready = window.pop_next()
            if ready is not None:
                yield ready
                continue
            if not more and not resend and window.drained:
                return
            outcome = self._next_outcome(resend)
            if outcome is None:
                continue
            seq, result = outcome
            if isinstance(result, _Count):
                raise OcrpipeError("a render process answered a count to a page request")
            window.finish(seq, result)

    def _send_more(
        self,
        window: _OrderedWindow,
        todo: Iterator[int],
        resend: deque[tuple[int, int]],
        more: bool,
    ) -> bool:
        """Resend what a replaced process lost, then send new pages while the window has room
        and some process has a free slot. Returns False once ``todo`` is used up."""
        while resend or (more and window.has_room):
            child = min(self._children, key=lambda c: len(c.tasks))
            if len(child.tasks) >= _QUEUED_PER_PROCESS:
                break
            if resend:
                self._send(child, resend.popleft())
                continue
            page = next(todo, None)
            if page is None:
                return False
            self._send(child, (window.issue(), page))
        return more

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
    ) -> tuple[int, RenderedPage | PageFailure | _Count] | None:
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
                return seq, _Count(int(message[1]))
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
