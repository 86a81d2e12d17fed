"""`ocrpipe reconcile`: put back what the pipeline can no longer deliver (the reconciler of
ocrpipe/splitter/reconcile.py, the same code the production job runs on a schedule)."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.text import Text

from ocrpipe.cli.common import (
    RECONCILER_ENV_FILE,
    Exit,
    JsonOpt,
    LocalOpt,
    clients,
    cloud_errors,
    err,
    load_settings,
    out,
)
from ocrpipe.operations import views
from ocrpipe.splitter.reconcile import Policy, ReconcileReport, Repair, reconcile

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"6h"``, ``"31d"`` -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration such as 0, 90s, 15m, 6h or 31d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def reconcile_command(
    ctx: typer.Context,
    prefix: Annotated[
        str, typer.Option(help="Only inputs whose name starts with this (a folder).")
    ] = "",
    lost_after: Annotated[
        str | None,
        typer.Option(
            "--lost-after",
            help="Presume a message lost this long after it was published (0, 90s, 15m, 6h,"
            " 31d). Default: the pages subscription's retention for page messages, 25 h"
            " (Eventarc's retries and a margin) for splits. Use 0 when you know the messages"
            " are gone: the subscription was seeked, purged or recreated.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be put back; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
) -> None:
    """Find documents whose pages have neither a result nor a message that can still be
    delivered, and put them back: publish those pages again (rendering again the images
    that expired), split again inputs whose split was abandoned, announce what finished
    unannounced. Duplicates are harmless: each page is written once. Production runs the
    same on a schedule (terraform: the reconciler job); run it by hand after an incident.

    Acts as the reconciler: with --local, the local stack's reconciler identity; in
    production, impersonate its service account (docs/OPERATIONS.md). Exit 1 if nothing is
    under --prefix or a document could not be put back now (a split holds it, its input
    cannot be read): run it again later."""
    settings = load_settings(local, RECONCILER_ENV_FILE)
    policy = Policy.default()
    if lost_after is not None:
        seconds = parse_duration(lost_after)
        policy = Policy(seconds, seconds)
    with cloud_errors():
        source = clients(ctx)
        store = source.store(settings)
        publisher = source.publisher(settings)
        report = reconcile(
            store, publisher, settings, prefix=prefix, policy=policy, dry_run=dry_run
        )
    if as_json:
        views.print_json(out, report.as_dict())
    else:
        _print(report)
    failed = not report.documents or report.skipped
    raise typer.Exit(Exit.FAILED if failed else Exit.OK)


def _print(report: ReconcileReport) -> None:
    for repair in report.repairs:
        out.print(Text(f"{repair.name}: {'; '.join(_what(repair))}"))
    for skipped in report.skipped:
        err.print(Text(f"{skipped.name}: left for now: {skipped.why}", style="yellow"))
    if not report.documents:
        err.print("No inputs under that prefix.", style="red")
        return
    if report.dry_run:
        out.print(
            f"{report.documents} document(s) checked, {len(report.repairs)} to put back"
            " (dry run: nothing changed)",
            markup=False,
        )
        return
    out.print(
        f"{report.documents} document(s) checked, {len(report.repairs)} put back:"
        f" {report.requeued_pages} page message(s) published again, {report.rendered} page(s)"
        f" rendered again, {report.refreshed} image(s) refreshed, {len(report.split)} split"
        f" again, {len(report.announced)} rejection(s) announced",
        markup=False,
    )


def _what(repair: Repair) -> list[str]:
    parts = []
    if repair.pages:
        parts.append(f"publish again {_pages(repair.pages)}")
    if repair.rerender:
        parts.append(f"render again {_pages(repair.rerender)} (image gone)")
    if repair.split:
        parts.append("split again (never split, or split abandoned)")
    if repair.assemble:
        parts.append("have the worker assemble and announce it")
    if repair.rejection is not None:
        parts.append(f"announce its rejection ({repair.rejection.reason})")
    return parts


def _pages(pages: tuple[int, ...]) -> str:
    shown = ", ".join(str(p) for p in pages[:12])
    more = f" and {len(pages) - 12} more" if len(pages) > 12 else ""
    return f"page{'s' if len(pages) > 1 else ''} {shown}{more}"
