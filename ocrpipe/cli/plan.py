"""`ocrpipe plan`: how long a corpus will take and what it will cost, before any upload."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ocrpipe.cli.common import (
    Exit,
    JsonOpt,
    LocalOpt,
    clients,
    cloud_errors,
    err,
    load_settings,
    out,
    split_sources,
    usage_error,
)
from ocrpipe.cli.report import batch_bill
from ocrpipe.operations import views
from ocrpipe.operations.backfill import NotABucketPath
from ocrpipe.operations.bill import CostModel
from ocrpipe.operations.plan import (
    DAY_S,
    FileCount,
    Plan,
    bucket_files,
    local_files,
    make_plan,
)
from ocrpipe.operations.submit import DuplicateName


def plan(
    ctx: typer.Context,
    sources: Annotated[
        list[str],
        typer.Argument(help="Files, folders, or gs://BUCKET/PREFIX (objects already in GCS)."),
    ],
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus",
            min=1,
            help="GPU instances that will serve the batch. Default: OCRPIPE_GPU_INSTANCES"
            " (terraform sets it to gpu_max_instances).",
        ),
    ] = None,
    completion_tokens: Annotated[
        int | None,
        typer.Option(
            "--completion-tokens",
            min=1,
            help="Completion tokens to expect per page. Default: OCRPIPE_PLAN_COMPLETION_TOKENS.",
        ),
    ] = None,
    calibrate: Annotated[
        str | None,
        typer.Option(
            "--calibrate",
            help="Measure the cost model on this finished batch (an input prefix, as `ocrpipe"
            " report --prefix` reads it) instead of the published GPU figures.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
) -> None:
    """Count the pages of a corpus without uploading anything (page counts from each file's
    header, not renders; objects in a bucket are read in ranges, not downloaded) and print
    the GPU hours, the wall time with the GPU instances you have, and the cost in total and
    per 1,000 pages, with every assumption. Warns when the batch would wait longer than the
    pages subscription keeps a message. Exit 1 if no file can be processed."""
    settings = load_settings(local)
    buckets, paths = split_sources(sources)
    with cloud_errors():
        store = clients(ctx).store(settings) if buckets or calibrate is not None else None
        if calibrate is not None:
            assert store is not None
            measured = batch_bill(store, settings, [], calibrate)
            try:
                model = CostModel.measured(measured, repr(calibrate), instances=gpus)
            except ValueError as exc:
                err.print(Text(f"Cannot calibrate: {exc}", style="red"))
                raise typer.Exit(Exit.FAILED) from None
        else:
            model = CostModel.published(
                settings, instances=gpus, completion_tokens=completion_tokens
            )
        files: list[FileCount] = []
        with err.status("counting pages") as status:
            try:
                for found in local_files(paths, settings) if paths else ():
                    files.append(found)
                    status.update(f"counting pages: {len(files)} files")
            except DuplicateName as exc:
                usage_error(f"Two files would get the same name: {exc}")
            for uri in buckets:
                assert store is not None
                try:
                    for found in bucket_files(store, uri, settings):
                        files.append(found)
                        status.update(f"counting pages: {len(files)} files")
                except NotABucketPath as exc:
                    usage_error(str(exc))
    result = make_plan(files, model)
    if as_json:
        views.print_json(out, result.as_dict())
    else:
        _print(result)
    raise typer.Exit(Exit.OK if result.counted else Exit.FAILED)


def _print(result: Plan) -> None:
    table = Table(title="Pages by kind", show_header=True)
    table.add_column("kind")
    table.add_column("pages", justify="right")
    for kind, count in sorted(result.page_kinds.items(), key=lambda item: -item[1]):
        table.add_row(kind, f"{count:,}")
    out.print(table)
    hours = result.gpu_seconds / 3600
    out.print(
        f"{len(result.counted):,} document(s), {result.pages:,} page(s):"
        f" {result.prompt_tokens:,} prompt tokens, {result.completion_tokens:,.0f} completion"
        " tokens (expected)",
        markup=False,
    )
    per_1000 = result.cost_per_1000_pages
    out.print(
        f"GPU time {hours:,.2f} h; wall time {_duration(result.wall_seconds)} with"
        f" {result.model.instances} GPU instance(s); cost ${result.cost:,.2f}"
        + (f" (${per_1000:,.3f} per 1,000 pages)" if per_1000 is not None else ""),
        markup=False,
    )
    out.print("Assumptions:", markup=False)
    for assumption in result.assumptions():
        out.print(f"  - {assumption}", markup=False)
    for rejected in result.rejected:
        err.print(
            Text(
                f"{rejected.name}: would be rejected ({rejected.rejected}): {rejected.why}",
                style="yellow",
            )  # fmt: skip
        )
    if result.outlives_retention:
        err.print(
            Text(
                f"Warning: submitted at once, the last pages would wait about"
                f" {_duration(result.wall_seconds)} in the pages subscription, which keeps a"
                f" message {result.retention_s / DAY_S:g} days. Nothing is lost (the"
                " reconciler publishes expired pages again), but to finish within the"
                f" retention use {result.instances_for_retention()} GPU instances (Cloud Run"
                " GPU quota and terraform's gpu_max_instances), or submit in waves.",
                style="yellow",
            )
        )


def _duration(seconds: float) -> str:
    if seconds >= 2 * DAY_S:
        return f"{seconds / DAY_S:,.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:,.0f} min"
