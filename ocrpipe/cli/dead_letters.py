"""`ocrpipe dlq`: the dead-letter subscription, listed and replayed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from ocrpipe import records
from ocrpipe.attempts import record_requeued
from ocrpipe.cli.common import (
    DocOpt,
    Exit,
    JsonOpt,
    LocalOpt,
    clients,
    cloud_errors,
    err,
    load_settings,
    out,
)
from ocrpipe.errors import OcrpipeError
from ocrpipe.operations import views
from ocrpipe.operations.dead_letters import ReplayReport, list_dead_letters, replay
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore


def dlq_list(
    ctx: typer.Context,
    doc: DocOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Show at most this many.")] = None,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
) -> None:
    """Show the dead-lettered page messages without consuming them: each is pulled, and
    released again (a nack, never an ack) when the listing ends."""
    settings = load_settings(local)
    with cloud_errors():
        subscription = clients(ctx).dead_letters(settings)
        letters = views.sort_letters(list_dead_letters(subscription, selector=doc, limit=limit))
    if as_json:
        views.print_json(out, [letter.as_dict() for letter in letters])
        return
    if not letters:
        out.print(Text(views.printable(f"no dead-lettered messages{' for ' + doc if doc else ''}")))
        return
    out.print(views.dead_letter_table(letters))
    out.print(
        f"{len(letters)} message(s), left in {settings.dead_letter_subscription}. Why the last"
        " delivery failed is not kept with the message: see the worker's log (labels doc_id"
        " and page), docs/OPERATIONS.md.",
        markup=False,
    )


def dlq_replay(
    ctx: typer.Context,
    doc: DocOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Replay at most this many.")] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List what would be replayed; publish and ack nothing."),
    ] = False,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
) -> None:
    """Publish dead-lettered page messages to the pages topic again, then ack them.

    Each message keeps its data and attributes (minus Pub/Sub's CloudPubSubDeadLetter*
    ones, with replay_count one higher) and is acked only once its publish is confirmed.
    Messages not matching --doc stay. Safe to run twice and to interrupt: a message
    published but not acked is published again by the next run, and the worker writes
    each page once. Exit 1 if a message could not be published (it stays).
    """
    settings = load_settings(local)
    with cloud_errors():
        report = replay(
            clients(ctx).dead_letters(settings),
            clients(ctx).publisher(settings),
            settings.pages_topic,
            selector=doc,
            limit=limit,
            dry_run=dry_run,
        )
        if not dry_run and report.replayed:
            _record_replayed(clients(ctx).store(settings), settings, report)
    if as_json:
        views.print_json(out, report.as_dict())
    else:
        if dry_run and report.replayed:
            out.print(views.dead_letter_table(views.sort_letters(report.replayed)))
        for letter, why in report.failed:
            failed = f"{letter.name} page {letter.page}: {why}"
            err.print(Text(views.printable(failed), style="red"))
        out.print(views.replay_summary(report), markup=False)
    raise typer.Exit(Exit.FAILED if report.failed else Exit.OK)


def _record_replayed(store: ObjectStore, settings: Settings, report: ReplayReport) -> None:
    """Each replayed page's attempt record, so status shows it queued again, not in the
    dead-letter topic. The replay is done: trouble here is a note, not a failure."""
    for letter in report.replayed:
        page = letter.page_message
        if page is None:
            continue
        try:
            record_requeued(
                store, settings, page.document, page.page, records.REPLAYED,
                source=letter.message_id,
            )  # fmt: skip
        except OcrpipeError as exc:
            err.print(
                Text(f"{letter.name} page {page.page}: replayed, not recorded: {exc}"),
                style="yellow",
            )
