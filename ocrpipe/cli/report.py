"""`ocrpipe report`: what a batch cost, from the usage each page recorded."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ocrpipe.cli.common import (
    NO_DOCUMENTS,
    Exit,
    JsonOpt,
    LocalOpt,
    clients,
    cloud_errors,
    err,
    load_settings,
    out,
    usage_error,
)
from ocrpipe.errors import ObjectMissing
from ocrpipe.operations import bill, views
from ocrpipe.operations import get as results
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore


def report(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Input names.")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Every document under this prefix (a folder).")
    ] = None,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
) -> None:
    """What a batch cost: over the newest finished generation of each document, its pages
    (done, failed), the tokens, OCR seconds, attempts and retries of every request: those
    behind the pages kept (document.json), the deliveries the worker nacked and the earlier
    results of pages retried (the attempt records); and two estimates of GPU time and cost
    (total and per 1,000 pages) at OCRPIPE_GPU_PRICE_PER_HOUR, with the assumption each
    makes. Pages without recorded usage are counted as unknown; inputs rejected as a whole
    are named apart from unfinished ones. Exit 1 if no finished document is found, or a
    NAME is unknown."""
    settings = load_settings(local)
    if not names and prefix is None:
        usage_error(NO_DOCUMENTS)
    with cloud_errors():
        code = report_batch(clients(ctx).store(settings), settings, names or [], prefix, as_json)
    raise typer.Exit(code)


def report_batch(
    store: ObjectStore, settings: Settings, names: list[str], prefix: str | None, as_json: bool
) -> Exit:
    total = batch_bill(store, settings, names, prefix)
    if as_json:
        views.print_json(out, {"prefix": prefix, "names": names, **total.as_dict()})
    else:
        _print_bill(total, prefix)
    for why in (bill.REJECTED, bill.NOT_FINISHED, bill.NO_SUCH_DOCUMENT):
        for skipped in (s for s in total.skipped if s.why == why):
            line = views.printable(f"{skipped.name}: not counted: {skipped.why}")
            err.print(Text(line, style="yellow"))
    if not total.documents:
        where = f"under {prefix!r}" if prefix is not None else "among the names given"
        err.print(Text(views.printable(f"no finished document {where}"), style="red"))
        return Exit.FAILED
    unknown = {s.name for s in total.skipped if s.why == bill.NO_SUCH_DOCUMENT}
    return Exit.FAILED if unknown & set(names) else Exit.OK


def batch_bill(
    store: ObjectStore, settings: Settings, names: list[str], prefix: str | None
) -> bill.Bill:
    """The bill of the named documents and those under ``prefix`` (``ocrpipe plan
    --calibrate`` measures a finished batch with it)."""
    documents = results.find_documents(store, settings, names=names, prefix=prefix)
    records = _read_records(
        store, settings.output_bucket, bill.records_to_read(documents, settings)
    )
    return bill.bill(documents, records, settings)


def _read_records(store: ObjectStore, bucket: str, wanted: Mapping[str, str]) -> dict[str, bytes]:
    """Input name -> its document.json, read in parallel; one deleted meanwhile is left out."""

    def read(item: tuple[str, str]) -> tuple[str, bytes | None]:
        try:
            return item[0], store.read(bucket, item[1])
        except ObjectMissing:
            return item[0], None

    if not wanted:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(wanted))) as pool:
        return {k: v for k, v in pool.map(read, wanted.items()) if v is not None}


def _print_bill(total: bill.Bill, prefix: str | None) -> None:
    if not total.documents:
        return
    where = f" under {prefix!r}" if prefix is not None else ""
    out.print(
        Text(
            views.printable(
                f"{total.documents} document(s){where}: {total.pages} pages,"
                f" {total.pages_done} done, {total.pages_failed} failed"
            )
        )
    )
    out.print(
        f"usage recorded for {total.pages_with_usage} page(s), unknown for"
        f" {total.pages_unknown} (no provenance in document.json)",
        markup=False,
    )
    if total.span_seconds is not None:
        busy = f"; some page at the GPU for {views.duration(total.busy_seconds)}"
        out.print(
            f"pages from {views.timestamp(total.first_start)} to"
            f" {views.timestamp(total.last_end)} ({views.duration(total.span_seconds)})"
            + (busy if total.pages_with_usage else ""),
            markup=False,
        )
    if not total.pages_with_usage:
        out.print("no GPU estimate: no page has recorded usage", markup=False)
        return
    guessed = (
        f" ({total.prompt_tokens_estimated:,} of them estimated: the server reported none)"
        if total.prompt_tokens_estimated
        else ""
    )
    out.print(
        f"tokens: {total.prompt_tokens:,} prompt{guessed}, {total.completion_tokens:,} completion;"
        f" OCR: {total.ocr_seconds:,.1f} s in requests, {total.attempts} attempts"
        f" ({total.retries} retries), {total.loop_retries} page(s) kept at a higher"
        " temperature (repetition loop)",
        markup=False,
    )
    for spend, count, what in (
        (total.failed_deliveries, total.failed_delivery_count, "failed deliveries"),
        (total.retried, total.retried_pages, "earlier results of retried pages"),
    ):
        if count:
            out.print(
                f"  of which {count} {what}: {spend.attempts} attempts,"
                f" {spend.prompt_tokens:,} prompt and {spend.completion_tokens:,} completion"
                f" tokens, {spend.ocr_seconds:,.1f} s",
                markup=False,
            )
    table = Table("estimate", "GPU time", "cost", "per 1,000 pages")
    for estimate in total.estimates:
        per_1000 = estimate.cost_per_1000_pages
        table.add_row(
            estimate.method.replace("_", " "),
            f"{estimate.gpu_seconds:,.1f} s",
            _dollars(estimate.cost),
            "-" if per_1000 is None else _dollars(per_1000),
        )
    out.print(table)
    for estimate in total.estimates:
        out.print(
            f"{estimate.method.replace('_', ' ')}: assumes {estimate.assumption}", markup=False
        )
    out.print(
        f"at ${total.price_per_hour:g} per GPU-instance hour (OCRPIPE_GPU_PRICE_PER_HOUR);"
        " neither estimate counts cold starts or idle instances before they scale down",
        markup=False,
    )


def _dollars(amount: float) -> str:
    if amount >= 10:
        return f"${amount:,.2f}"
    return f"${amount:.4f}" if amount >= 0.0001 or amount == 0 else "<$0.0001"
