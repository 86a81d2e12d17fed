"""The Python API: submit files, follow them to Markdown, read their results.

A thin, typed front door over the operations the CLI runs (:mod:`ocrpipe.operations`), for
a deployment or for the local stack::

    from ocrpipe import Client

    client = Client.local()  # the stack `ocrpipe up` runs in this folder
    names = client.submit(["scans/"], prefix="batch1/").names
    result = client.wait(names, on_progress=lambda b: print(b.pages_done, "pages done"))
    if result.ok:
        text = client.markdown(names[0])
        pages = client.document_json(names[0])["pages"]  # where each page is in text

:meth:`Client.from_env` reads the ``OCRPIPE_*`` variables instead (terraform's
``env_vars`` output) and talks to real GCS with application-default credentials.

Every failure is one of :mod:`ocrpipe.errors`: :class:`~ocrpipe.errors.NotReady` for a
result a document does not have (not finished, rejected, unknown: its ``reason`` says
which), :class:`~ocrpipe.errors.StackDown` when the local stack does not answer, and the
storage errors of the adapters. A wait never raises for how the documents ended: its
:class:`WaitResult` says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocrpipe import naming
from ocrpipe.emulators import emulator_down
from ocrpipe.errors import NotReady, StackDown
from ocrpipe.listing import DocumentObjects
from ocrpipe.operations import submit as uploads
from ocrpipe.operations.batch_status import (
    BatchStatus,
    batch_status,
    listing_prefix,
    verdict,
    wait_for_batch,
)
from ocrpipe.operations.get import find_documents
from ocrpipe.operations.status import DocumentStatus, Verdict, document_status
from ocrpipe.settings import LOCAL_ENV_FILE, Settings
from ocrpipe.storage import GcsStore, ObjectStore

__all__ = ["BatchStatus", "Client", "DocumentStatus", "Submission", "WaitResult"]


@dataclass(frozen=True)
class Submission:
    """What :meth:`Client.submit` did: ``names`` are the input names of every file
    submitted (uploaded, or already there with the same bytes): what to wait for;
    ``not_submitted`` the files that were meant to go and did not, each with why (a file
    that cannot be read, a name GCS refuses, an upload that failed). Hidden files and
    symbolic links inside folders are skipped by rule and not listed."""

    names: list[str]
    not_submitted: list[tuple[str, str]]

    @property
    def ok(self) -> bool:
        return not self.not_submitted


@dataclass(frozen=True)
class WaitResult:
    """How a wait ended: ``outcome`` is ``ok`` (every document done), ``failed`` (one
    failed, was rejected, or ended partial unless allowed), ``dead_lettered`` (the
    unfinished pages wait in the dead-letter topic: ``ocrpipe dlq replay``) or ``timeout``;
    ``status`` is the batch as last seen."""

    outcome: Verdict
    status: BatchStatus

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class Client:
    """Submit, wait for, and read documents of one deployment (or local stack)."""

    def __init__(self, settings: Settings, *, store: ObjectStore | None = None) -> None:
        """``store``: the object store to use (tests give an in-memory one); by default GCS,
        or the emulator the settings name."""
        self._settings = settings
        self._store = store or GcsStore.connect(settings.project, settings.storage_emulator_host)

    @classmethod
    def local(cls, folder: str | Path = ".") -> Client:
        """The local stack that ``ocrpipe up`` runs in ``folder``; :class:`StackDown` if
        none runs there."""
        env_file = Path(folder) / LOCAL_ENV_FILE
        if not env_file.exists():
            raise StackDown(
                f"no local stack in {Path(folder).resolve()} ({env_file} is missing): start one"
                " with `ocrpipe up` in that folder"
            )
        settings = Settings(_env_file=env_file)
        if (down := emulator_down(settings)) is not None:
            raise StackDown(f"{down} Start it again with `ocrpipe up` in {folder}.")
        return cls(settings)

    @classmethod
    def from_env(cls) -> Client:
        """The deployment the ``OCRPIPE_*`` variables describe."""
        return cls(Settings())

    @property
    def settings(self) -> Settings:
        return self._settings

    def submit(
        self, paths: Iterable[str | Path], *, prefix: str = "", force: bool = False
    ) -> Submission:
        """Upload files, and folders (walked recursively, hidden files and symbolic links
        skipped), as ``prefix`` + the file's name, or + its path inside the folder given. A
        file already in the input bucket with the same bytes is not uploaded again (unless
        ``force``). Every file is checked before the first upload, as ``ocrpipe submit``
        does; one that cannot go is reported, and the others are submitted."""
        collected = uploads.collect([Path(p) for p in paths], prefix)
        report = uploads.submit(
            self._store, self._settings.input_bucket, collected.files, force=force
        )
        problems = [(str(s.path), s.why) for s in collected.skipped if s.problem]
        problems += [(f.file.name, f.why) for f in report.failed]
        return Submission(list(report.names), problems)

    def status(self, name: str) -> DocumentStatus:
        """Where input ``name`` is: its state, pages done, failed, retrying, dead-lettered."""
        return document_status(self._store, self._settings, name)

    def batch(self, prefix: str) -> BatchStatus:
        """Every document under ``prefix``, summarised (states, pages, rate, failures)."""
        return batch_status(self._store, self._settings, prefix)

    def wait(
        self,
        names: Sequence[str] = (),
        *,
        prefix: str | None = None,
        timeout: float = 900.0,
        interval: float = 2.0,
        allow_partial: bool = False,
        on_progress: Callable[[BatchStatus], None] = lambda _: None,
    ) -> WaitResult:
        """Poll ``names`` (or every document under ``prefix``) every ``interval`` seconds,
        calling ``on_progress`` with each status, until they are finished, or their
        unfinished pages are all dead-lettered, or ``timeout`` seconds passed."""
        if not names and prefix is None:
            raise ValueError("wait for some names, or a prefix")
        chosen = list(names) or None
        shared = prefix if prefix is not None else listing_prefix(names)

        def poll() -> BatchStatus:
            if self._settings.uses_emulators and (down := emulator_down(self._settings)):
                raise StackDown(down)
            return batch_status(self._store, self._settings, shared, names=chosen)

        final, settled = wait_for_batch(
            poll, timeout=timeout, interval=interval, on_update=on_progress
        )
        return WaitResult(verdict(final, settled=settled, allow_partial=allow_partial), final)

    def markdown(self, name: str) -> str:
        """The Markdown of input ``name``'s newest finished generation (all pages, each
        after ``<!-- page N -->``); :class:`NotReady` if it has none."""
        doc = self._finished(name)
        return self._read(naming.document_markdown_name(doc)).decode()

    def document_json(self, name: str) -> dict[str, Any]:
        """``document.json`` of input ``name``'s newest finished generation: each page's
        state, byte range in the Markdown and provenance; :class:`NotReady` if none."""
        doc = self._finished(name)
        raw: dict[str, Any] = json.loads(self._read(naming.document_index_name(doc)))
        return raw

    def _finished(self, name: str) -> naming.DocumentRef:
        [document] = find_documents(self._store, self._settings, names=[name])
        doc = document.latest_finished(self._settings)
        if doc is None:
            raise _not_ready(document, self.status(name))
        return doc

    def _read(self, object_name: str) -> bytes:
        return self._store.read(self._settings.output_bucket, object_name)


def _not_ready(document: DocumentObjects, status: DocumentStatus) -> NotReady:
    if document.generation is None:
        return NotReady(f"{document.name}: no such document", reason="no_such_document")
    if status.error is not None:
        return NotReady(
            f"{document.name} was rejected: {status.error.reason}: {status.error.message}",
            reason="rejected",
        )
    return NotReady(f"{document.name} is not finished ({status.state})", reason="not_finished")
