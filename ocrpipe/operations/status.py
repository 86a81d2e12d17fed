"""A document's status, derived from what is in the buckets.

Nothing keeps a shared manifest up to date per page (GCS allows about one write per second
to one object name): status is read from the objects each step writes once. For an input
name, the current generation is the input object's; if the input is gone, the newest
generation with output.

    state           meaning
    splitting       the input exists, no page plan yet
    running         pages planned, not all accounted for
    done            document.md written, no page failed
    partial         document.md written, some pages failed
    failed          every page failed
    rejected        the input was rejected as a whole (error.json: not a PDF, encrypted,
                    ...); retrying cannot help, replacing the file can
    stale_assembly  every page is accounted for, but document.md was built from other
                    page results (the worker stopped before rebuilding it):
                    ``ocrpipe retry --failed-only`` makes the worker rebuild it

A page without a result is *queued* (pending), or, when its last delivery failed (its
newest attempt record, :mod:`ocrpipe.records`), *retrying* (Pub/Sub delivers it again after
a backoff) or *dead-lettered* (that was its last delivery: it waits in the dead-letter
topic for ``ocrpipe dlq replay``). A running document whose every pending page is
dead-lettered is *stuck*: waiting cannot finish it, a replay can. Nothing written for the
document for longer than the ack deadline (a page is answered, failed or redelivered within
it) means nothing is moving: :meth:`DocumentStatus.quiet_for` tells how long.

``assembly_stale`` is true whenever document.md exists and was not built from the current
page results (also while retried pages are still running).

Deliveries the worker refused or could not read are counted by
:func:`invalid_messages` (``_invalid-messages/`` in the output bucket).

Times are the objects' ``updated`` times: ``started`` is the input's upload, ``finished``
the newest output object of a finished document.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ocrpipe import naming, records
from ocrpipe.assemble import assembly_stale
from ocrpipe.errors import ObjectMissing
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectInfo, ObjectStore
from ocrpipe.topology import load_topology

T = TypeVar("T")

FINISHED_STATES = frozenset({"done", "partial", "failed", "rejected"})
# Nothing written for this long while unfinished: nothing is moving. A page under OCR is
# answered, failed (an attempt record) or redelivered within the ack deadline.
STALL_AFTER_S = float(load_topology().ack_deadline_seconds)


@dataclass(frozen=True)
class PageError:
    reason: str
    message: str


@dataclass(frozen=True)
class PageTrouble:
    """A page without a result whose last delivery failed."""

    page: int
    state: Literal["retrying", "dead_lettered"]
    delivery: int | None  # the delivery that failed last
    max_deliveries: int | None  # deliveries before the dead-letter topic
    reason: str
    message: str
    since: float  # when that delivery failed (seconds since the epoch)

    def as_dict(self) -> dict[str, Any]:
        return vars(self).copy()


def page_troubles(
    objects: Iterable[ObjectInfo], attempts_prefix: str, finished: Collection[int]
) -> dict[int, PageTrouble]:
    """Page -> its trouble, for the pages not in ``finished`` whose newest attempt record
    under ``attempts_prefix`` is a failed delivery (a newer retry or replay queues it again).
    """
    newest: dict[int, tuple[int, ObjectInfo]] = {}
    for info in objects:
        found = naming.parse_attempt_name(info.name, attempts_prefix)
        if found is None or found.page in finished:
            continue
        if found.page not in newest or found.time_ns > newest[found.page][0]:
            newest[found.page] = (found.time_ns, info)
    troubles: dict[int, PageTrouble] = {}
    for page, (_, info) in sorted(newest.items()):
        attempt = records.parse_attempt(info.metadata)
        if attempt is None or attempt.kind != records.FAILED_DELIVERY:
            continue
        troubles[page] = PageTrouble(
            page=page,
            state="dead_lettered" if attempt.dead_lettered else "retrying",
            delivery=attempt.delivery,
            max_deliveries=attempt.max_deliveries,
            reason=attempt.reason,
            message=attempt.message,
            since=attempt.created or info.updated,
        )
    return troubles


@dataclass(frozen=True)
class DocumentStatus:
    name: str
    generation: int | None
    state: str  # see the module docstring, or "unknown"
    doc_id: str = ""
    page_count: int | None = None
    done: int = 0
    failed: int = 0
    error: PageError | None = None  # the input was rejected as a whole
    page_errors: dict[int, PageError] = field(default_factory=dict)
    markdown_uri: str | None = None
    started: float | None = None
    finished: float | None = None
    assembly_stale: bool = False
    troubles: dict[int, PageTrouble] = field(default_factory=dict)  # pending pages only
    last_change: float | None = None  # the newest object of this generation, or the upload

    @property
    def pending(self) -> int:
        return max(0, (self.page_count or 0) - self.done - self.failed)

    @property
    def finished_state(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def retrying(self) -> int:
        return sum(1 for t in self.troubles.values() if t.state == "retrying")

    @property
    def dead_lettered(self) -> int:
        return sum(1 for t in self.troubles.values() if t.state == "dead_lettered")

    @property
    def stuck(self) -> bool:
        """Running, and every pending page is in the dead-letter topic."""
        return self.state == "running" and self.pending > 0 and self.dead_lettered == self.pending

    @property
    def settled(self) -> bool:
        """Nothing more will happen without the operator: finished, or stuck."""
        return self.finished_state or self.stuck

    def quiet_for(self, now: float | None = None) -> float | None:
        """Seconds since anything was written for this document (None: finished)."""
        if self.finished_state or self.last_change is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_change)

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds from upload to the last output (or to ``now`` while unfinished)."""
        if self.started is None:
            return None
        if self.finished is not None:
            return max(0.0, self.finished - self.started)
        return max(0.0, (time.time() if now is None else now) - self.started)

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "generation": self.generation,
            "doc_id": self.doc_id or None,
            "state": self.state,
            "page_count": self.page_count,
            "done": self.done,
            "failed": self.failed,
            "pending": self.pending,
            "retrying": self.retrying,
            "dead_lettered": self.dead_lettered,
            "error": vars(self.error) if self.error else None,
            "page_errors": {str(n): vars(e) for n, e in sorted(self.page_errors.items())},
            "page_troubles": {str(n): t.as_dict() for n, t in sorted(self.troubles.items())},
            "quiet_s": _round(self.quiet_for(now)),
            "markdown": self.markdown_uri,
            "assembly_stale": self.assembly_stale,
            "started": self.started,
            "finished": self.finished,
            "elapsed_s": _round(self.elapsed(now)),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def derive_state(
    *,
    input_exists: bool,
    has_error: bool,
    has_manifest: bool,
    has_document: bool,
    done: int,
    failed: int,
    page_count: int | None = None,
    assembly_stale: bool = False,
) -> str:
    if has_error:
        return "rejected"
    if has_document and assembly_stale:
        complete = page_count is not None and done + failed >= page_count
        return "stale_assembly" if complete else "running"
    if has_document:
        if failed and not done:
            return "failed"
        return "partial" if failed else "done"
    if has_manifest:
        return "running"
    return "splitting" if input_exists else "unknown"


def document_status(store: ObjectStore, settings: Settings, name: str) -> DocumentStatus:
    prefix = naming.document_prefix(name)
    objects = store.list(settings.output_bucket, prefix)
    by_generation: dict[int, list[ObjectInfo]] = {}
    for info in objects:
        found_generation = naming.generation_from_prefix(info.name[len(prefix) :])
        if found_generation is not None:
            by_generation.setdefault(found_generation, []).append(info)
    source = store.stat(settings.input_bucket, name)
    if source is not None:
        generation = source.generation
    elif by_generation:
        generation = max(by_generation)
    else:
        return DocumentStatus(name, None, "unknown")

    doc = naming.DocumentRef(settings.input_bucket, name, generation)
    found = {info.name: info for info in by_generation.get(generation, [])}
    pages_prefix = naming.pages_prefix(doc)
    listing = naming.parse_page_listing(list(found), pages_prefix)
    manifest_name = naming.manifest_name(doc)
    page_count = None
    if manifest_name in found:
        page_count = records.parse_manifest(_read(store, settings, manifest_name)).page_count
    error = None
    if naming.document_error_name(doc) in found:
        error = parse_error(_read(store, settings, naming.document_error_name(doc)))
    page_errors = {
        n: parse_error(_read(store, settings, naming.page_error_name(doc, n)))
        for n in sorted(listing.failed)
    }
    document = found.get(naming.document_markdown_name(doc))
    stale = page_count is not None and assembly_stale(
        document, found.values(), pages_prefix, page_count
    )
    state = derive_state(
        input_exists=source is not None,
        has_error=error is not None,
        has_manifest=page_count is not None,
        has_document=document is not None,
        done=len(listing.done),
        failed=len(listing.failed),
        page_count=page_count,
        assembly_stale=stale,
    )
    times = [info.updated for info in found.values()]
    troubles = page_troubles(
        found.values(), naming.attempts_prefix(doc), listing.done | listing.failed
    )
    uploaded = [source.updated] if source is not None else []
    return DocumentStatus(
        name=name,
        generation=generation,
        state=state,
        doc_id=doc.doc_id,
        page_count=page_count,
        done=len(listing.done),
        failed=len(listing.failed),
        error=error,
        page_errors=page_errors,
        markdown_uri=(
            naming.object_uri(settings.output_bucket, document.name)
            if document is not None
            else None
        ),
        started=source.updated if source is not None else (min(times) if times else None),
        finished=(max(times) if state in FINISHED_STATES and times else None),
        assembly_stale=stale,
        troubles=troubles,
        last_change=max(times + uploaded) if times or uploaded else None,
    )


def recent_documents(store: ObjectStore, settings: Settings, limit: int = 20) -> list[str]:
    """Input names, newest first (from the input bucket)."""
    inputs = sorted(store.list(settings.input_bucket, ""), key=lambda i: i.updated, reverse=True)
    return [info.name for info in inputs[:limit]]


@dataclass(frozen=True)
class InvalidMessage:
    """A delivery the worker refused (a message the splitter did not write) or could not
    read, acknowledged and kept under ``_invalid-messages/``."""

    uri: str
    reason: str
    message: str
    doc_id: str = ""
    page: int | None = None
    created: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass(frozen=True)
class InvalidMessages:
    count: int
    newest: tuple[InvalidMessage, ...]  # at most the limit asked for, newest first


def invalid_messages(store: ObjectStore, settings: Settings, limit: int = 20) -> InvalidMessages:
    """How many deliveries were refused or unreadable, and the newest ``limit`` of them."""
    bucket = settings.output_bucket
    found = store.list(bucket, naming.INVALID_MESSAGES_PREFIX)
    newest = sorted(found, key=lambda i: i.name, reverse=True)[:limit]
    kept = []
    for info in newest:
        try:
            raw = json.loads(store.read(bucket, info.name))
        except (ObjectMissing, ValueError):
            raw = None
        if not isinstance(raw, dict):
            raw = {"reason": "unknown", "message": "the record cannot be read"}
        page = raw.get("page")
        kept.append(
            InvalidMessage(
                uri=naming.object_uri(bucket, info.name),
                reason=str(raw.get("reason", "unknown")),
                message=str(raw.get("message", "")),
                doc_id=str(raw.get("doc_id", "")),
                page=page if isinstance(page, int) else None,
                created=info.updated or None,
            )
        )
    return InvalidMessages(len(found), tuple(kept))


def parse_error(data: bytes) -> PageError:
    """The reason and message of an error record (``unknown`` where it cannot be read)."""
    try:
        raw = json.loads(data)
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        return PageError("unknown", "the error record cannot be read")
    return PageError(str(raw.get("reason", "unknown")), str(raw.get("message", "")))


def _read(store: ObjectStore, settings: Settings, name: str) -> bytes:
    try:
        return store.read(settings.output_bucket, name)
    except ObjectMissing:
        return b"{}"


def wait_for_documents(
    poll: Callable[[str], DocumentStatus],
    names: Sequence[str],
    *,
    timeout: float,
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_update: Callable[[DocumentStatus], None] = lambda _: None,
) -> dict[str, DocumentStatus]:
    """Poll each of ``names`` until it is settled (finished, or stuck in the dead-letter
    topic) or ``timeout`` seconds passed. Returns the final status of those that settled;
    the others timed out."""
    finals: dict[str, DocumentStatus] = {}

    def poll_unfinished() -> dict[str, DocumentStatus]:
        for name in names:
            if name not in finals:
                current = poll(name)
                on_update(current)
                if current.settled:
                    finals[name] = current
        return finals

    def all_finished(finals: dict[str, DocumentStatus]) -> bool:
        return len(finals) == len(names)

    poll_until(
        poll_unfinished, all_finished, timeout=timeout, interval=interval, clock=clock, sleep=sleep
    )
    return finals


def poll_until(
    poll: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    interval: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[T, bool]:
    """Call ``poll`` (at least once) every ``interval`` seconds until ``done`` holds for its
    answer or ``timeout`` seconds passed, the last wait cut short at the deadline. Returns
    the last answer and whether it was done."""
    deadline = clock() + timeout
    while True:
        answer = poll()
        if done(answer):
            return answer, True
        left = deadline - clock()
        if left <= 0:
            return answer, False
        sleep(min(interval, left))


Verdict = Literal["ok", "failed", "dead_lettered", "timeout"]


def documents_verdict(
    names: Sequence[str], finals: Mapping[str, DocumentStatus], *, allow_partial: bool = False
) -> Verdict:
    """``timeout`` if a document did not settle in time, whatever else happened (the user
    must know the wait was cut short); else ``dead_lettered`` if one is stuck with pages in
    the dead-letter topic; else ``failed`` if one was rejected or failed (or ended partial,
    unless ``allow_partial``); else ``ok``."""
    if not all(name in finals for name in names):
        return "timeout"
    if any(final.stuck for final in finals.values()):
        return "dead_lettered"
    return "failed" if any(is_bad(f.state, allow_partial) for f in finals.values()) else "ok"


def is_bad(state: str, allow_partial: bool) -> bool:
    """A finished state that is a failure for ``wait`` (partial only unless allowed)."""
    return state in ("failed", "rejected") or (state == "partial" and not allow_partial)
