"""What every command shares: settings, clients, consoles, exit codes and options."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from ocrpipe.emulators import emulator_down
from ocrpipe.errors import OcrpipeError, StackDown
from ocrpipe.operations.pull import PubSubPullSubscription, PullSubscription
from ocrpipe.operations.views import printable
from ocrpipe.pubsub import Publisher, PubSubPublisher
from ocrpipe.settings import LOCAL_ENV_FILE, Settings
from ocrpipe.storage import GcsStore, ObjectStore

LOCAL_OWNER_ENV_FILE = Path(".ocrpipe/owner.env")  # the project owner's (``follow --local``)
# The reconciler's (`ocrpipe reconcile --local`), as an operator impersonates the reconciler's
# service account in production.
RECONCILER_ENV_FILE = Path(".ocrpipe/reconciler.env")
LOCAL_USAGE_FILE = Path(".ocrpipe/iam-usage.txt")  # where the running stack records decisions


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    TIMEOUT = 3


out = Console(soft_wrap=True)  # never break a URI across lines in scripts
err = Console(stderr=True, soft_wrap=True)

NO_DOCUMENTS = "Name at least one document, or give --prefix."


def usage_error(message: str) -> NoReturn:
    """The command was called wrongly: ``message`` in red (control characters in names
    shown, not obeyed), exit 2."""
    err.print(Text(printable(message), style="red"))
    raise typer.Exit(Exit.USAGE)


def split_sources(sources: list[str]) -> tuple[list[str], list[Path]]:
    """A command's sources: its ``gs://`` URIs and its local paths, each of which must exist
    (else a usage error naming those that do not)."""
    uris = [s for s in sources if s.startswith("gs://")]
    paths = [Path(s) for s in sources if not s.startswith("gs://")]
    if missing := [str(p) for p in paths if not p.exists()]:
        usage_error(f"No such file or folder: {', '.join(missing)}")
    return uris, paths


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


def load_settings(local: bool, env_file: Path = LOCAL_ENV_FILE) -> Settings:
    """The environment's settings, or with ``local`` those ``ocrpipe up`` wrote to
    ``env_file`` (the operator's, unless a command acts as another identity)."""
    if local and not env_file.exists():
        err.print(
            f"[red]No local stack found ({env_file} is missing).[/] Start one with"
            " `ocrpipe up` in this folder."
        )
        raise typer.Exit(Exit.USAGE)
    try:
        settings = Settings(_env_file=env_file) if local else Settings()
    except ValidationError as exc:
        err.print("The settings (OCRPIPE_* variables) are not valid:", style="red")
        err.print(printable(exc), markup=False, highlight=False)
        raise typer.Exit(Exit.USAGE) from None
    if local and (down := emulator_down(settings)) is not None:
        err.print(f"{down} {_START_AGAIN}", style="red", markup=False, highlight=False)
        raise typer.Exit(Exit.FAILED)
    return settings


_START_AGAIN = (
    "Start it with `ocrpipe up` in this folder (its .ocrpipe/ is from a stack that stopped)."
)


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
        err.print(printable(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(Exit.FAILED) from None


def stack_alive(settings: Settings) -> None:
    """Between polls of a wait: a local stack that went away ends it with one line, at
    once (see :func:`emulator_down`)."""
    if settings.uses_emulators and (down := emulator_down(settings)) is not None:
        raise StackDown(f"{down} {_START_AGAIN}")


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
