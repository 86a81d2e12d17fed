"""``ocrpipe``: run the local stack, submit files, follow them to Markdown.

Settings come from the environment (``OCRPIPE_*``, see :mod:`ocrpipe.settings`); with
``--local`` they come from the file ``ocrpipe up`` writes, so a second shell can talk to a
running local stack.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ocrpipe.settings import Settings
from ocrpipe.status import DocumentStatus, document_status, recent_documents
from ocrpipe.storage import GcsStore

LOCAL_ENV_FILE = Path(".ocrpipe/local.env")

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
out = Console()
err = Console(stderr=True)

LocalOpt = Annotated[
    bool, typer.Option("--local", help=f"Use the running local stack ({LOCAL_ENV_FILE}).")
]


def load_settings(local: bool) -> Settings:
    if not local:
        return Settings()
    if not LOCAL_ENV_FILE.exists():
        err.print(
            f"[red]No local stack found ({LOCAL_ENV_FILE} is missing).[/] Start one with"
            " `ocrpipe up` in this folder."
        )
        raise typer.Exit(2)
    return Settings(_env_file=LOCAL_ENV_FILE)


def _store(settings: Settings) -> GcsStore:
    return GcsStore.connect(settings.project, settings.storage_emulator_host)


@app.command()
def up(
    pubsub_port: int = 8085,
    gcs_port: int = 4443,
    ocr_port: int = 8000,
    worker_port: int = 8080,
    splitter_port: int = 8081,
    eventarc_port: int = 8082,
    ocr_url: Annotated[
        str | None, typer.Option(help="Use this vLLM server instead of the local engine.")
    ] = None,
) -> None:
    """Run the whole pipeline on this machine until Ctrl-C."""
    from ocrpipe.local.stack import LocalStack, Ports, StackError, settings_env

    stack = LocalStack(
        ports=Ports(pubsub_port, gcs_port, ocr_port, worker_port, splitter_port, eventarc_port),
        ocr_url=ocr_url,
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with out.status("starting the local stack") as status:
            stack.start(progress=lambda part: status.update(f"starting {part}"))
        LOCAL_ENV_FILE.parent.mkdir(exist_ok=True)
        LOCAL_ENV_FILE.write_text(
            "".join(f"{k}={v}\n" for k, v in settings_env(stack.settings).items())
        )
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
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        out.print("stopping")
    finally:
        stack.stop()
        LOCAL_ENV_FILE.unlink(missing_ok=True)


@app.command()
def submit(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False)],
    prefix: Annotated[str, typer.Option(help="Name prefix inside the input bucket.")] = "",
    wait_: Annotated[bool, typer.Option("--wait", help="Wait for the Markdown.")] = False,
    timeout: float = 900.0,
    local: LocalOpt = False,
) -> None:
    """Upload files to the input bucket; each becomes a document named like the file."""
    settings = load_settings(local)
    store = _store(settings)
    names = []
    for path in files:
        name = f"{prefix}{path.name}"
        with path.open("rb") as handle:
            generation = store.upload(settings.input_bucket, name, handle, _content_type(path))
        out.print(f"submitted gs://{settings.input_bucket}/{name} (generation {generation})")
        names.append(name)
    if wait_:
        raise typer.Exit(_wait_for(store, settings, names, timeout))


@app.command()
def status(
    name: Annotated[
        str | None, typer.Argument(help="Input name; omit to list recent ones.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    local: LocalOpt = False,
) -> None:
    """Show a document's state, or a table of recent documents."""
    settings = load_settings(local)
    store = _store(settings)
    names = [name] if name else recent_documents(store, settings)
    statuses = [document_status(store, settings, n) for n in names]
    if as_json:
        out.print_json(
            json.dumps([_as_dict(s) for s in statuses] if not name else _as_dict(statuses[0]))
        )
    else:
        _print_table(statuses)
    if name and statuses[0].state == "unknown":
        raise typer.Exit(1)


@app.command()
def wait(
    names: Annotated[list[str], typer.Argument(help="Input names.")],
    timeout: float = 900.0,
    local: LocalOpt = False,
) -> None:
    """Show progress until each document's Markdown exists; exit 1 if one failed or timed out."""
    settings = load_settings(local)
    raise typer.Exit(_wait_for(_store(settings), settings, names, timeout))


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
    except StackError as exc:
        err.print(f"[red]{exc}[/]")
        code = 1
    finally:
        stack.stop()
    raise typer.Exit(code)


def _wait_for(store: GcsStore, settings: Settings, names: list[str], timeout: float) -> int:
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
            time.sleep(0.5)
    code = 0
    for name in names:
        final = finals.get(name)
        if final is None:
            err.print(f"[yellow]{name}: not finished after {timeout:.0f} s[/]")
            code = 1
        elif final.state == "failed":
            why = final.error or final.page_errors
            err.print(f"[red]{name}: failed[/] {why}")
            code = 1
        else:
            out.print(f"{name}: {final.state} -> {final.markdown_uri}")
    return code


def _print_table(statuses: list[DocumentStatus]) -> None:
    table = Table("name", "state", "pages", "done", "failed", "pending", "markdown / error")
    for s in statuses:
        detail = s.markdown_uri or (f"{s.error['reason']}: {s.error['message']}" if s.error else "")
        table.add_row(
            s.name,
            s.state,
            str(s.page_count or "-"),
            str(s.done),
            str(s.failed),
            str(s.pending),
            detail,
        )
    out.print(table)


def _as_dict(s: DocumentStatus) -> dict[str, object]:
    return {
        "name": s.name,
        "generation": s.generation,
        "doc_id": s.doc_id,
        "state": s.state,
        "page_count": s.page_count,
        "done": s.done,
        "failed": s.failed,
        "pending": s.pending,
        "error": s.error,
        "page_errors": s.page_errors,
        "markdown": s.markdown_uri,
        "started": s.started,
        "finished": s.finished,
    }


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
