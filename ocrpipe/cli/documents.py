"""The commands on documents: submit, status, wait, get and retry."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from ocrpipe import naming
from ocrpipe.cli.backfill import copy_from_buckets
from ocrpipe.cli.common import (
    NO_DOCUMENTS,
    Clients,
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
from ocrpipe.cli.waiting import replay_command, wait_batch, wait_for
from ocrpipe.errors import RetryRefused
from ocrpipe.listing import DocumentObjects
from ocrpipe.operations import batch_views, views
from ocrpipe.operations import get as results
from ocrpipe.operations import submit as uploads
from ocrpipe.operations.batch_status import batch_status, listing_prefix
from ocrpipe.operations.retry import plan_unfinished_pages, reprocess, requeue
from ocrpipe.operations.status import document_status, invalid_messages, recent_documents
from ocrpipe.pubsub import Publisher
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore


def submit(
    ctx: typer.Context,
    files: Annotated[
        list[str],
        typer.Argument(
            help="Files, and folders (walked recursively, hidden files skipped), or"
            " gs://BUCKET/PREFIX: objects already in GCS, copied by GCS, never downloaded."
        ),
    ],
    prefix: Annotated[str, typer.Option(help="Name prefix inside the input bucket.")] = "",
    wait_: Annotated[bool, typer.Option("--wait", help="Wait for the Markdown.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait, with --wait.")] = 900.0,
    allow_partial: Annotated[
        bool,
        typer.Option("--allow-partial", help="With --wait: a partial document is not a failure."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Upload files even if the bucket has their bytes.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be uploaded; upload nothing.")
    ] = False,
    follow_symlinks: Annotated[
        bool,
        typer.Option(
            "--follow-symlinks",
            help="Follow symbolic links inside folders (to files and folders); by default"
            " they are skipped, and said so.",
        ),
    ] = False,
    local: LocalOpt = False,
) -> None:
    """Upload files, and folders, to the input bucket; each file becomes a document named
    PREFIX + its file name, or + its path inside the folder given. gs://BUCKET/PREFIX enters
    objects already in a bucket: GCS copies each into the input bucket, named PREFIX + its
    name after the source's last `/` (end a folder with `/`). A file whose bytes are
    already in the bucket under that name is skipped (unless --force). With --wait and
    several files, one progress bar follows the whole batch.

    Every file is checked before the first upload: it must open for reading and its name
    must be one GCS accepts (UTF-8, no line break, at most 1024 bytes). What is skipped is
    listed with the reason and the rest is uploaded; exit 1 if a file could not be
    submitted (a symbolic link not followed, or a FIFO, is not a failure), or an object
    could not be copied (it changed since it was listed)."""
    settings = load_settings(local)
    buckets, paths = split_sources(files)
    try:
        collected = uploads.collect(paths, prefix, follow_symlinks=follow_symlinks)
    except uploads.DuplicateName as exc:
        usage_error(f"Two files would get the same name: {exc}")
    for skipped in collected.skipped:
        line = f"skipped {skipped.path}: {skipped.why}"
        err.print(Text(views.printable(line), style="red" if skipped.problem else "yellow"))
    problems = [s for s in collected.skipped if s.problem]
    if not collected.files and not buckets:
        usage_error("No files to submit (hidden files are skipped).")
    with cloud_errors():
        store = clients(ctx).store(settings)
        names: list[str] = []
        not_submitted = len(problems)
        if collected.files:
            report = _upload(store, settings, collected.files, force=force, dry_run=dry_run)
            names += report.names
            not_submitted += len(report.failed)
        if buckets:
            copied = copy_from_buckets(store, settings, buckets, prefix, force, dry_run)
            names += copied.names
            not_submitted += len(copied.failed)
        code = Exit.OK
        if wait_ and not dry_run and names:
            if len(names) == 1:
                code = wait_for(store, settings, names, timeout, allow_partial)
            else:
                shared = listing_prefix(names)
                label = batch_views.batch_label(shared)
                code = wait_batch(
                    store, settings, shared, names, timeout, allow_partial, label=label
                )
    if not_submitted:
        err.print(Text(f"{not_submitted} file(s) not submitted (listed above)", style="red"))
    raise typer.Exit(code or (Exit.FAILED if not_submitted else Exit.OK))


def status(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Input name; omit to list recent documents.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many recent documents.")] = 20,
    invalid: Annotated[
        bool,
        typer.Option(
            "--invalid",
            help="List the deliveries the worker refused or could not read (newest first).",
        ),
    ] = False,
    prefix: Annotated[
        str | None, typer.Option(help="Summarise every document under this prefix (a folder).")
    ] = None,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
) -> None:
    """A document's pages (done, failed with reasons, pending) and elapsed time, or a table
    of the most recent documents, with a count of refused deliveries. With --prefix:
    documents by state, pages, rate, ETA and a table of failures for a whole folder. Exit 1
    if NAME is unknown or nothing is under the prefix."""
    settings = load_settings(local)
    if prefix is not None:
        raise typer.Exit(_status_batch(clients(ctx), settings, prefix, name, as_json))
    if invalid:
        with cloud_errors():
            found = invalid_messages(clients(ctx).store(settings), settings, limit)
        if as_json:
            views.print_json(
                out, {"count": found.count, "newest": [m.as_dict() for m in found.newest]}
            )
        else:
            out.print(views.invalid_message_table(found))
        return
    with cloud_errors():
        store = clients(ctx).store(settings)
        names = [name] if name else recent_documents(store, settings, limit)
        statuses = [document_status(store, settings, n) for n in names]
        refused = None if name or as_json else invalid_messages(store, settings, 0)
    now = time.time()
    if as_json:
        dicts = [s.as_dict(now) for s in statuses]
        views.print_json(out, dicts[0] if name else dicts)
    elif name:
        views.print_status_detail(out, statuses[0], now)
        if statuses[0].dead_lettered:
            err.print(
                Text(
                    f"{statuses[0].dead_lettered} page(s) in the dead-letter topic; once the"
                    f" cause is fixed: `{replay_command(settings, name)}`",
                    style="yellow",
                )
            )
    else:
        out.print(views.status_table(statuses, now))
        if refused is not None and refused.count:
            err.print(views.invalid_message_note(refused.count, settings.output_bucket))
    if name and statuses[0].state == "unknown":
        raise typer.Exit(Exit.FAILED)


def wait(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Input names.")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Every document under this prefix (a folder), one bar.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial", help="A partial document (some pages failed) is not a failure."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --prefix: print the final status as JSON.")
    ] = False,
    local: LocalOpt = False,
) -> None:
    """Show progress until every document is finished. Exit 0 if all are done, 1 if one
    failed (or is partial, unless --allow-partial) or nothing is under --prefix, 3 if the
    timeout passed first."""
    settings = load_settings(local)
    if not names and prefix is None:
        usage_error(NO_DOCUMENTS)
    with cloud_errors():
        store = clients(ctx).store(settings)
        if prefix is not None:
            code = wait_batch(store, settings, prefix, names, timeout, allow_partial, as_json)
            raise typer.Exit(code)
        raise typer.Exit(wait_for(store, settings, names or [], timeout, allow_partial))


def retry(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Input names.")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Also every input whose name starts with this (a folder).")
    ] = None,
    failed_only: Annotated[
        bool,
        typer.Option(
            "--failed-only",
            help="Only re-queue the pages without Markdown (failed or pending) of the current"
            " generation, instead of reprocessing the whole document.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would happen; change nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Reprocess an input that was rejected as a whole (not a PDF, ...)."
        ),
    ] = False,
    local: LocalOpt = False,
) -> None:
    """Put documents through the pipeline again. Safe to run twice and to interrupt.

    Without --failed-only: the input object is rewritten onto itself, which makes a new
    generation and a new finalize event, so the document is split and OCR'd from scratch
    into a new @GENERATION/ folder. The old generation's output stays; its queued or
    dead-lettered pages are dropped as stale. An input rejected as a whole (not a PDF,
    encrypted, ...) is refused: the same bytes would be rejected again; fix the file and
    submit it again, or give --force.

    With --failed-only: for the current generation, the pages' error records are deleted,
    and every page without Markdown (failed, or still pending) is published again from the
    page images in the work bucket; the worker rebuilds document.md when the last page
    lands. A pending page that is still being processed gets a duplicate delivery, which
    writes nothing twice. A document in state stale_assembly gets one page published
    again, which makes the worker rebuild document.md.

    Exit 1 if a document could not be retried (the message says why).
    """
    settings = load_settings(local)
    with cloud_errors():
        store = clients(ctx).store(settings)
        targets = list(names or [])
        if prefix is not None:
            targets += [i.name for i in store.list(settings.input_bucket, prefix)]
        if not targets:
            usage_error(NO_DOCUMENTS)
        publisher = clients(ctx).publisher(settings) if failed_only and not dry_run else None
        code = Exit.OK
        for name in dict.fromkeys(targets):
            shown = views.printable(name)
            try:
                if failed_only:
                    _retry_pages(store, publisher, settings, name, dry_run)
                elif dry_run:
                    reprocess(store, settings, name, force=force, dry_run=True)
                    out.print(Text(f"{shown}: would be reprocessed as a new generation"))
                else:
                    generation = reprocess(store, settings, name, force=force)
                    out.print(Text(f"{shown}: reprocessing as generation {generation}"))
            except RetryRefused as exc:
                err.print(Text(views.printable(f"{name}: {exc}"), style="red"))
                code = Exit.FAILED
    raise typer.Exit(code)


def _retry_pages(
    store: ObjectStore,
    publisher: Publisher | None,
    settings: Settings,
    name: str,
    dry_run: bool,
) -> None:
    plan = plan_unfinished_pages(store, settings, name)
    shown = views.printable(name)
    if not plan.pages:
        out.print(Text(f"{shown}: nothing to retry, every page has Markdown"))
        return
    if plan.rebuild:
        verb = "would ask" if dry_run or publisher is None else "asked"
        if publisher is not None and not dry_run:
            requeue(plan, store, publisher, settings)
        out.print(Text(f"{shown}: {verb} the worker to rebuild document.md (stale assembly)"))
        return
    counts = f"{len(plan.failed)} failed, {len(plan.pending)} pending"
    what = f"pages {_page_list(plan.pages)} ({counts})"
    if dry_run or publisher is None:
        out.print(Text(f"{shown}: would re-queue {what}; would delete {len(plan.remove)} objects"))
        return
    requeue(plan, store, publisher, settings)
    out.print(Text(f"{shown}: re-queued {what}"))


def _page_list(pages: tuple[int, ...]) -> str:
    shown = ", ".join(str(p) for p in pages[:20])
    return shown + (f" and {len(pages) - 20} more" if len(pages) > 20 else "")


def get(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Input names.")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Every document under this prefix (a folder).")
    ] = None,
    output: Annotated[
        str, typer.Option("-o", "--output", help="Folder to write into, or - for stdout.")
    ] = ".",
    pages: Annotated[
        bool, typer.Option("--pages", help="Also each page: `DIR/<name>/pages/00001.md`.")
    ] = False,
    record: Annotated[
        bool,
        typer.Option("--json", help="Also document.json, where it exists: `DIR/<name>.json`."),
    ] = False,
    figures: Annotated[
        bool,
        typer.Option(
            "--figures/--no-figures",
            help="A bbox model's figures, as `DIR/<name>/pages/00001.figure-1.png`, linked"
            " from the local Markdown (default); --no-figures leaves them and the links.",
        ),
    ] = True,
    local: LocalOpt = False,
) -> None:
    """Download each document's newest finished Markdown as `DIR/<name>.md` (`<name>`: the
    input name minus its extension), mirroring the input folders, with its figures (a bbox
    model's) beside its pages, so the folder renders offline in any Markdown viewer. Files
    already there with the same bytes are not downloaded again; a file with other bytes is
    replaced, and counted. The whole download is planned first: a name a disk could refuse
    is escaped (`%XX`), and two documents that would share a file (also on a disk that
    ignores letter case) both move, each line saying where and why. Nothing is written
    outside DIR. A document that cannot be written is reported and the rest are written.
    Exit 1 if a document has no Markdown yet (or was rejected) or could not be written."""
    settings = load_settings(local)
    if not names and prefix is None:
        usage_error(NO_DOCUMENTS)
    if output == "-" and (pages or record):
        usage_error("--pages and --json write files: give a folder with -o.")
    with cloud_errors():
        store = clients(ctx).store(settings)
        documents = results.find_documents(store, settings, names=names or (), prefix=prefix)
        if output == "-":
            missing = results.write_markdown(store, settings, documents, sys.stdout.buffer)
            failed: tuple[results.Missing, ...] = ()
        else:
            report = _download(store, settings, documents, Path(output), pages, record, figures)
            missing, failed = list(report.missing), report.failed
        for item in missing:
            why = item.why
            if why.startswith("rejected"):  # the reason is one read away: give it
                rejected = document_status(store, settings, item.name).error
                why = f"rejected: {rejected.reason}: {rejected.message}" if rejected else why
            err.print(Text(views.printable(f"{item.name}: no Markdown: {why}"), style="yellow"))
    for item in failed:
        err.print(Text(views.printable(f"{item.name}: not written: {item.why}"), style="red"))
    if missing or failed:
        err.print(
            Text(
                f"{len(missing) + len(failed)} document(s) not written:"
                f" {len(missing)} without Markdown, {len(failed)} that could not be written",
                style="red",
            )
        )
    raise typer.Exit(Exit.FAILED if missing or failed else Exit.OK)


def _download(
    store: ObjectStore,
    settings: Settings,
    documents: list[DocumentObjects],
    dest: Path,
    pages: bool,
    record: bool,
    figures: bool,
) -> results.GetReport:
    planned = results.plan(documents, settings, dest, pages=pages, record=record, figures=figures)
    sizes = [w.info.size for w in planned.wanted]
    with batch_views.transfer_progress(err, "downloading", sizes) as advance:
        report = results.get_results(
            store, settings, planned, on_file=lambda item, _: advance(item.info.size)
        )
    for moved in report.renamed:
        out.print(Text(views.printable(f"{moved.name} -> {moved.path}: {moved.why}")))
    replaced = report.count("replaced")
    out.print(
        f"{report.count('downloaded') + replaced} file(s) downloaded, {report.count('unchanged')}"
        f" unchanged, into {views.printable(dest)}"
        + (f" ({replaced} of them replaced a local file with other bytes)" if replaced else ""),
        markup=False,
    )
    return report


def _upload(
    store: ObjectStore,
    settings: Settings,
    files: list[uploads.LocalFile],
    *,
    force: bool,
    dry_run: bool,
) -> uploads.SubmitReport:
    bucket = settings.input_bucket
    with batch_views.transfer_progress(err, "uploading", [f.size for f in files]) as advance:
        report = uploads.submit(
            store,
            bucket,
            files,
            force=force,
            dry_run=dry_run,
            on_file=lambda item: advance(item.file.size),
        )
    for item in report.files:
        uri = views.printable(naming.object_uri(bucket, item.file.name))
        if item.unchanged:
            continue
        if dry_run:
            out.print(Text(f"would submit {uri} ({item.file.size} bytes)"))
        else:
            out.print(Text(f"submitted {uri} (generation {item.generation})"))
    for failed in report.failed:
        err.print(Text(views.printable(f"not submitted: {failed.why}"), style="red"))
    verb = "would upload" if dry_run else "uploaded"
    out.print(
        f"{verb} {len(report.uploaded)} file(s), {len(report.unchanged)} unchanged (already"
        " in the bucket with the same bytes)",
        markup=False,
    )
    return report


def _status_batch(
    source: Clients, settings: Settings, prefix: str, name: str | None, as_json: bool
) -> Exit:
    if name is not None:
        err.print("Give a NAME or --prefix, not both.", style="red")
        return Exit.USAGE
    with cloud_errors():
        current = batch_status(source.store(settings), settings, prefix)
    if as_json:
        views.print_json(out, current.as_dict())
    else:
        replay = replay_command(settings, prefix + "*")
        batch_views.print_batch(out, current, replay_command=replay)
    return Exit.OK if current.documents else Exit.FAILED
