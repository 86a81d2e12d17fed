"""The reconciler: nothing submitted is lost, however long the backlog or the outage.

Every hand-over in the pipeline is a message that can be lost for good: Pub/Sub drops an
unacknowledged page message after the subscription's retention
(``message_retention_seconds``), Eventarc drops a finalize event after 24 h of retries, and
a restarted local emulator forgets every message at once. The buckets keep what happened.
The reconciler reads them, for the current generation of every input under a prefix, and
puts back what can no longer arrive:

==========================================  ==================================================
found                                       done once presumed lost
==========================================  ==================================================
input with no manifest and no error.json    split it (:data:`SplitAgain`: in this process,
                                            or locally its finalize event again)
page without a result, inside a published   publish its message again, recorded as
range, published ``lost_after`` ago         ``republished-...`` in the work bucket (the
                                            image is rewritten in place first if it would
                                            expire before the new message can be replayed,
                                            and rendered again if it is gone)
page never published, split abandoned       split it again: the split publishes every page
                                            outside a published range
every page answered, document.md missing,   publish its last page again: the worker finds it
out of date or not announced                answered, assembles and announces the document
error.json that latest.json does not record announce the rejection
==========================================  ==================================================

"Presumed lost" is a matter of time: a page message is lost once its newest publish is
older than :attr:`Policy.lost_after_s` (default: the subscription's retention, after which
Pub/Sub has dropped it or dead-lettered it; a dead letter waits for ``ocrpipe dlq replay``
for the shorter dead-letter retention, so publishing it again early loses nothing and
duplicates nothing that the worker writes), a split once its newest sign of life is older
than :attr:`Policy.split_lost_after_s` (Eventarc's 24 h of retries and a margin). A restart
of the local stack and an operator who knows the messages are gone (a subscription seeked or
recreated) set both to zero. Duplicates are harmless: every page result is created once, and
a page whose result exists is not OCR'd again.

Work on a document happens under its split lease (:mod:`ocrpipe.splitter.split_lease`), so
the reconciler never publishes alongside a live split attempt nor another reconciler run;
the work bucket is listed again under the lease, so a page one run republished is not
republished by the next. :data:`DOCUMENTS_AT_ONCE` documents are worked on at a time (the
work is mostly waiting on GCS).

Why this is the splitter's: putting a page back is what the splitter does (render it, upload
its image, record it in the work bucket, publish its message) with the splitter's code,
records and grants, and the worker never publishes pages. Its callers: ``ocrpipe up
--data-dir`` on a restart (:mod:`ocrpipe.local.recovery`), ``ocrpipe reconcile`` and the
scheduled production job (``reconciler_job/``, terraform/reconciler.tf).

Cost of a run: one listing of the input and output buckets under the prefix
(:mod:`ocrpipe.listing`); reads only for documents where the listing cannot answer; a
listing of the work bucket only for unfinished documents old enough for something to be
lost. A finished, announced document costs nothing beyond the listings.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ocrpipe import announce, naming, notifications, records
from ocrpipe.assemble import DIGEST_KEY, assembly_stale
from ocrpipe.errors import BadInput, ObjectMissing, RetryableError
from ocrpipe.listing import DocumentObjects, scan_prefix
from ocrpipe.logs import log_context
from ocrpipe.messages import PageMessage
from ocrpipe.pubsub import OutgoingMessage, Publisher
from ocrpipe.settings import Settings
from ocrpipe.splitter import split_lease
from ocrpipe.splitter.split import LEASE_MARGIN_S, render_again, split_document
from ocrpipe.storage import ObjectInfo, ObjectStore
from ocrpipe.topology import Topology, load_topology

logger = logging.getLogger(__name__)

PUBLISH_BATCH = 100
DOCUMENTS_AT_ONCE = 8  # documents planned and put back at once (bench/backlog.py)
DAY_S = 86400
EVENTARC_RETRY_S = DAY_S  # Eventarc retries a failed event for 24 h, then drops it
SPLIT_LOST_MARGIN_S = 3600.0

# What to do with an input whose split must start or go on: returns what happened.
SplitAgain = Callable[[naming.DocumentRef], str]


@dataclass(frozen=True)
class Policy:
    """When the reconciler presumes a message lost."""

    lost_after_s: float  # a page message with no result, published this long ago
    split_lost_after_s: float  # a split with no sign of life (or an input never split)
    release_leases: bool = False  # every split attempt is known dead (a restarted stack)

    @classmethod
    def default(cls, topology: Topology | None = None) -> Policy:
        """Production's: what Pub/Sub and Eventarc have certainly given up on."""
        topology = topology or load_topology()
        return cls(
            lost_after_s=float(topology.message_retention_seconds),
            split_lost_after_s=EVENTARC_RETRY_S + SPLIT_LOST_MARGIN_S,
        )

    @classmethod
    def everything_lost(cls, *, release_leases: bool = False) -> Policy:
        """Every message is gone (a restarted emulator, a subscription seeked to now)."""
        return cls(lost_after_s=0.0, split_lost_after_s=0.0, release_leases=release_leases)


@dataclass(frozen=True)
class Repair:
    """What one document needs."""

    name: str
    doc: naming.DocumentRef
    page_count: int | None = None
    pages: tuple[int, ...] = ()  # published, unanswered, message presumed lost
    rerender: tuple[int, ...] = ()  # of ``pages``: image (and render failure record) gone
    refresh: tuple[str, ...] = ()  # images to rewrite in place: they expire too soon
    split: bool = False  # never split, or split unfinished and abandoned
    assemble: bool = False  # every page answered: have the worker assemble and announce
    rejection: notifications.DocumentNotification | None = None  # to announce
    # What the plan saw: the document's output objects and its split leases' numbers.
    seen: Mapping[str, ObjectInfo] = field(default_factory=dict, repr=False, compare=False)
    leases: tuple[int, ...] = field(default=(), repr=False, compare=False)

    @property
    def needed(self) -> bool:
        return bool(self.pages or self.split or self.assemble or self.rejection)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "generation": self.doc.generation,
            "doc_id": self.doc.doc_id,
            "page_count": self.page_count,
            "republish": list(self.pages),
            "render_again": list(self.rerender),
            "refresh_images": len(self.refresh),
            "split": self.split,
            "assemble": self.assemble,
            "announce_rejection": self.rejection is not None,
        }


@dataclass(frozen=True)
class Skipped:
    name: str
    why: str


@dataclass
class ReconcileReport:
    """What a run found and did; each document's part is merged in (:meth:`add`)."""

    documents: int = 0  # inputs looked at
    repairs: list[Repair] = field(default_factory=list)  # found (and done, unless a dry run)
    skipped: list[Skipped] = field(default_factory=list)  # found, left for the next run
    requeued_pages: int = 0  # page messages published (the assembling ones included)
    rendered: int = 0  # pages rendered again
    refreshed: int = 0  # images rewritten in place
    split: list[str] = field(default_factory=list)  # inputs split (again)
    announced: list[str] = field(default_factory=list)  # rejections announced
    dry_run: bool = False

    def add(self, other: ReconcileReport) -> None:
        self.repairs += other.repairs
        self.skipped += other.skipped
        self.requeued_pages += other.requeued_pages
        self.rendered += other.rendered
        self.refreshed += other.refreshed
        self.split += other.split
        self.announced += other.announced

    def as_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "documents": self.documents,
            "repairs": [r.as_dict() for r in self.repairs],
            "skipped": [{"name": s.name, "why": s.why} for s in self.skipped],
            "requeued_pages": self.requeued_pages,
            "rendered": self.rendered,
            "refreshed": self.refreshed,
            "split": self.split,
            "announced": self.announced,
        }


def reconcile(
    store: ObjectStore,
    publisher: Publisher,
    settings: Settings,
    *,
    prefix: str = "",
    policy: Policy | None = None,
    split_again: SplitAgain | None = None,
    dry_run: bool = False,
    now: Callable[[], float] = time.time,
) -> ReconcileReport:
    """Find what every input under ``prefix`` is missing and, unless ``dry_run``, put it
    back. ``split_again`` defaults to splitting in this process (:func:`split_here`)."""
    policy = policy or Policy.default()
    split_again = split_again or split_here(store, publisher, settings)
    # An input that is gone needs nothing: its pages are dropped as stale.
    documents = [d for d in scan_prefix(store, settings, prefix) if d.source is not None]

    def one(document: DocumentObjects) -> ReconcileReport:
        found = ReconcileReport(dry_run=dry_run)
        try:
            repair = plan(store, settings, document, policy, now())
        except RetryableError as exc:
            found.skipped.append(Skipped(document.name, exc.message))
            return found
        if repair is None or not repair.needed:
            return found
        found.repairs.append(repair)
        with log_context(doc_id=repair.doc.doc_id):
            logger.info(
                "%s %s: %s",
                "would put back" if dry_run else "putting back",
                repair.doc.uri,
                json.dumps(repair.as_dict()),
            )
            if not dry_run:
                _apply(repair, store, publisher, settings, policy, split_again, found, now)
        return found

    report = ReconcileReport(documents=len(documents), dry_run=dry_run)
    # Documents are independent and their work is mostly waiting on GCS: a few at a time.
    with ThreadPoolExecutor(DOCUMENTS_AT_ONCE, thread_name_prefix="reconcile") as pool:
        for found in pool.map(one, documents):
            report.add(found)
    return report


def plan(
    store: ObjectStore,
    settings: Settings,
    document: DocumentObjects,
    policy: Policy,
    now: float,
) -> Repair | None:
    """What the current generation of ``document`` needs (``None``: nothing). Reads only
    what the listing cannot answer; raises :class:`RetryableError` when a live split
    attempt holds the document's lease."""
    assert document.source is not None
    source = document.source
    doc = document.doc(settings, source.generation)
    objects = document.generations.get(source.generation, {})
    out = settings.output_bucket
    error = objects.get(naming.document_error_name(doc))
    if error is not None:
        return _rejected(store, settings, document, doc, error, policy, now)
    if naming.manifest_name(doc) not in objects:
        if source.updated <= now - policy.split_lost_after_s:
            return Repair(document.name, doc, split=True)
        return None
    manifest = objects[naming.manifest_name(doc)]
    if _finished_and_announced(document, doc, objects):
        return None
    if manifest.updated > now - min(policy.lost_after_s, policy.split_lost_after_s):
        return None  # every message about it is younger than it: none can be lost yet
    try:
        count = records.parse_manifest(store.read(out, manifest.name)).page_count
    except ObjectMissing:
        return None  # superseded and cleaned up meanwhile
    listed = [info for name, info in objects.items() if name.startswith(naming.pages_prefix(doc))]
    work_objects = store.list(settings.work_bucket, naming.work_prefix(doc.doc_id))
    return plan_pages(store, settings, doc, count, listed, objects, work_objects, policy, now)


def plan_pages(
    store: ObjectStore,
    settings: Settings,
    doc: naming.DocumentRef,
    count: int,
    results: Sequence[ObjectInfo],
    objects: Mapping[str, ObjectInfo],
    work_objects: Sequence[ObjectInfo],
    policy: Policy,
    now: float,
) -> Repair | None:
    """The pages of a planned document (``count`` pages; ``results``: its page objects;
    ``objects``: its output objects; ``work_objects``: its work bucket objects)."""
    work = naming.parse_work_listing([o.name for o in work_objects], doc.doc_id)
    if work.leases and not policy.release_leases:
        _check_no_live_lease(store, settings, doc, work, now)
    sent = naming.publish_times(((o.name, o.updated) for o in work_objects), doc.doc_id)
    prefix = naming.pages_prefix(doc)
    listing = naming.parse_page_listing([o.name for o in results], prefix)
    answered = listing.done | listing.failed
    missing = [n for n in range(1, count + 1) if n not in answered]
    lost_before = now - policy.lost_after_s
    manifest = objects[naming.manifest_name(doc)]
    if not missing:
        document = objects.get(naming.document_markdown_name(doc))
        newest = max((o.updated for o in results), default=manifest.updated)
        if max(sent.values(), default=newest) > lost_before:
            return None  # the message that lands the last result may still come
        if document is not None and not assembly_stale(document, results, prefix, count):
            state = notifications.terminal_state(count, len(listing.failed))
            digest = document.metadata.get(DIGEST_KEY)
            if announce.is_announced(doc, state, digest, store, settings):
                return None
        return Repair(doc.name, doc, count, assemble=True, seen=objects, leases=work.leases)
    lost = [n for n in missing if n in sent and sent[n] <= lost_before]
    unpublished = [n for n in missing if n not in sent]
    alive = max([manifest.updated, *sent.values()])
    split = bool(unpublished) and alive <= now - policy.split_lost_after_s
    images = {o.name: o for o in work_objects}
    rerender = tuple(n for n in lost if n not in work.images and n not in work.failed)
    refresh = tuple(
        work.images[n]
        for n in lost
        if n in work.images and _expires_too_soon(images[work.images[n]], now)
    )
    return Repair(
        doc.name, doc, count, tuple(lost), rerender, refresh, split=split, seen=objects,
        leases=work.leases,
    )  # fmt: skip


def _finished_and_announced(
    document: DocumentObjects, doc: naming.DocumentRef, objects: Mapping[str, ObjectInfo]
) -> bool:
    """The listing alone shows a finished document: document.md newer than every page
    result, and latest.json recording this generation since."""
    markdown = objects.get(naming.document_markdown_name(doc))
    if markdown is None:
        return False
    pages = naming.pages_prefix(doc)
    if any(o.updated > markdown.updated for n, o in objects.items() if n.startswith(pages)):
        return False
    return announce.announced_after(document.latest, doc, markdown)


def _rejected(
    store: ObjectStore,
    settings: Settings,
    document: DocumentObjects,
    doc: naming.DocumentRef,
    error: ObjectInfo,
    policy: Policy,
    now: float,
) -> Repair | None:
    if announce.announced_after(document.latest, doc, error):
        return None
    if error.updated > now - policy.split_lost_after_s:
        return None  # the split that wrote it announces it, or its retry does
    if announce.is_announced(doc, "failed", None, store, settings):
        return None
    try:
        reason = records.parse_error_reason(store.read(settings.output_bucket, error.name))
    except ObjectMissing:
        return None
    note = notifications.rejected(doc, settings.output_bucket, reason=reason)
    return Repair(doc.name, doc, rejection=note)


def _check_no_live_lease(
    store: ObjectStore,
    settings: Settings,
    doc: naming.DocumentRef,
    work: naming.WorkState,
    now: float,
) -> None:
    """Raise :class:`RetryableError` while a split attempt (or another run) holds the
    document: what it does would race what this run does."""
    expires = split_lease.lease_expiry(store, settings.work_bucket, doc.doc_id, work)
    if expires > now:
        raise RetryableError(
            f"a split attempt or another reconciler run holds it until {expires:.0f}",
            reason="split_in_progress",
        )


def _expires_too_soon(image: ObjectInfo, now: float) -> bool:
    """Whether the work bucket's lifecycle would delete ``image`` before a message published
    now could wait out both subscriptions and be replayed."""
    topology = load_topology()
    expires = image.updated + topology.page_image_retention_days * DAY_S
    return expires < now + topology.image_needed_seconds


def _apply(
    repair: Repair,
    store: ObjectStore,
    publisher: Publisher,
    settings: Settings,
    policy: Policy,
    split_again: SplitAgain,
    report: ReconcileReport,
    now: Callable[[], float],
) -> None:
    doc = repair.doc
    if repair.rejection is not None:
        announce.announce(repair.rejection, None, store, settings, publisher)
        report.announced.append(doc.name)
    if policy.release_leases and (repair.pages or repair.assemble or repair.split):
        _release_leases(store, settings, doc)
    if repair.pages or repair.assemble:
        _requeue(repair, store, publisher, settings, policy, report, now)
    if repair.split:
        outcome = split_again(doc)
        report.split.append(doc.name)
        logger.info("split %s again: %s", doc.uri, outcome)


def _requeue(
    repair: Repair,
    store: ObjectStore,
    publisher: Publisher,
    settings: Settings,
    policy: Policy,
    report: ReconcileReport,
    now: Callable[[], float],
) -> None:
    """Publish the lost pages again under the document's lease, planned again from a fresh
    listing of the work bucket (another run may have published them meanwhile)."""
    doc, work_bucket = repair.doc, settings.work_bucket
    assert repair.page_count is not None
    leases = () if policy.release_leases else repair.leases
    state = naming.WorkState({}, frozenset(), leases)
    ttl = settings.split_budget_s + settings.render_page_timeout_s + LEASE_MARGIN_S
    try:
        lease = split_lease.acquire_lease(
            store, work_bucket, doc.doc_id, state, now=now(), ttl_s=ttl
        )
    except RetryableError as exc:
        report.skipped.append(Skipped(doc.name, exc.message))
        return
    try:
        # Listed again under the lease: what another run published meanwhile is dated now.
        listed = store.list(work_bucket, naming.work_prefix(doc.doc_id))
        results = [
            o for name, o in repair.seen.items() if name.startswith(naming.pages_prefix(doc))
        ]
        fresh = plan_pages(
            store, settings, doc, repair.page_count, results, repair.seen, listed,
            Policy(policy.lost_after_s, policy.split_lost_after_s, release_leases=True), now(),
        )  # fmt: skip
        if fresh is not None and (fresh.pages or fresh.assemble):
            _publish_again(fresh, store, publisher, settings, listed, report, now)
    finally:
        store.delete(work_bucket, lease)


def _release_leases(store: ObjectStore, settings: Settings, doc: naming.DocumentRef) -> None:
    """Delete the document's split leases: the attempts that held them are known dead."""
    listed = store.list(settings.work_bucket, naming.work_prefix(doc.doc_id))
    for number in naming.parse_work_listing([o.name for o in listed], doc.doc_id).leases:
        store.delete(settings.work_bucket, naming.lease_name(doc.doc_id, number))


def _publish_again(
    repair: Repair,
    store: ObjectStore,
    publisher: Publisher,
    settings: Settings,
    listed: Sequence[ObjectInfo],
    report: ReconcileReport,
    now: Callable[[], float],
) -> None:
    doc, count, work_bucket = repair.doc, repair.page_count, settings.work_bucket
    assert count is not None
    work = naming.parse_work_listing([o.name for o in listed], doc.doc_id)
    for image in repair.refresh:
        info = next(o for o in listed if o.name == image)
        if store.rewrite_in_place(work_bucket, image, info.generation) is not None:
            report.refreshed += 1
    rendered: dict[int, OutgoingMessage] = {}
    if repair.rerender:
        try:
            messages = render_again(doc, repair.rerender, count, store, settings)
        except BadInput as exc:
            report.skipped.append(Skipped(doc.name, f"cannot render it again: {exc.message}"))
            return
        rendered = dict(zip(repair.rerender, messages, strict=True))
        report.rendered += len(rendered)
    pages = repair.pages or (count,)
    batch: list[tuple[int, OutgoingMessage]] = []
    for page in pages:
        message = rendered.get(page) or _message(store, settings, doc, page, count, work)
        batch.append((page, message))
        if len(batch) == PUBLISH_BATCH:
            _publish_batch(publisher, store, settings, doc, batch, now)
            report.requeued_pages += len(batch)
            batch = []
    if batch:
        _publish_batch(publisher, store, settings, doc, batch, now)
        report.requeued_pages += len(batch)


def _message(
    store: ObjectStore,
    settings: Settings,
    doc: naming.DocumentRef,
    page: int,
    count: int,
    work: naming.WorkState,
) -> OutgoingMessage:
    """The message the splitter published for ``page``, rebuilt from the work bucket. A page
    with neither image nor render failure record (only when every page is answered: the
    message only makes the worker assemble) names the image the splitter would have made."""
    if (record := work.failed.get(page)) is not None:
        reason, text = records.parse_render_failure(store.read(settings.work_bucket, record))
        message = PageMessage.failed_render(doc, page, count, reason, text)
    else:
        image = work.images.get(page) or naming.page_image_name(doc.doc_id, page, "png")
        message = PageMessage.for_image(doc, page, count, settings.work_bucket, image)
    return OutgoingMessage(message.encode(), message.attributes())


def _publish_batch(
    publisher: Publisher,
    store: ObjectStore,
    settings: Settings,
    doc: naming.DocumentRef,
    batch: Sequence[tuple[int, OutgoingMessage]],
    now: Callable[[], float],
) -> None:
    """Publish, then date it: the marker names the first and last page of the batch, and
    only those pages are in it when the batch is contiguous; otherwise one marker a page."""
    publisher.publish_all(settings.pages_topic, [m for _, m in batch])
    stamp = int(now() * 1000)
    for first, last in _runs(page for page, _ in batch):
        marker = naming.republished_marker_name(doc.doc_id, first, last, stamp)
        store.create(settings.work_bucket, marker, b"", "text/plain")


def _runs(pages: Iterable[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    runs: list[list[int]] = []
    for page in pages:
        if runs and page == runs[-1][1] + 1:
            runs[-1][1] = page
        else:
            runs.append([page, page])
    return [(a, b) for a, b in runs]


def split_here(store: ObjectStore, publisher: Publisher, settings: Settings) -> SplitAgain:
    """Split an input in this process, as the splitter would, attempt after attempt until
    it is done (a Cloud Run job has no 540 s limit to stop for); a live attempt elsewhere
    (its lease) leaves it to that attempt."""

    def split(doc: naming.DocumentRef) -> str:
        while True:
            try:
                outcome = split_document(doc, store, publisher, settings)
            except RetryableError as exc:
                if exc.reason == "split_budget_spent":
                    continue
                return f"left to the attempt in progress ({exc.message})"
            return outcome.state

    return split
