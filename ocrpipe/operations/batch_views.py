"""How the CLI shows a batch (``status --prefix``, ``wait --prefix``, ``submit``, ``get``):
rich tables and progress bars on the console it is given; no other I/O."""

from __future__ import annotations

from rich.console import Console
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
from ocrpipe.operations.views import duration, printable, state_text

STATE_ORDER = ("done", "partial", "failed", "running", "splitting", "unknown")


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


def print_batch(console: Console, status: BatchStatus, *, max_failures: int = 50) -> None:
    console.print(
        Text.assemble(
            (printable(status.prefix) or "(every document)", "bold"),
            f"  {len(status.documents)} documents: ",
            states_line(status),
        )
    )
    pages = (
        f"  pages: {status.pages_done} done, {status.pages_failed} failed"
        f" of {status.pages_known} split"
    )
    if status.not_split:
        pages += f"; {status.not_split} document(s) not split yet"
    console.print(pages, markup=False)
    console.print(f"  rate: {rate_line(status)}", markup=False)
    if status.failures:
        console.print(failures_table(status, max_failures))
        if len(status.failures) > max_failures:
            console.print(
                f"  ... and {len(status.failures) - max_failures} more (--json has all)",
                markup=False,
            )


def failures_table(status: BatchStatus, limit: int) -> Table:
    table = Table("name", "page", "reason", "message", title="failures", title_justify="left")
    for failure in status.failures[:limit]:
        table.add_row(
            Text(printable(failure.name)),
            str(failure.page) if failure.page is not None else "all",
            Text(printable(failure.reason)),
            Text(printable(failure.message)),
        )
    return table


def batch_progress(console: Console) -> Progress:
    """One bar for a batch: pages finished of the pages known, and the states. The
    description is shown as given (no markup): pass it through :func:`printable`."""
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pages  {task.fields[states]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def transfer_progress(console: Console, verb: str) -> Progress:
    """One bar for many files: files and bytes."""
    return Progress(
        TextColumn(verb),
        BarColumn(),
        TextColumn("{task.fields[files]} files"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
