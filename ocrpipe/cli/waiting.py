"""Following documents until they finish: one bar per document, or one for a whole batch,
then one line per outcome and the exit code."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from ocrpipe.cli.common import Exit, err, out
from ocrpipe.operations import batch_views, views
from ocrpipe.operations.batch_status import BatchStatus, batch_status, verdict, wait_for_batch
from ocrpipe.operations.status import (
    DocumentStatus,
    document_status,
    documents_verdict,
    wait_for_documents,
)
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore

BATCH_POLL_S = 2.0  # a batch status costs two listings per 1000 documents


def wait_for(
    store: ObjectStore,
    settings: Settings,
    names: list[str],
    timeout: float,
    allow_partial: bool = False,
) -> Exit:
    """One progress bar per document while :func:`wait_for_documents` polls, then one line
    per document and the exit code of :func:`documents_verdict`."""
    columns = (
        TextColumn("{task.description}", markup=False),  # a name, through printable
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        tasks = {
            n: progress.add_task(views.printable(n), total=None, state="waiting") for n in names
        }

        def show(current: DocumentStatus) -> None:
            progress.update(
                tasks[current.name],
                total=current.page_count,
                completed=current.done + current.failed,
                state=current.state,
            )

        finals = wait_for_documents(
            lambda name: document_status(store, settings, name),
            names,
            timeout=timeout,
            on_update=show,
        )
    for name in names:
        final = finals.get(name)
        if final is None:
            shown = views.printable(name)
            err.print(Text(f"{shown}: not finished after {timeout:.0f} s", style="yellow"))
            continue
        ok = final.state == "done" or (final.state == "partial" and allow_partial)
        line = Text.assemble(f"{views.printable(name)}: ", views.state_text(final.state))
        line.append(f" in {views.duration(final.elapsed())}")
        if final.markdown_uri:
            line.append(f" -> {views.printable(final.markdown_uri)}")
        (out if ok else err).print(line)
        if final.error:
            rejected = f"  rejected: {final.error.reason}: {final.error.message}"
            err.print(Text(views.printable(rejected)))
        for number, error in sorted(final.page_errors.items()):
            err.print(Text(views.printable(f"  page {number}: {error.reason}: {error.message}")))
    outcome = documents_verdict(names, finals, allow_partial=allow_partial)
    return {"ok": Exit.OK, "failed": Exit.FAILED, "timeout": Exit.TIMEOUT}[outcome]


def wait_batch(
    store: ObjectStore,
    settings: Settings,
    prefix: str,
    names: list[str] | None,
    timeout: float,
    allow_partial: bool,
    as_json: bool = False,
) -> Exit:
    """One progress bar for every document under ``prefix`` (only ``names``, if given)."""
    with batch_views.batch_progress(err) as progress:
        task = progress.add_task(views.printable(prefix) or "batch", total=None, states="")

        def show(current: BatchStatus) -> None:
            expected = (
                current.pages_known
                + current.pages_remaining
                - sum(d.pending for d in current.documents if d.state == "running")
            )
            progress.update(
                task,
                total=round(expected) or None,
                completed=current.pages_done + current.pages_failed,
                states=batch_views.states_line(current).plain,
            )

        final, finished = wait_for_batch(
            lambda: batch_status(store, settings, prefix, names=names),
            timeout=timeout,
            interval=BATCH_POLL_S,
            on_update=show,
        )
    if as_json:
        views.print_json(out, final.as_dict())
    else:
        batch_views.print_batch(out, final)
    outcome = verdict(final, finished=finished, allow_partial=allow_partial)
    if not final.documents:
        err.print(Text(views.printable(f"no documents under {prefix!r}"), style="red"))
    elif outcome == "timeout":
        err.print(Text(f"not finished after {timeout:.0f} s", style="yellow"))
    return {"ok": Exit.OK, "failed": Exit.FAILED, "timeout": Exit.TIMEOUT}[outcome]
