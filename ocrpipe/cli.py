"""`ocrpipe`: run the local stack, submit files, follow them to Markdown, and operate the
pipeline (dead letters, retries).

Settings come from the environment (`OCRPIPE_*` variables, see ocrpipe/settings.py); with
`--local` they come from the file `ocrpipe up` writes, so a second shell can talk to a
running local stack.

Exit codes of every command:

* 0: success.
* 1: a document failed (for `wait`: or ended partial, unless `--allow-partial`) or is
  unknown, a retry was refused, a replay could not publish, or Google Cloud answered with
  an error.
* 2: usage or configuration error (bad arguments or settings, no credentials).
* 3: `wait` or `submit --wait` timed out before every document finished.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import IntEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from ocrpipe import views
from ocrpipe.dlq import list_dead_letters, replay
from ocrpipe.errors import OcrpipeError
from ocrpipe.pubsub import PubSubPublisher
from ocrpipe.pull import PubSubPullSubscription, SubscriptionMissing
from ocrpipe.requeue import RetryRefused, plan_unfinished_pages, reprocess, requeue
from ocrpipe.settings import Settings
from ocrpipe.status import DocumentStatus, document_status, recent_documents
from ocrpipe.storage import GcsStore, ObjectMissing, ObjectStore

LOCAL_ENV_FILE = Path(".ocrpipe/local.env")
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
out = Console(soft_wrap=True)  # never break a gs:// URI across lines in scripts
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
    """Google Cloud trouble becomes a one-line message and an exit code, not a traceback."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import DefaultCredentialsError

    try:
        yield
    except DefaultCredentialsError as exc:
        err.print(f"No Google credentials: {exc}", style="red", markup=False)
        err.print("Run `gcloud auth application-default login`, or use --local.", markup=False)
        raise typer.Exit(Exit.USAGE) from None
    except (OcrpipeError, SubscriptionMissing, ObjectMissing, GoogleAPICallError) as exc:
        # GoogleAPICallError: what the adapters pass through, such as 403 Forbidden.
        err.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(Exit.FAILED) from None


def _store(settings: Settings) -> GcsStore:
    return GcsStore.connect(settings.project, settings.storage_emulator_host)


def _publisher(settings: Settings) -> PubSubPublisher:
    return PubSubPublisher.connect(settings.project, settings.pubsub_emulator_host)


def _dead_letters(settings: Settings) -> PubSubPullSubscription:
    return PubSubPullSubscription.connect(
        settings.project, settings.dead_letter_subscription, settings.pubsub_emulator_host
    )


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
) -> None:
    """Run the whole pipeline on this machine until Ctrl-C.

    With IAM enforced (the default) every service, and this CLI with --local (the
    `operator`), reaches the emulators through authorizing proxies; on Ctrl-C the
    permissions each identity used, and those granted but never used, are printed
    (`ocrpipe iam-report --local` shows them while the stack runs)."""
    from ocrpipe.local.stack import LocalStack, Ports, StackError, settings_env

    stack = LocalStack(
        ports=Ports(
            pubsub_port, gcs_port, ocr_port, worker_port, splitter_port, eventarc_port,
            proxies_port,
        ),
        ocr_url=ocr_url,
        iam=iam,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
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
        out.print(
            f"In another shell, in this folder: [bold]ocrpipe submit --local FILE --wait[/]"
            f"  (settings in {LOCAL_ENV_FILE}). Ctrl-C stops everything."
        )
        while True:
            time.sleep(1)
            for child in stack.children:
                if child.process.poll() is not None:
                    raise StackError(f"{child.name} exited:\n{stack.log_tail(child.name)}")
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
    from ocrpipe.local.iam_policy import Authorizer, usage_report
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
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False)],
    prefix: Annotated[str, typer.Option(help="Name prefix inside the input bucket.")] = "",
    wait_: Annotated[bool, typer.Option("--wait", help="Wait for the Markdown.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait, with --wait.")] = 900.0,
    allow_partial: Annotated[
        bool,
        typer.Option("--allow-partial", help="With --wait: a partial document is not a failure."),
    ] = False,
    local: LocalOpt = False,
) -> None:
    """Upload files to the input bucket; each becomes a document named like the file."""
    settings = load_settings(local)
    with cloud_errors():
        store = _store(settings)
        names = []
        for path in files:
            name = f"{prefix}{path.name}"
            with path.open("rb") as handle:
                generation = store.upload(settings.input_bucket, name, handle, _content_type(path))
            out.print(
                Text(f"submitted gs://{settings.input_bucket}/{name} (generation {generation})")
            )
            names.append(name)
        if wait_:
            raise typer.Exit(_wait_for(store, settings, names, timeout, allow_partial))


@app.command()
def status(
    name: Annotated[
        str | None, typer.Argument(help="Input name; omit to list recent documents.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many recent documents.")] = 20,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
) -> None:
    """A document's pages (done, failed with reasons, pending) and elapsed time, or a table
    of the most recent documents. Exit 1 if NAME is unknown."""
    settings = load_settings(local)
    with cloud_errors():
        store = _store(settings)
        names = [name] if name else recent_documents(store, settings, limit)
        statuses = [document_status(store, settings, n) for n in names]
    now = time.time()
    if as_json:
        dicts = [s.as_dict(now) for s in statuses]
        views.print_json(out, dicts[0] if name else dicts)
    elif name:
        views.print_status_detail(out, statuses[0], now)
    else:
        out.print(views.status_table(statuses, now))
    if name and statuses[0].state == "unknown":
        raise typer.Exit(Exit.FAILED)


@app.command()
def wait(
    names: Annotated[list[str], typer.Argument(help="Input names.")],
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial", help="A partial document (some pages failed) is not a failure."
        ),
    ] = False,
    local: LocalOpt = False,
) -> None:
    """Show progress until every document is finished. Exit 0 if all are done, 1 if one
    failed (or is partial, unless --allow-partial), 3 if the timeout passed first."""
    settings = load_settings(local)
    with cloud_errors():
        raise typer.Exit(_wait_for(_store(settings), settings, names, timeout, allow_partial))


@app.command()
def retry(
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

    With --failed-only: for the current generation, document.md and the pages' error
    records are deleted, and every page without Markdown (failed, or still pending) is
    published again from the page images in the work bucket; document.md is assembled
    again when the last page lands. A pending page that is still being processed gets a
    duplicate delivery, which writes nothing twice.

    Exit 1 if a document could not be retried (the message says why).
    """
    settings = load_settings(local)
    with cloud_errors():
        store = _store(settings)
        targets = list(names or [])
        if prefix is not None:
            targets += [i.name for i in store.list(settings.input_bucket, prefix)]
        if not targets:
            err.print("Name at least one document, or give --prefix.", style="red")
            raise typer.Exit(Exit.USAGE)
        publisher = _publisher(settings) if failed_only and not dry_run else None
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
    publisher: PubSubPublisher | None,
    settings: Settings,
    name: str,
    dry_run: bool,
) -> None:
    plan = plan_unfinished_pages(store, settings, name)
    if not plan.pages:
        out.print(Text(f"{name}: nothing to retry, every page has Markdown"))
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
    doc: DocOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Show at most this many.")] = None,
    as_json: JsonOpt = False,
    local: LocalOpt = False,
) -> None:
    """Show the dead-lettered page messages without consuming them: each is pulled, and
    released again (a nack, never an ack) when the listing ends."""
    settings = load_settings(local)
    with cloud_errors():
        subscription = _dead_letters(settings)
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
            _dead_letters(settings),
            _publisher(settings),
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
        store = _store(settings)
        with file.open("rb") as handle:
            store.upload(settings.input_bucket, file.name, handle, _content_type(file))
        out.print(f"submitted {file} -> gs://{settings.input_bucket}/{file.name}")
        code = _wait_for(store, settings, [file.name], timeout)
        final = document_status(store, settings, file.name)
        if final.markdown_uri:
            markdown = store.read(settings.output_bucket, final.markdown_uri.split("/", 3)[3])
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
    deadline = time.monotonic() + timeout
    finals: dict[str, DocumentStatus] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        tasks = {n: progress.add_task(n, total=None, state="waiting") for n in names}
        while len(finals) < len(names) and time.monotonic() < deadline:
            for name in names:
                if name in finals:
                    continue
                current = document_status(store, settings, name)
                progress.update(
                    tasks[name],
                    total=current.page_count,
                    completed=current.done + current.failed,
                    state=current.state,
                )
                if current.finished_state:
                    finals[name] = current
            if len(finals) < len(names):
                time.sleep(0.5)
    failed = timed_out = False
    for name in names:
        final = finals.get(name)
        if final is None:
            err.print(Text(f"{name}: not finished after {timeout:.0f} s", style="yellow"))
            timed_out = True
            continue
        ok = final.state == "done" or (final.state == "partial" and allow_partial)
        failed = failed or not ok
        line = Text.assemble(f"{name}: ", views.state_text(final.state))
        line.append(f" in {views.duration(final.elapsed())}")
        if final.markdown_uri:
            line.append(f" -> {final.markdown_uri}")
        (out if ok else err).print(line)
        if final.error:
            err.print(Text(f"  rejected: {final.error.reason}: {final.error.message}"))
        for number, error in sorted(final.page_errors.items()):
            err.print(Text(f"  page {number}: {error.reason}: {error.message}"))
    if failed:
        return Exit.FAILED
    return Exit.TIMEOUT if timed_out else Exit.OK


def _content_type(path: Path) -> str:
    return {
        ".pdf": "application/pdf",
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".tif": "image/tiff",
        ".tiff": "image/tiff",
        ".webp": "image/webp",
    }.get(path.suffix.lower(), "application/octet-stream")


if __name__ == "__main__":
    sys.exit(app())
