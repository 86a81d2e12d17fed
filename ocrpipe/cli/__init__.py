"""`ocrpipe`: run the local stack, submit files, follow them to Markdown, and operate the
pipeline (dead letters, retries).

Settings come from the environment (`OCRPIPE_*` variables, see ocrpipe/settings.py); with
`--local` they come from the file `ocrpipe up` writes, so a second shell can talk to a
running local stack.

Exit codes of every command:

* 0: success.
* 1: a document failed or was rejected (for `wait`: or ended partial, unless
  `--allow-partial`, or waits on pages in the dead-letter topic) or is unknown, nothing is
  under `--prefix`, `submit` could not submit a file, `get` found a document without
  Markdown (or could not write one), `report` found no finished document (or an unknown
  name), a retry was refused, a replay could not publish, `reconcile` could not put a
  document back now, Google Cloud answered with an error, or the local stack is down (one
  line says which part).
* 2: usage or configuration error (bad arguments or settings, no credentials).
* 3: `wait` or `submit --wait` timed out before every document finished, whatever else
  happened (it says "timed out"); `follow --count` timed out before that many documents.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ocrpipe.cli import dead_letters, documents, follow, local_stack, plan, reconcile, report
from ocrpipe.cli.common import Clients, Exit

__all__ = ["Clients", "Exit", "app"]

app = typer.Typer(
    help=__doc__, no_args_is_help=True, add_completion=False, rich_markup_mode="markdown"
)


def _version(asked: bool) -> None:
    if asked:
        import ocrpipe

        typer.echo(f"ocrpipe {ocrpipe.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """The options before any command."""


app.command()(local_stack.up)
app.command("iam-report")(local_stack.iam_report)
app.command()(documents.submit)
app.command()(documents.status)
app.command()(documents.wait)
app.command()(documents.retry)
dlq_app = typer.Typer(
    help="The dead-letter subscription: pages that kept failing.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
dlq_app.command("list")(dead_letters.dlq_list)
dlq_app.command("replay")(dead_letters.dlq_replay)
app.add_typer(dlq_app, name="dlq")
app.command()(local_stack.demo)
app.command()(documents.get)
app.command()(report.report)
app.command("follow")(follow.follow_documents)
app.command("reconcile")(reconcile.reconcile_command)
app.command()(plan.plan)
