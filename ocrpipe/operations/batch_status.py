"""The status of a batch: every document under an input prefix, summarised.

It costs two listings, whatever the number of documents: one of the input bucket under the
prefix (every input and its current generation, including the ones not split yet) and one
of the output bucket under the prefix's key (every manifest, page, document and error
object). GCS lists 1000 objects per call, so a batch of D documents of P pages costs about
``ceil(D / 1000) + ceil(D * (P + 2) / 1000)`` list calls. Objects are then read only where
the listing cannot answer, in parallel threads:

* the manifest of a document that is still running (its page count; a finished document's
  pages are all accounted for in the listing);
* the error record of a rejected document and of every failed page (the failure table).

States are :func:`ocrpipe.operations.status.derive_state`'s, computed for the current generation the
way :func:`ocrpipe.operations.status.document_status` picks it (the input's, else the newest with
output). The rate counts page objects (Markdown or error record) whose ``updated`` time is
in the last ``window_s`` seconds; the ETA divides the pages still to do (but those in the
dead-letter topic) by it. Retrying and dead-lettered pages come from the attempt records in
the same listing (their metadata), so they cost no read either; so does the time anything
was last written for the batch, which tells a batch that stalled.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ocrpipe import naming, records
from ocrpipe.errors import ObjectMissing
from ocrpipe.listing import DocumentObjects, scan_prefix
from ocrpipe.operations.status import (
    FINISHED_STATES,
    STALL_AFTER_S,
    PageError,
    PageTrouble,
    Verdict,
    derive_state,
    is_bad,
    page_troubles,
    parse_error,
    poll_until,
)
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore

RATE_WINDOW_S = 300.0
READ_THREADS = 16


@dataclass(frozen=True)
class Failure:
    name: str
    page: int | None  # None: the input was rejected as a whole
    reason: str
    message: str


@dataclass(frozen=True)
class PageInTrouble:
    """A page of the batch that is retrying or dead-lettered."""

    name: str
    trouble: PageTrouble

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.trouble.as_dict()}


@dataclass(frozen=True)
class DocumentSummary:
    name: str
    generation: int | None
    state: str
    page_count: int | None
    done: int
    failed: int
    retrying: int = 0
    dead_lettered: int = 0

    @property
    def pending(self) -> int:
        return max(0, (self.page_count or 0) - self.done - self.failed)

    @property
    def stuck(self) -> bool:
        """Running, and every pending page is in the dead-letter topic."""
        return self.state == "running" and self.pending > 0 and self.dead_lettered == self.pending


@dataclass(frozen=True)
class BatchStatus:
    prefix: str
    now: float
    documents: tuple[DocumentSummary, ...]
    failures: tuple[Failure, ...]
    recent_pages: int  # pages finished (Markdown or error record) in the last window_s
    window_s: float
    started: float | None  # the earliest upload of the batch
    states: Mapping[str, int] = field(default_factory=dict)
    troubles: tuple[PageInTrouble, ...] = ()
    last_change: float | None = None  # the newest object of the batch, or upload

    @property
    def finished(self) -> bool:
        return all(d.state in FINISHED_STATES for d in self.documents)

    @property
    def stuck(self) -> bool:
        """Not finished, and every unfinished document waits on the dead-letter topic."""
        unfinished = [d for d in self.documents if d.state not in FINISHED_STATES]
        return bool(unfinished) and all(d.stuck for d in unfinished)

    @property
    def settled(self) -> bool:
        """Nothing more will happen without the operator: finished, or stuck."""
        return self.finished or self.stuck

    @property
    def pages_retrying(self) -> int:
        return sum(d.retrying for d in self.documents)

    @property
    def pages_dead_lettered(self) -> int:
        return sum(d.dead_lettered for d in self.documents)

    @property
    def quiet_s(self) -> float | None:
        """Seconds since anything was written for the batch (None: settled)."""
        if self.settled or self.last_change is None:
            return None
        return max(0.0, self.now - self.last_change)

    @property
    def stalled(self) -> bool:
        """Unsettled, and nothing written for longer than a page can take."""
        quiet = self.quiet_s
        return quiet is not None and quiet >= STALL_AFTER_S

    @property
    def pages_done(self) -> int:
        return sum(d.done for d in self.documents)

    @property
    def pages_failed(self) -> int:
        return sum(d.failed for d in self.documents)

    @property
    def pages_known(self) -> int:
        """Pages of the documents split so far."""
        return sum(d.page_count or 0 for d in self.documents)

    @property
    def not_split(self) -> int:
        return sum(1 for d in self.documents if d.state == "splitting")

    @property
    def pages_remaining(self) -> float:
        """Pages still to do; a document not split yet counts as the average document."""
        split = [d.page_count for d in self.documents if d.page_count]
        average = sum(split) / len(split) if split else 0.0
        pending = sum(d.pending - d.dead_lettered for d in self.documents if d.state == "running")
        return pending + self.not_split * average

    @property
    def rate_span_s(self) -> float:
        """The time the rate is measured over: the window, or since the first upload."""
        if self.started is None:
            return 0.0
        return max(0.0, min(self.window_s, self.now - self.started))

    @property
    def rate_per_s(self) -> float | None:
        """Pages per second over the last window (or since the batch started, if later)."""
        span = self.rate_span_s
        return self.recent_pages / span if span > 0 else None

    @property
    def eta_s(self) -> float | None:
        if self.finished:
            return 0.0
        rate = self.rate_per_s
        remaining = self.pages_remaining
        if not rate or not remaining:
            return None
        return remaining / rate

    def as_dict(self) -> dict[str, Any]:
        rate = self.rate_per_s
        eta = self.eta_s
        return {
            "prefix": self.prefix,
            "documents": len(self.documents),
            "states": dict(sorted(self.states.items())),
            "finished": self.finished,
            "pages": {
                "done": self.pages_done,
                "failed": self.pages_failed,
                "known": self.pages_known,
                "remaining_estimate": round(self.pages_remaining, 1),
            },
            "not_split": self.not_split,
            "rate_pages_per_min": None if rate is None else round(rate * 60, 1),
            "rate_window_s": self.window_s,
            "eta_s": None if eta is None else round(eta, 1),
            "pages_retrying": self.pages_retrying,
            "pages_dead_lettered": self.pages_dead_lettered,
            "stuck": self.stuck,
            "quiet_s": None if self.quiet_s is None else round(self.quiet_s, 1),
            "stalled": self.stalled,
            "failures": [vars(f) for f in self.failures],
            "troubles": [t.as_dict() for t in self.troubles],
            "by_document": [{**vars(d), "pending": d.pending} for d in self.documents],
        }


def batch_status(
    store: ObjectStore,
    settings: Settings,
    prefix: str,
    *,
    names: Collection[str] | None = None,
    now: float | None = None,
    window_s: float = RATE_WINDOW_S,
    threads: int = READ_THREADS,
) -> BatchStatus:
    """The status of every document under ``prefix`` (or only ``names``)."""
    now = time.time() if now is None else now
    scanned = scan_prefix(store, settings, prefix, names)
    plans = [_plan(settings, d) for d in scanned]
    to_read = [n for p in plans for n in (p.manifest_to_read, p.error_to_read, *p.page_errors)]
    contents = _read_all(store, settings.output_bucket, [n for n in to_read if n], threads)

    summaries = []
    failures = []
    troubles = []
    recent = 0
    for plan in plans:
        summary, found = _summarise(plan, contents)
        summaries.append(summary)
        failures.extend(found)
        troubles += [PageInTrouble(plan.name, t) for t in plan.troubles.values()]
        recent += sum(1 for t in plan.page_times if t >= now - window_s)
    uploads = [d.source.updated for d in scanned if d.source is not None and d.source.updated]
    changes = uploads + [p.last_change for p in plans if p.last_change is not None]
    return BatchStatus(
        prefix=prefix,
        now=now,
        documents=tuple(summaries),
        failures=tuple(failures),
        recent_pages=recent,
        window_s=window_s,
        started=min(uploads) if uploads else None,
        states=Counter(s.state for s in summaries),
        troubles=tuple(troubles),
        last_change=max(changes) if changes else None,
    )


@dataclass(frozen=True)
class _Plan:
    """One document's current generation as the listing shows it, and what to read."""

    name: str
    generation: int | None
    input_exists: bool
    done: frozenset[int] = frozenset()
    failed: frozenset[int] = frozenset()
    has_document: bool = False
    manifest_to_read: str = ""
    error_to_read: str = ""
    page_errors: Mapping[str, int] = field(default_factory=dict)  # object name -> page
    page_times: tuple[float, ...] = ()
    troubles: Mapping[int, PageTrouble] = field(default_factory=dict)
    last_change: float | None = None


def _plan(settings: Settings, scanned: DocumentObjects) -> _Plan:
    generation = scanned.generation
    if generation is None:
        return _Plan(scanned.name, None, scanned.source is not None)
    doc = scanned.doc(settings, generation)
    found = scanned.generations.get(generation, {})
    pages_prefix = naming.pages_prefix(doc)
    listing = naming.parse_page_listing(list(found), pages_prefix)
    has_document = naming.document_markdown_name(doc) in found
    has_error = naming.document_error_name(doc) in found
    has_manifest = naming.manifest_name(doc) in found
    return _Plan(
        name=scanned.name,
        generation=generation,
        input_exists=scanned.source is not None,
        done=listing.done,
        failed=listing.failed,
        has_document=has_document,
        # A finished document's pages are all in the listing: its manifest is not needed.
        manifest_to_read=(
            naming.manifest_name(doc) if has_manifest and not has_document and not has_error else ""
        ),
        error_to_read=naming.document_error_name(doc) if has_error else "",
        page_errors={naming.page_error_name(doc, n): n for n in sorted(listing.failed)},
        page_times=tuple(
            info.updated for name, info in found.items() if name.startswith(pages_prefix)
        ),
        troubles=page_troubles(
            found.values(), naming.attempts_prefix(doc), listing.done | listing.failed
        ),
        last_change=max((info.updated for info in found.values()), default=None),
    )


def _summarise(plan: _Plan, contents: Mapping[str, bytes]) -> tuple[DocumentSummary, list[Failure]]:
    failures: list[Failure] = []
    page_count: int | None = None
    if plan.has_document:
        page_count = len(plan.done) + len(plan.failed)
    elif plan.manifest_to_read:
        page_count = _page_count(contents.get(plan.manifest_to_read))
    error: PageError | None = None
    if plan.error_to_read:
        error = parse_error(contents.get(plan.error_to_read, b"{}"))
        failures.append(Failure(plan.name, None, error.reason, error.message))
    for object_name, page in plan.page_errors.items():
        page_error = parse_error(contents.get(object_name, b"{}"))
        failures.append(Failure(plan.name, page, page_error.reason, page_error.message))
    state = derive_state(
        input_exists=plan.input_exists,
        has_error=error is not None,
        has_manifest=bool(plan.manifest_to_read) or plan.has_document,
        has_document=plan.has_document,
        done=len(plan.done),
        failed=len(plan.failed),
    )
    summary = DocumentSummary(
        plan.name,
        plan.generation,
        state,
        page_count,
        len(plan.done),
        len(plan.failed),
        retrying=sum(1 for t in plan.troubles.values() if t.state == "retrying"),
        dead_lettered=sum(1 for t in plan.troubles.values() if t.state == "dead_lettered"),
    )
    return summary, failures


def _page_count(data: bytes | None) -> int | None:
    if data is None:
        return None
    try:
        return records.parse_manifest(data).page_count
    except (ValueError, KeyError, TypeError):
        return None


def _read_all(
    store: ObjectStore, bucket: str, object_names: list[str], threads: int
) -> dict[str, bytes]:
    """Read the objects in parallel; one deleted meanwhile is left out."""

    def read(name: str) -> tuple[str, bytes | None]:
        try:
            return name, store.read(bucket, name)
        except ObjectMissing:
            return name, None

    if not object_names:
        return {}
    with ThreadPoolExecutor(max_workers=min(threads, len(object_names))) as pool:
        return {name: data for name, data in pool.map(read, object_names) if data is not None}


# --- waiting ------------------------------------------------------------------------------


def verdict(status: BatchStatus, *, settled: bool, allow_partial: bool = False) -> Verdict:
    """``failed`` if nothing is under the prefix; else ``timeout`` if the batch did not
    settle in time, whatever else happened; else ``dead_lettered`` if it is stuck with pages
    in the dead-letter topic; else ``failed`` if a document was rejected or failed (or ended
    partial, unless ``allow_partial``); else ``ok``. As for single documents."""
    if not status.documents:
        return "failed"
    if not settled:
        return "timeout"
    if status.stuck:
        return "dead_lettered"
    return "failed" if any(is_bad(d.state, allow_partial) for d in status.documents) else "ok"


def wait_for_batch(
    poll: Callable[[], BatchStatus],
    *,
    timeout: float,
    interval: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_update: Callable[[BatchStatus], None] = lambda _: None,
) -> tuple[BatchStatus, bool]:
    """Poll until the batch settles (every document finished, or the unfinished ones stuck
    in the dead-letter topic) or ``timeout`` seconds passed.

    Returns the last status and whether the batch settled. An empty batch ends at once
    (nothing will appear by waiting: the inputs are listed first).
    """

    def poll_and_show() -> BatchStatus:
        current = poll()
        on_update(current)
        return current

    def settled(current: BatchStatus) -> bool:
        return current.settled or not current.documents

    final, done = poll_until(
        poll_and_show, settled, timeout=timeout, interval=interval, clock=clock, sleep=sleep
    )
    return final, done and bool(final.documents)


def listing_prefix(names: Collection[str]) -> str:
    """The longest prefix shared by ``names``: one listing covers them all."""
    return os.path.commonprefix(sorted(names)) if names else ""
