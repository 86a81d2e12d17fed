"""The follow command: each document's notification as it lands on the documents topic."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.text import Text

from ocrpipe.cli.common import (
    LOCAL_OWNER_ENV_FILE,
    Exit,
    JsonOpt,
    cloud_errors,
    err,
    load_settings,
    out,
)
from ocrpipe.errors import AccessDenied
from ocrpipe.notifications import DocumentNotification
from ocrpipe.operations import views
from ocrpipe.operations.follow import Follower, follow, new_subscription_name
from ocrpipe.operations.pull import PubSubPullSubscription

DENIED_HINT = (
    "You may not create a subscription on the documents topic. Give --subscription NAME:"
    " one the project's owner created on it and granted you roles/pubsub.subscriber on"
    " (docs/OPERATIONS.md, 'Told when a document is done'). On the local stack, give"
    " --local: it runs as the project's owner (identity `owner`, settings in"
    f" {LOCAL_OWNER_ENV_FILE})."
)


def follow_documents(
    subscription: Annotated[
        str | None,
        typer.Option(
            help="Read this existing subscription of the documents topic (kept). Default: make"
            " one for this run and delete it at the end."
        ),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Only documents whose name starts so.")] = "",
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many documents.")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    as_json: JsonOpt = False,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help=f"Follow the running local stack as its project owner ({LOCAL_OWNER_ENV_FILE}).",
        ),
    ] = False,
) -> None:
    """Print each document as it reaches its end (done, partial, failed), from the
    documents topic: one line per document, or with --json its notification, one JSON
    object per line. Only what is published after it starts is seen (or, with
    --subscription, what that subscription holds). Each document is shown once (Pub/Sub
    may deliver twice). Runs until Ctrl-C, --count documents or --timeout seconds.

    Without --subscription it makes a subscription of its own, which needs the right to
    create one (the project's owner, or Pub/Sub Editor); locally, --local runs as the
    stack's `owner`. Exit 0 when stopped, 3 if --timeout came before --count documents,
    1 if Pub/Sub refused."""
    settings = load_settings(local, LOCAL_OWNER_ENV_FILE)
    project, host = settings.project, settings.pubsub_emulator_host
    with cloud_errors():
        if subscription is not None:
            pulled = PubSubPullSubscription.connect(project, subscription, host)
        else:
            name = new_subscription_name()
            try:
                pulled = PubSubPullSubscription.create(
                    project, name, settings.documents_topic, host
                )
            except AccessDenied as exc:
                err.print(views.printable(exc), style="red", markup=False, highlight=False)
                err.print(DENIED_HINT, style="red", markup=False)
                raise typer.Exit(Exit.FAILED) from None
        try:
            where = views.printable(f"{settings.documents_topic} through {pulled.name}")
            err.print(Text(f"following {where} (Ctrl-C stops)", style="dim"))
            follower = Follower(pulled, prefix)
            show = _print_json if as_json else _print_line
            try:
                complete = follow(follower, show, count=count, timeout=timeout)
            except KeyboardInterrupt:
                complete = True
            if follower.unreadable:
                err.print(f"{follower.unreadable} message(s) were not document notifications")
        finally:
            if subscription is None:
                pulled.delete()
            pulled.close()
    raise typer.Exit(Exit.OK if complete or count is None else Exit.TIMEOUT)


def _print_line(note: DocumentNotification) -> None:
    result = note.outputs.document_md or note.outputs.error or note.outputs.folder
    line = Text.assemble(views.state_text(note.state), " ", views.printable(note.source_name))
    line.append(f"  {note.pages_done}/{note.page_count} pages")
    if note.reason:
        line.append(views.printable(f"  {note.reason}"))
    line.append(views.printable(f"  {result}"))
    out.print(line)


def _print_json(note: DocumentNotification) -> None:
    """One line per notification, exact once parsed (see :func:`views.print_json`)."""
    text = json.dumps(note.model_dump(mode="json"), ensure_ascii=False)
    out.print(views.json_text(text), soft_wrap=True)
