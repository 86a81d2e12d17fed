"""Following documents until they finish: one bar per document, or one for a whole batch,
then one line per outcome and the exit code.

A wait ends when every document is finished, or when the unfinished ones are stuck with
their pages in the dead-letter topic (waiting cannot help them: the line says how to replay
them), or at the timeout, which always says so and exits 3, whatever else went wrong."""

from __future__ import annotations

import shlex

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from ocrpipe.cli.common import Exit, err, out, stack_alive
from ocrpipe.operations import batch_views, views
from ocrpipe.operations.batch_status import BatchStatus, batch_status, verdict, wait_for_batch
from ocrpipe.operations.status import (
    FINISHED_STATES,
    DocumentStatus,
    Verdict,
    document_status,
    documents_verdict,
    wait_for_documents,
)
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore

BATCH_POLL_S = 2.0  # a batch status costs two listings per 1000 documents
EXIT_FOR: dict[Verdict, Exit] = {
    "ok": Exit.OK,
    "failed": Exit.FAILED,
    "dead_lettered": Exit.FAILED,
    "timeout": Exit.TIMEOUT,
}


def replay_command(settings: Settings, selector: str) -> str:
    """The command that puts ``selector``'s dead-lettered pages back."""
    local = " --local" if settings.uses_emulators else ""
    return f"ocrpipe dlq replay{local} --doc {shlex.quote(selector)}"


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
        BarColumn(bar_width=12),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        tasks = {
            n: progress.add_task(
                views.elide(views.printable(n), batch_views.LABEL_CELLS),
                total=None,
                state="waiting",
            )
            for n in names
        }
        warned: set[str] = set()

        def show(current: DocumentStatus) -> None:
            state = current.state
            if note := views.troubles_note(current.retrying, current.dead_lettered):
                state += f", {note}"
            progress.update(
                tasks[current.name],
                total=current.page_count,
                completed=current.done + current.failed,
                state=state,
            )
            stall = views.stall_note(current.quiet_for())
            if stall is not None and current.name not in warned:
                shown = Text(f"{views.printable(current.name)}: ")
                progress.console.print(shown.append_text(stall))
            (warned.add if stall is not None else warned.discard)(current.name)

        def poll(name: str) -> DocumentStatus:
            stack_alive(settings)
            return document_status(store, settings, name)

        finals = wait_for_documents(
            poll,
            names,
            timeout=timeout,
            on_update=show,
        )
    for name in names:
        final = finals.get(name)
        if final is None:
            err.print(Text(f"{views.printable(name)}: not finished", style="yellow"))
            continue
        if final.stuck:
            err.print(
                Text(
                    views.printable(
                        f"{name}: {final.dead_lettered} page(s) in the dead-letter topic,"
                        " waiting will not finish them; once the cause is fixed:"
                        f" `{replay_command(settings, name)}`"
                    ),
                    style="red",
                )
            )
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
    if outcome == "timeout":
        late = sum(1 for name in names if name not in finals)
        err.print(
            Text(f"timed out after {timeout:.0f} s: {late} of {len(names)} not finished", "yellow")
        )
    return EXIT_FOR[outcome]


def wait_batch(
    store: ObjectStore,
    settings: Settings,
    prefix: str,
    names: list[str] | None,
    timeout: float,
    allow_partial: bool,
    as_json: bool = False,
    *,
    label: str | None = None,
) -> Exit:
    """One progress bar for every document under ``prefix`` (only ``names``, if given),
    called ``label`` (default: the prefix)."""
    selector = (prefix or "") + "*"
    with batch_views.BatchBar(err, label or prefix or "every document") as bar:

        def poll() -> BatchStatus:
            stack_alive(settings)
            return batch_status(store, settings, prefix, names=names)

        final, settled = wait_for_batch(
            poll,
            timeout=timeout,
            interval=BATCH_POLL_S,
            on_update=bar.show,
        )
    if as_json:
        views.print_json(out, final.as_dict())
    else:
        batch_views.print_batch(
            out, final, replay_command=replay_command(settings, selector), label=label
        )
    outcome = verdict(final, settled=settled, allow_partial=allow_partial)
    if not final.documents:
        err.print(Text(views.printable(f"no documents under {prefix!r}"), style="red"))
    elif outcome == "timeout":
        err.print(Text(f"timed out after {timeout:.0f} s: {_unfinished(final)}", style="yellow"))
    elif outcome == "dead_lettered":
        err.print(
            Text(
                "stopped waiting: every unfinished page is in the dead-letter topic",
                style="red",
            )
        )
    return EXIT_FOR[outcome]


def _unfinished(status: BatchStatus) -> str:
    left = sum(1 for d in status.documents if d.state not in FINISHED_STATES)
    return f"{left} of {len(status.documents)} documents not finished"
