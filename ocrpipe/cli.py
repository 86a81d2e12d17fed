"""`ocrpipe`: run the local stack, submit files, follow them to Markdown, and operate the
pipeline (dead letters, retries).

Settings come from the environment (`OCRPIPE_*` variables, see ocrpipe/settings.py); with
`--local` they come from the file `ocrpipe up` writes, so a second shell can talk to a
running local stack.

Exit codes of every command:

* 0: success.
* 1: a document failed (for `wait`: or ended partial, unless `--allow-partial`) or is
  unknown, nothing is under `--prefix`, `get` found a document without Markdown, `report`
  found no finished document (or an unknown name), a retry was refused, a replay could not
  publish, or Google Cloud answered with an error.
* 2: usage or configuration error (bad arguments or settings, no credentials).
* 3: `wait` or `submit --wait` timed out before every document finished.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ocrpipe import naming
from ocrpipe.errors import ObjectMissing, OcrpipeError, RetryRefused
from ocrpipe.operations import batch_views, bill, views
from ocrpipe.operations import get as results
from ocrpipe.operations import submit as uploads
from ocrpipe.operations.batch_status import (
    BatchStatus,
    DocumentObjects,
    batch_status,
    listing_prefix,
    verdict,
    wait_for_batch,
)
from ocrpipe.operations.dead_letters import list_dead_letters, replay
from ocrpipe.operations.pull import PubSubPullSubscription, PullSubscription
from ocrpipe.operations.retry import plan_unfinished_pages, reprocess, requeue
from ocrpipe.operations.status import (
    DocumentStatus,
    document_status,
    documents_verdict,
    invalid_messages,
    recent_documents,
    wait_for_documents,
)
from ocrpipe.pubsub import Publisher, PubSubPublisher
from ocrpipe.settings import Settings
from ocrpipe.storage import GcsStore, ObjectStore

LOCAL_ENV_FILE = Path(".ocrpipe/local.env")
BATCH_POLL_S = 2.0  # a batch status costs two listings per 1000 documents
LOCAL_USAGE_FILE = Path(".ocrpipe/iam-usage.txt")  # where the running stack records decisions


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    TIMEOUT = 3


app = typer.Typer(
    help=__doc__, no_args_is_help=True, add_completion=False, rich_markup_mode="markdown"
)
dlq_app = typer.Typer(
    help="The dead-letter subscription: pages that kept failing.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(dlq_app, name="dlq")
out = Console(soft_wrap=True)  # never break a URI across lines in scripts
err = Console(stderr=True, soft_wrap=True)

LocalOpt = Annotated[
    bool, typer.Option("--local", help=f"Use the running local stack ({LOCAL_ENV_FILE}).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DocOpt = Annotated[
    str | None,
    typer.Option(
        "--doc", help="Only this input name, shell pattern over names ('reports/*'), or doc_id."
    ),
]


def load_settings(local: bool) -> Settings:
    if local and not LOCAL_ENV_FILE.exists():
        err.print(
            f"[red]No local stack found ({LOCAL_ENV_FILE} is missing).[/] Start one with"
            " `ocrpipe up` in this folder."
        )
        raise typer.Exit(Exit.USAGE)
    try:
        return Settings(_env_file=LOCAL_ENV_FILE) if local else Settings()
    except ValidationError as exc:
        err.print("The settings (OCRPIPE_* variables) are not valid:", style="red")
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(Exit.USAGE) from None


@contextmanager
def cloud_errors() -> Iterator[None]:
    """Trouble becomes a one-line message and an exit code, not a traceback. The adapters
    turn every Google Cloud error into one of ours (ocrpipe/errors.py), so only missing
    credentials, raised before any call, are caught here by their own type."""
    from google.auth.exceptions import DefaultCredentialsError

    try:
        yield
    except DefaultCredentialsError as exc:
        err.print(f"No Google credentials: {exc}", style="red", markup=False)
        err.print("Run `gcloud auth application-default login`, or use --local.", markup=False)
        raise typer.Exit(Exit.USAGE) from None
    except OcrpipeError as exc:
        err.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(Exit.FAILED) from None


@dataclass(frozen=True)
class Clients:
    """Where every command gets its clients from: the real adapters, or, in tests, fakes
    with the same protocols (``MemoryStore``, ...), given to typer's runner as ``obj``."""

    store: Callable[[Settings], ObjectStore]
    publisher: Callable[[Settings], Publisher]
    dead_letters: Callable[[Settings], PullSubscription]


def _gcs(settings: Settings) -> ObjectStore:
    return GcsStore.connect(settings.project, settings.storage_emulator_host)


def _pubsub(settings: Settings) -> Publisher:
    return PubSubPublisher.connect(settings.project, settings.pubsub_emulator_host)


def _dead_letter_subscription(settings: Settings) -> PullSubscription:
    return PubSubPullSubscription.connect(
        settings.project, settings.dead_letter_subscription, settings.pubsub_emulator_host
    )


CLOUD = Clients(store=_gcs, publisher=_pubsub, dead_letters=_dead_letter_subscription)


def clients(ctx: typer.Context) -> Clients:
    """The command's clients: ``ctx.obj`` when a test gave some, else the real ones."""
    return ctx.obj if isinstance(ctx.obj, Clients) else CLOUD


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM stops ``ocrpipe up`` the way Ctrl-C does: the stack shuts down in order."""
    raise KeyboardInterrupt


@app.command()
def up(
    pubsub_port: int = 8085,
    gcs_port: int = 4443,
    ocr_port: int = 8000,
    worker_port: int = 8080,
    splitter_port: int = 8081,
    eventarc_port: int = 8082,
    proxies_port: Annotated[
        int, typer.Option(help="First of 10 consecutive ports for the IAM proxies.")
    ] = 8090,
    ocr_url: Annotated[
        str | None, typer.Option(help="Use this vLLM server instead of the local engine.")
    ] = None,
    iam: Annotated[
        bool,
        typer.Option(
            help="Enforce the grants of ocrpipe/iam.json, each service as its own identity."
        ),
    ] = True,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Keep the buckets in this folder, so results survive a restart; unfinished"
            " documents are re-queued on start. Default: in memory.",
        ),
    ] = None,
) -> None:
    """Run the whole pipeline on this machine until Ctrl-C.

    With IAM enforced (the default) every service, and this CLI with --local (the
    `operator`), reaches the emulators through authorizing proxies; on Ctrl-C the
    permissions each identity used, and those granted but never used, are printed
    (`ocrpipe iam-report --local` shows them while the stack runs).

    Pages reach the worker with the concurrency production push reaches (up to
    `OCRPIPE_LOCAL_DELIVERY_MAX_IN_FLIGHT`, default `OCRPIPE_OCR_MAX_IN_FLIGHT`), so
    `--ocr-url` can point at a real GPU. With `--data-dir` the buckets are kept on disk;
    Pub/Sub messages are not, so on start whatever is unfinished is queued again."""
    from ocrpipe.local.stack import LocalStack, Ports, StackError, settings_env

    stack = LocalStack(
        ports=Ports(
            pubsub_port, gcs_port, ocr_port, worker_port, splitter_port, eventarc_port,
            proxies_port,
        ),
        ocr_url=ocr_url,
        iam=iam,
        data_dir=data_dir.resolve() if data_dir else None,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with out.status("starting the local stack") as status:
            stack.start(progress=lambda part: status.update(f"starting {part}"))
        LOCAL_ENV_FILE.parent.mkdir(exist_ok=True)
        LOCAL_ENV_FILE.write_text(
            "".join(f"{k}={v}\n" for k, v in settings_env(stack.settings).items())
        )
        if iam:
            LOCAL_USAGE_FILE.write_text("".join(f"{path}\n" for path in stack.usage_files))
        out.print(f"[green]Local stack is up.[/] Logs: {stack.log_dir}")
        if stack.recovery is not None:
            out.print(
                f"Buckets in {data_dir}: re-queued {stack.recovery.requeued_pages} pages and"
                f" {len(stack.recovery.refinalized)} unsplit inputs.",
                markup=False,
            )
        out.print(
            f"In another shell, in this folder: [bold]ocrpipe submit --local FILE --wait[/]"
            f"  (settings in {LOCAL_ENV_FILE}). Ctrl-C stops everything."
        )
        stack.watch()  # until a part exits (StackError) or Ctrl-C
    except StackError as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(Exit.FAILED) from None
    except KeyboardInterrupt:
        out.print("stopping")
    finally:
        stack.stop()
        LOCAL_ENV_FILE.unlink(missing_ok=True)
        LOCAL_USAGE_FILE.unlink(missing_ok=True)
        if iam and stack.log_dir is not None:
            with suppress(Exception):  # a report is a courtesy; never mask why we stopped
                _print_iam_report(stack.iam_usage())


@app.command("iam-report")
def iam_report(as_json: JsonOpt = False, local: LocalOpt = False) -> None:
    """Per identity of the running local stack: the permissions its calls used, those it
    is granted but never used (candidates for removal), and the calls that were refused.
    Exit 1 if a call was refused."""
    from ocrpipe.local.iam.policy import Authorizer, usage_report
    from ocrpipe.local.stack import read_decisions

    if not local:
        err.print("Only the local stack records what is used: give --local.", style="red")
        raise typer.Exit(Exit.USAGE)
    settings = load_settings(local)
    if not LOCAL_USAGE_FILE.exists():
        err.print("The running local stack does not enforce IAM (`ocrpipe up --no-iam`).")
        raise typer.Exit(Exit.USAGE)
    paths = [Path(line) for line in LOCAL_USAGE_FILE.read_text().splitlines() if line]
    report = usage_report(read_decisions(paths), Authorizer.from_grants(settings))
    if as_json:
        views.print_json(out, report)
    else:
        _print_iam_report(report)
    raise typer.Exit(Exit.FAILED if any(r["refused"] for r in report.values()) else Exit.OK)


def _print_iam_report(report: dict[str, dict[str, list[str]]]) -> None:
    out.rule("IAM: what each identity used of its grants")
    for identity, parts in report.items():
        out.print(Text(identity, style="bold"))
        for title, key, style in (
            ("used", "used", ""),
            ("granted, never used", "granted_never_used", "yellow"),
            ("refused", "refused", "red"),
        ):
            for line in parts.get(key, []):
                out.print(Text(f"  {title}: {line}", style=style))
        if not any(parts.values()):
            out.print("  (no grants, no calls)")


@app.command()
def submit(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(
            exists=True, help="Files, and folders (walked recursively, hidden files skipped)."
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
    local: LocalOpt = False,
) -> None:
    """Upload files, and folders, to the input bucket; each file becomes a document named
    PREFIX + its file name, or + its path inside the folder given. A file whose bytes are
    already in the bucket under that name is skipped (unless --force). With --wait and
    several files, one progress bar follows the whole batch."""
    settings = load_settings(local)
    try:
        local_files = uploads.collect(files, prefix)
    except uploads.DuplicateName as exc:
        err.print(Text(f"Two files would get the same name: {exc}", style="red"))
        raise typer.Exit(Exit.USAGE) from None
    if not local_files:
        err.print("No files to submit (hidden files are skipped).", style="red")
        raise typer.Exit(Exit.USAGE)
    with cloud_errors():
        store = clients(ctx).store(settings)
        report = _upload(store, settings, local_files, force=force, dry_run=dry_run)
        names = report.names
        if wait_ and not dry_run:
            if len(names) == 1:
                raise typer.Exit(_wait_for(store, settings, names, timeout, allow_partial))
            code = _wait_batch(
                store, settings, listing_prefix(names), names, timeout, allow_partial
            )
            raise typer.Exit(code)


@app.command()
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
    else:
        out.print(views.status_table(statuses, now))
        if refused is not None and refused.count:
            err.print(views.invalid_message_note(refused.count, settings.output_bucket))
    if name and statuses[0].state == "unknown":
        raise typer.Exit(Exit.FAILED)


@app.command()
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
        err.print("Name at least one document, or give --prefix.", style="red")
        raise typer.Exit(Exit.USAGE)
    with cloud_errors():
        store = clients(ctx).store(settings)
        if prefix is not None:
            code = _wait_batch(store, settings, prefix, names, timeout, allow_partial, as_json)
            raise typer.Exit(code)
        raise typer.Exit(_wait_for(store, settings, names or [], timeout, allow_partial))


@app.command()
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
    local: LocalOpt = False,
) -> None:
    """Put documents through the pipeline again. Safe to run twice and to interrupt.

    Without --failed-only: the input object is rewritten onto itself, which makes a new
    generation and a new finalize event, so the document is split and OCR'd from scratch
    into a new @GENERATION/ folder. The old generation's output stays; its queued or
    dead-lettered pages are dropped as stale.

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
            err.print("Name at least one document, or give --prefix.", style="red")
            raise typer.Exit(Exit.USAGE)
        publisher = clients(ctx).publisher(settings) if failed_only and not dry_run else None
        code = Exit.OK
        for name in dict.fromkeys(targets):
            try:
                if failed_only:
                    _retry_pages(store, publisher, settings, name, dry_run)
                elif dry_run:
                    out.print(Text(f"{name}: would be reprocessed as a new generation"))
                else:
                    generation = reprocess(store, settings, name)
                    out.print(Text(f"{name}: reprocessing as generation {generation}"))
            except RetryRefused as exc:
                err.print(Text(f"{name}: {exc}", style="red"))
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
    if not plan.pages:
        out.print(Text(f"{name}: nothing to retry, every page has Markdown"))
        return
    if plan.rebuild:
        verb = "would ask" if dry_run or publisher is None else "asked"
        if publisher is not None and not dry_run:
            requeue(plan, store, publisher, settings)
        out.print(Text(f"{name}: {verb} the worker to rebuild document.md (stale assembly)"))
        return
    counts = f"{len(plan.failed)} failed, {len(plan.pending)} pending"
    what = f"pages {_page_list(plan.pages)} ({counts})"
    if dry_run or publisher is None:
        out.print(Text(f"{name}: would re-queue {what}; would delete {len(plan.remove)} objects"))
        return
    requeue(plan, store, publisher, settings)
    out.print(Text(f"{name}: re-queued {what}"))


def _page_list(pages: tuple[int, ...]) -> str:
    shown = ", ".join(str(p) for p in pages[:20])
    return shown + (f" and {len(pages) - 20} more" if len(pages) > 20 else "")


@dlq_app.command("list")
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
        out.print(f"no dead-lettered messages{' for ' + doc if doc else ''}")
        return
    out.print(views.dead_letter_table(letters))
    out.print(
        f"{len(letters)} message(s), left in {settings.dead_letter_subscription}. Why the last"
        " delivery failed is not kept with the message: see the worker's log (labels doc_id"
        " and page), docs/OPERATIONS.md.",
        markup=False,
    )


@dlq_app.command("replay")
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
    if as_json:
        views.print_json(out, report.as_dict())
    else:
        if dry_run and report.replayed:
            out.print(views.dead_letter_table(views.sort_letters(report.replayed)))
        for letter, why in report.failed:
            err.print(Text(f"{letter.name} page {letter.page}: {why}", style="red"))
        out.print(views.replay_summary(report), markup=False)
    raise typer.Exit(Exit.FAILED if report.failed else Exit.OK)


@app.command()
def demo(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)] = Path(
        "examples/sample.pdf"
    ),
    timeout: float = 600.0,
) -> None:
    """Start the local stack, push FILE through it, print its Markdown, stop."""
    from ocrpipe.local.stack import LocalStack, StackError

    stack = LocalStack()
    try:
        with out.status("starting the local stack") as spinner:
            stack.start(progress=lambda part: spinner.update(f"starting {part}"))
        settings = stack.settings
        store = CLOUD.store(settings)
        with file.open("rb") as handle:
            store.upload(settings.input_bucket, file.name, handle, _content_type(file))
        out.print(f"submitted {file} -> {naming.object_uri(settings.input_bucket, file.name)}")
        code = _wait_for(store, settings, [file.name], timeout)
        final = document_status(store, settings, file.name)
        if final.markdown_uri:
            markdown = store.read(*naming.split_uri(final.markdown_uri))
            out.rule(f"{final.markdown_uri}")
            out.print(markdown.decode(), markup=False, highlight=False)
            out.rule()
        if code:
            err.print(f"service logs: {stack.log_dir}")
        if stack.iam:
            for identity, parts in stack.iam_usage().items():
                for refused in parts["refused"]:
                    err.print(Text(f"IAM refused {identity}: {refused}", style="red"))
    except StackError as exc:
        err.print(str(exc), style="red", markup=False)
        code = Exit.FAILED
    finally:
        stack.stop()
    raise typer.Exit(code)


def _wait_for(
    store: ObjectStore,
    settings: Settings,
    names: list[str],
    timeout: float,
    allow_partial: bool = False,
) -> Exit:
    """One progress bar per document while :func:`wait_for_documents` polls, then one line
    per document and the exit code of :func:`documents_verdict`."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        tasks = {n: progress.add_task(n, total=None, state="waiting") for n in names}

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
            err.print(Text(f"{name}: not finished after {timeout:.0f} s", style="yellow"))
            continue
        ok = final.state == "done" or (final.state == "partial" and allow_partial)
        line = Text.assemble(f"{name}: ", views.state_text(final.state))
        line.append(f" in {views.duration(final.elapsed())}")
        if final.markdown_uri:
            line.append(f" -> {final.markdown_uri}")
        (out if ok else err).print(line)
        if final.error:
            err.print(Text(f"  rejected: {final.error.reason}: {final.error.message}"))
        for number, error in sorted(final.page_errors.items()):
            err.print(Text(f"  page {number}: {error.reason}: {error.message}"))
    outcome = documents_verdict(names, finals, allow_partial=allow_partial)
    return {"ok": Exit.OK, "failed": Exit.FAILED, "timeout": Exit.TIMEOUT}[outcome]


@app.command()
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
    local: LocalOpt = False,
) -> None:
    """Download each document's newest finished Markdown as `DIR/<name>.md` (`<name>`: the
    input name minus its extension), mirroring the input folders. Files already there with
    the same bytes are not downloaded again. Exit 1 if a document has no Markdown yet (or
    was rejected)."""
    settings = load_settings(local)
    if not names and prefix is None:
        err.print("Name at least one document, or give --prefix.", style="red")
        raise typer.Exit(Exit.USAGE)
    if output == "-" and (pages or record):
        err.print("--pages and --json write files: give a folder with -o.", style="red")
        raise typer.Exit(Exit.USAGE)
    with cloud_errors():
        store = clients(ctx).store(settings)
        documents = results.find_documents(store, settings, names=names or (), prefix=prefix)
        if output == "-":
            missing = results.write_markdown(store, settings, documents, sys.stdout.buffer)
        else:
            missing = list(_download(store, settings, documents, Path(output), pages, record))
    for item in missing:
        err.print(Text(f"{item.name}: no Markdown: {item.why}", style="yellow"))
    raise typer.Exit(Exit.FAILED if missing else Exit.OK)


def _download(
    store: ObjectStore,
    settings: Settings,
    documents: list[DocumentObjects],
    dest: Path,
    pages: bool,
    record: bool,
) -> tuple[results.Missing, ...]:
    wanted, missing = results.plan(documents, settings, dest, pages=pages, record=record)
    with batch_views.transfer_progress(err, "downloading") as progress:
        task = progress.add_task("", total=sum(w.info.size for w in wanted), files="")
        done = [0]

        def advance(item: results.Wanted, action: results.Action) -> None:
            done[0] += 1
            progress.update(task, advance=item.info.size, files=f"{done[0]}/{len(wanted)}")

        report = results.get_results(store, settings, wanted, missing, on_file=advance)
    out.print(
        f"{report.count('downloaded')} file(s) downloaded, {report.count('unchanged')}"
        f" unchanged, into {dest}",
        markup=False,
    )
    return report.missing


def _upload(
    store: ObjectStore,
    settings: Settings,
    files: list[uploads.LocalFile],
    *,
    force: bool,
    dry_run: bool,
) -> uploads.SubmitReport:
    bucket = settings.input_bucket
    with batch_views.transfer_progress(err, "uploading") as progress:
        task = progress.add_task("", total=sum(f.size for f in files), files="")
        done = [0]

        def advance(item: uploads.Submitted) -> None:
            done[0] += 1
            progress.update(task, advance=item.file.size, files=f"{done[0]}/{len(files)}")

        report = uploads.submit(store, bucket, files, force=force, dry_run=dry_run, on_file=advance)
    for item in report.files:
        uri = naming.object_uri(bucket, item.file.name)
        if item.unchanged:
            continue
        if dry_run:
            out.print(Text(f"would submit {uri} ({item.file.size} bytes)"))
        else:
            out.print(Text(f"submitted {uri} (generation {item.generation})"))
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
        batch_views.print_batch(out, current)
    return Exit.OK if current.documents else Exit.FAILED


def _wait_batch(
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
        task = progress.add_task(prefix or "batch", total=None, states="")

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
        err.print(Text(f"no documents under {prefix!r}", style="red"))
    elif outcome == "timeout":
        err.print(Text(f"not finished after {timeout:.0f} s", style="yellow"))
    return {"ok": Exit.OK, "failed": Exit.FAILED, "timeout": Exit.TIMEOUT}[outcome]


@app.command()
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
    (done, failed), the tokens, OCR seconds, attempts and retries the worker recorded in
    document.json, and two estimates of GPU time and cost (total and per 1,000 pages) at
    OCRPIPE_GPU_PRICE_PER_HOUR, with the assumption each makes. Pages without recorded
    usage are counted as unknown. Exit 1 if no finished document is found, or a NAME is
    unknown."""
    settings = load_settings(local)
    if not names and prefix is None:
        err.print("Name at least one document, or give --prefix.", style="red")
        raise typer.Exit(Exit.USAGE)
    with cloud_errors():
        code = _report(clients(ctx).store(settings), settings, names or [], prefix, as_json)
    raise typer.Exit(code)


def _report(
    store: ObjectStore, settings: Settings, names: list[str], prefix: str | None, as_json: bool
) -> Exit:
    documents = results.find_documents(store, settings, names=names, prefix=prefix)
    records = _read_records(
        store, settings.output_bucket, bill.records_to_read(documents, settings)
    )
    total = bill.bill(documents, records, settings)
    if as_json:
        views.print_json(out, {"prefix": prefix, "names": names, **total.as_dict()})
    else:
        _print_bill(total, prefix)
    for skipped in total.skipped:
        err.print(Text(f"{skipped.name}: not counted: {skipped.why}", style="yellow"))
    if not total.documents:
        where = f"under {prefix!r}" if prefix is not None else "among the names given"
        err.print(Text(f"no finished document {where}", style="red"))
        return Exit.FAILED
    unknown = {s.name for s in total.skipped if s.why == bill.NO_SUCH_DOCUMENT}
    return Exit.FAILED if unknown & set(names) else Exit.OK


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
            f"{total.documents} document(s){where}: {total.pages} pages,"
            f" {total.pages_done} done, {total.pages_failed} failed"
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
    out.print(
        f"tokens: {total.prompt_tokens:,} prompt, {total.completion_tokens:,} completion;"
        f" OCR: {total.ocr_seconds:,.1f} s in requests, {total.attempts} attempts"
        f" ({total.retries} retries), {total.loop_retries} page(s) kept at a higher"
        " temperature (repetition loop)",
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


def _content_type(path: Path) -> str:
    return uploads.content_type(path)


if __name__ == "__main__":
    sys.exit(app())
