"""The commands that run the local stack: up, demo and iam-report."""

from __future__ import annotations

import signal
from contextlib import suppress
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from ocrpipe import naming
from ocrpipe.cli.common import (
    CLOUD,
    LOCAL_OWNER_ENV_FILE,
    LOCAL_USAGE_FILE,
    RECONCILER_ENV_FILE,
    Exit,
    JsonOpt,
    LocalOpt,
    err,
    load_settings,
    out,
    usage_error,
)
from ocrpipe.cli.waiting import wait_for
from ocrpipe.operations import submit as uploads
from ocrpipe.operations import views
from ocrpipe.operations.status import document_status
from ocrpipe.settings import LOCAL_ENV_FILE


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM stops ``ocrpipe up`` and ``ocrpipe demo`` the way Ctrl-C does: the stack
    shuts down in order."""
    raise KeyboardInterrupt


def up(
    pubsub_port: int = 8085,
    gcs_port: int = 4443,
    ocr_port: int = 8000,
    worker_port: int = 8080,
    splitter_port: int = 8081,
    eventarc_port: int = 8082,
    proxies_port: Annotated[
        int,
        typer.Option(help="First of 2 per identity (14) consecutive ports for the IAM proxies."),
    ] = 8090,
    ocr_url: Annotated[
        str | None, typer.Option(help="Use this vLLM server instead of the local engine.")
    ] = None,
    ocr_model: Annotated[
        str | None,
        typer.Option(
            help="The model the worker asks for (default: OCRPIPE_OCR_MODEL, or"
            " ocrpipe/models.json's default). A model that writes figure boxes, such as"
            " lightonai/LightOnOCR-2-1B-bbox, gets its figures as files; the local engine"
            " stands in for it."
        ),
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

    Pages reach the worker as many at a time as the OCR server can serve: two per thread
    of the local CPU engine (`OCRPIPE_LOCAL_ENGINE_THREADS`, default one per two CPUs), or,
    with `--ocr-url` (a real GPU), `OCRPIPE_OCR_MAX_IN_FLIGHT`; set
    `OCRPIPE_LOCAL_DELIVERY_MAX_IN_FLIGHT` to choose. A part that exits (the worker, the
    splitter, the engine, ...) is started again and said so; only an emulator exiting, or
    a part that cannot start again, stops the stack. With `--data-dir` the buckets are kept
    on disk; Pub/Sub messages are not, so on start whatever is unfinished is queued again."""
    from ocrpipe.local.stack import LocalStack, Ports, Restart, StackError, settings_env

    stack = LocalStack(
        ports=Ports(
            pubsub_port, gcs_port, ocr_port, worker_port, splitter_port, eventarc_port,
            proxies_port,
        ),
        ocr_url=ocr_url,
        overrides={"ocr_model": ocr_model} if ocr_model else {},
        iam=iam,
        data_dir=data_dir.resolve() if data_dir else None,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with out.status("starting the local stack") as status:
            stack.start(progress=lambda part: status.update(f"starting {part}"))
        LOCAL_ENV_FILE.parent.mkdir(exist_ok=True)
        for path, identity in (
            (LOCAL_ENV_FILE, "operator"),
            (LOCAL_OWNER_ENV_FILE, "owner"),
            (RECONCILER_ENV_FILE, "reconciler"),
        ):
            env = settings_env(stack.settings_for(identity))
            path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        if iam:
            LOCAL_USAGE_FILE.write_text("".join(f"{path}\n" for path in stack.usage_files))
        out.print(f"[green]Local stack is up.[/] Logs: {stack.log_dir}")
        settings = stack.settings
        figures = " (figure boxes: each figure becomes a file)" if settings.ocr_figure_boxes else ""
        out.print(f"OCR model: {settings.ocr_model}{figures}", markup=False)
        if stack.recovery is not None:
            recovery = stack.recovery
            out.print(
                f"Buckets in {data_dir}: re-queued {recovery.requeued_pages} pages and"
                f" {len(recovery.split)} unsplit inputs, announced"
                f" {len(recovery.announced)} rejected inputs.",
                markup=False,
            )
        else:
            out.print(
                "Buckets are in memory: results vanish when the stack stops. To keep them,"
                " and have unfinished documents queued again on the next start, run"
                " `ocrpipe up --data-dir ./ocrpipe-data`.",
                markup=False,
            )
        out.print(
            f"In another shell, in this folder: [bold]ocrpipe submit --local FILE --wait[/]"
            f"  (settings in {LOCAL_ENV_FILE}); [bold]ocrpipe follow --local[/] prints each"
            " document as it is done. Ctrl-C stops everything."
        )

        def restarted(restart: Restart) -> None:
            err.print(
                f"{restart.name} exited with {restart.returncode}: started it again"
                f" (restart {restart.count}; its log: {restart.log})",
                style="yellow",
                markup=False,
            )

        stack.watch(on_restart=restarted)  # until an emulator exits (StackError) or Ctrl-C
    except StackError as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(Exit.FAILED) from None
    except KeyboardInterrupt:
        out.print("stopping")
    finally:
        stack.stop()
        if stack.restarts:
            counts = ", ".join(f"{name} {n}" for name, n in sorted(stack.restarts.items()))
            out.print(f"parts started again while the stack ran: {counts}", markup=False)
        LOCAL_ENV_FILE.unlink(missing_ok=True)
        LOCAL_OWNER_ENV_FILE.unlink(missing_ok=True)
        RECONCILER_ENV_FILE.unlink(missing_ok=True)
        LOCAL_USAGE_FILE.unlink(missing_ok=True)
        if iam and stack.log_dir is not None:
            with suppress(Exception):  # a report is a courtesy; never mask why we stopped
                _print_iam_report(stack.iam_usage())


def iam_report(as_json: JsonOpt = False, local: LocalOpt = False) -> None:
    """Per identity of the running local stack: the permissions its calls used, those it
    is granted but never used (candidates for removal), and the calls that were refused.
    Exit 1 if a call was refused."""
    from ocrpipe.local.iam.policy import Authorizer, usage_report
    from ocrpipe.local.stack import read_decisions

    if not local:
        usage_error("Only the local stack records what is used: give --local.")
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
                out.print(Text(views.printable(f"  {title}: {line}"), style=style))
        if not any(parts.values()):
            out.print("  (no grants, no calls)")


def demo(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)] = Path(
        "examples/sample.pdf"
    ),
    timeout: float = 600.0,
) -> None:
    """Start the local stack on free ports, push FILE through it, print its Markdown, stop.
    (It runs its own stack, beside any `ocrpipe up`, whatever ports are taken.)"""
    from ocrpipe.local.stack import LocalStack, StackError, free_ports

    stack = LocalStack(ports=free_ports())
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with out.status("starting the local stack") as spinner:
            stack.start(progress=lambda part: spinner.update(f"starting {part}"))
        settings = stack.settings
        store = CLOUD.store(settings)
        with file.open("rb") as handle:
            store.upload(settings.input_bucket, file.name, handle, _content_type(file))
        uri = naming.object_uri(settings.input_bucket, file.name)
        out.print(Text(views.printable(f"submitted {file} -> {uri}")))
        code = wait_for(store, settings, [file.name], timeout)
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
                    line = views.printable(f"IAM refused {identity}: {refused}")
                    err.print(Text(line, style="red"))
    except StackError as exc:
        err.print(str(exc), style="red", markup=False)
        code = Exit.FAILED
    finally:
        stack.stop()
    raise typer.Exit(code)


def _content_type(path: Path) -> str:
    return uploads.content_type(path)
