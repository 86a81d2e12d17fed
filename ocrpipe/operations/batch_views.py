"""How the CLI shows a batch (``status --prefix``, ``wait --prefix``, ``submit``, ``get``):
rich tables and progress bars on the console it is given; no other I/O. Everything fits 80
columns (see :mod:`ocrpipe.operations.views`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from ocrpipe.operations.batch_status import BatchStatus
from ocrpipe.operations.views import (
    duration,
    elide,
    printable,
    stall_note,
    state_text,
    troubles_note,
    troubles_table,
    wrapped,
)

STATE_ORDER = ("done", "partial", "failed", "rejected", "running", "splitting", "unknown")
LABEL_CELLS = 18  # a bar's label, elided in the middle: the bar line fits 80 columns


def states_line(status: BatchStatus) -> Text:
    """'12 done, 1 failed, 3 running' with the states' colours."""
    line = Text()
    for state in sorted(status.states, key=lambda s: (STATE_ORDER + (s,)).index(s)):
        if line:
            line.append(", ")
        line.append(f"{status.states[state]} ")
        line.append_text(state_text(state))
    return line or Text("no documents")


def rate_line(status: BatchStatus) -> str:
    rate = status.rate_per_s
    if status.finished:
        return "finished"
    if rate is None or rate == 0:
        return f"no page finished in the last {duration(status.window_s)}"
    eta = status.eta_s
    return (
        f"{rate * 60:.1f} pages/min over the last {duration(status.rate_span_s)}, ETA"
        f" {duration(eta) if eta is not None else '-'}"
    )


def pages_line(status: BatchStatus) -> str:
    pages = f"{status.pages_done} done, {status.pages_failed} failed of {status.pages_known} split"
    if note := troubles_note(status.pages_retrying, status.pages_dead_lettered):
        pages += f"; {note}"
    if status.not_split:
        pages += f"; {status.not_split} document(s) not split yet"
    return pages


def print_batch(
    console: Console,
    status: BatchStatus,
    *,
    max_failures: int = 50,
    replay_command: str = "ocrpipe dlq replay",
    label: str | None = None,
) -> None:
    """The batch's states, pages, rate, failures and pages in trouble, under ``label``
    (default: its prefix); ``replay_command`` is what puts dead-lettered pages back (the
    CLI adds ``--local`` and ``--doc``)."""
    console.print(
        Text.assemble(
            (printable(label or status.prefix) or "(every document)", "bold"),
            f"  {len(status.documents)} documents: ",
            states_line(status),
        )
    )
    console.print(f"  pages: {pages_line(status)}", markup=False)
    console.print(f"  rate: {rate_line(status)}", markup=False)
    if note := stall_note(status.quiet_s):
        console.print(note)
    if status.failures:
        console.print(failures_table(status, max_failures))
        if len(status.failures) > max_failures:
            console.print(
                f"  ... and {len(status.failures) - max_failures} more (--json has all)",
                markup=False,
            )
    if status.troubles:
        shown = [(t.name, t.trouble) for t in status.troubles[:max_failures]]
        console.print(troubles_table(shown, status.now))
        if len(status.troubles) > max_failures:
            console.print(
                f"  ... and {len(status.troubles) - max_failures} more (--json has all)",
                markup=False,
            )
    if status.pages_dead_lettered:
        console.print(
            Text(
                f"{status.pages_dead_lettered} page(s) are in the dead-letter topic: waiting"
                f" will not finish them. Once the cause is fixed: `{replay_command}`",
                style="yellow",
            )
        )


def failures_table(status: BatchStatus, limit: int) -> Table:
    table = Table("name", "page", "reason", "message", title="failures", title_justify="left")
    for failure in status.failures[:limit]:
        table.add_row(
            wrapped(failure.name),
            str(failure.page) if failure.page is not None else "all",
            wrapped(failure.reason),
            wrapped(failure.message),
        )
    return table


def batch_label(prefix: str) -> str:
    """What a batch is called on its bar: the folder its names share (a shared prefix
    that ends inside a file name, ``collide/scan.p``, is cut back to its folder)."""
    folder = prefix[: prefix.rfind("/") + 1]
    return folder or "batch"


class _ProgressWithLine(Progress):
    """A progress bar with one line of text under it."""

    line: Text | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.line is not None:
            yield self.line


class BatchBar:
    """One bar for a batch: pages finished of the pages of the batch (no total until every
    document is split, so it never jumps), the rate and the ETA, the time elapsed; under it
    the documents' states and the pages that are retrying or dead-lettered.

    Use as a context manager and call :meth:`show` with each new status."""

    def __init__(self, console: Console, label: str) -> None:
        self._progress = _ProgressWithLine(
            TextColumn("{task.description}", markup=False),  # a name, through printable
            BarColumn(bar_width=12),
            MofNCompleteColumn(),
            TextColumn("pages {task.fields[rate]} {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(
            elide(printable(label), LABEL_CELLS), total=None, rate="", eta=""
        )
        self._warned_stall = False

    def __enter__(self) -> BatchBar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def __rich__(self) -> RenderableType:
        """The bar and its line as they are now (what the live display shows)."""
        return Group(*self._progress.get_renderables())

    def show(self, status: BatchStatus) -> None:
        rate, eta = status.rate_per_s, status.eta_s
        self._progress.update(
            self._task,
            total=status.pages_known if not status.not_split and status.documents else None,
            completed=status.pages_done + status.pages_failed,
            rate=f"{rate * 60:.1f}/min" if rate else "",
            eta=f"ETA {duration(eta)}" if eta and not status.settled else "",
        )
        line = Text("  ").append_text(states_line(status))
        if note := troubles_note(status.pages_retrying, status.pages_dead_lettered):
            line.append(f"; pages {note}", style="yellow")
        self._progress.line = line
        stall = stall_note(status.quiet_s)
        if stall is not None and not self._warned_stall:
            self._progress.console.print(stall)
        self._warned_stall = stall is not None


@contextmanager
def transfer_progress(
    console: Console, verb: str, sizes: Sequence[int]
) -> Iterator[Callable[[int], None]]:
    """One bar for many files, files and bytes: yields ``advance(size)``, to call as each
    file of ``sizes`` is done."""
    progress = Progress(
        TextColumn(verb),
        BarColumn(bar_width=12),
        TextColumn("{task.fields[files]} files"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task("", total=sum(sizes), files="")
        done = 0

        def advance(size: int) -> None:
            nonlocal done
            done += 1
            progress.update(task, advance=size, files=f"{done}/{len(sizes)}")

        yield advance
