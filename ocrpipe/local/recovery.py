"""After a restart of a local stack whose buckets are on disk (``ocrpipe up --data-dir``):
put back what the Pub/Sub emulator forgot, so that nothing submitted is lost.

The buckets survive a restart (fake-gcs-server's filesystem backend); the emulator's
messages do not: finalize notifications not yet split and page messages not yet answered
are gone. :func:`recover_unfinished` reads the buckets and re-queues exactly what is
missing, for the current generation of every input:

* no ``manifest.json`` and no ``error.json``: the split never got far, so the input's
  finalize event is sent again (the splitter starts it, or resumes it idempotently);
* a manifest and no current ``document.md``: every page with neither Markdown nor an error
  record is published again, from its page image (or its render failure record) in the
  work bucket. A page with neither (the split stopped before rendering it) means the split
  is unfinished: the finalize event is sent again, and the resumed split publishes every
  page outside a ``published`` range itself, so the recovery publishes only the pages
  inside one (their messages were lost). The split leases of these documents are released
  first: the attempts that held them stopped with the stack. A document whose pages all
  have a result but whose ``document.md`` is missing or out of date, or whose
  ``@latest.json`` does not record it (the stack stopped between assembly and
  announcement), gets its last page published again: the worker finds it answered, and its
  completion check assembles and announces the document;
* an ``error.json`` (the input was rejected) that ``@latest.json`` does not record: the
  rejection is announced, as the splitter would have.

Duplicates are harmless (a page published twice is written once); every step is what
``ocrpipe retry --failed-only`` (:mod:`ocrpipe.operations.retry`) and a redelivered finalize event
do anyway. The stack runs this acting for itself, on the raw emulators.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from ocrpipe import announce, naming, notifications, records
from ocrpipe.assemble import DIGEST_KEY, assembly_stale
from ocrpipe.errors import ObjectMissing
from ocrpipe.messages import PageMessage
from ocrpipe.pubsub import OutgoingMessage, Publisher, publish_batched
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectInfo, ObjectStore


@dataclass(frozen=True)
class DocumentRecovery:
    """What one unfinished input needs."""

    name: str
    refinalize: bool  # send its finalize event again
    messages: tuple[PageMessage, ...]  # pages to publish again
    leases: tuple[str, ...] = ()  # split leases to release (work bucket)
    rejection: notifications.DocumentNotification | None = None  # to announce


@dataclass(frozen=True)
class RecoveryReport:
    refinalized: tuple[str, ...]
    requeued_pages: int


def plan_document(
    store: ObjectStore, settings: Settings, name: str, generation: int
) -> DocumentRecovery | None:
    """What ``name`` (at ``generation``) needs, or ``None`` if it is finished."""
    doc = naming.DocumentRef(settings.input_bucket, name, generation)
    out = settings.output_bucket
    try:
        error = store.read(out, naming.document_error_name(doc))
    except ObjectMissing:
        pass
    else:
        if announce.is_announced(doc, "failed", None, store, settings):
            return None
        reason = records.parse_error_reason(error)
        note = notifications.rejected(doc, out, reason=reason)
        return DocumentRecovery(name, refinalize=False, messages=(), rejection=note)
    work_names = [o.name for o in store.list(settings.work_bucket, naming.work_prefix(doc.doc_id))]
    work = naming.parse_work_listing(work_names, doc.doc_id)
    leases = tuple(naming.lease_name(doc.doc_id, number) for number in work.leases)
    try:
        manifest = records.parse_manifest(store.read(out, naming.manifest_name(doc)))
    except ObjectMissing:
        return DocumentRecovery(name, refinalize=True, messages=(), leases=leases)
    prefix = naming.pages_prefix(doc)
    listed = store.list(out, prefix)
    listing = naming.parse_page_listing([o.name for o in listed], prefix)
    count = manifest.page_count
    document = store.stat(out, naming.document_markdown_name(doc))
    answered = set(listing.done) | set(listing.failed)
    missing = [n for n in range(1, count + 1) if n not in answered]
    if not missing:
        failed = len(listing.failed)
        current = document is not None and not assembly_stale(document, listed, prefix, count)
        if current and document and _announced(store, settings, doc, document, count, failed):
            return None
        missing = [count]  # only to make the worker assemble (and announce) the document
    found = {n: m for n in missing if (m := _page_message(store, settings, doc, n, count, work))}
    if len(found) == len(missing):
        return DocumentRecovery(name, refinalize=False, messages=tuple(found.values()))
    # The resumed split publishes every page outside a published range: only the others.
    messages = tuple(m for n, m in found.items() if n in work.published)
    return DocumentRecovery(name, refinalize=True, messages=messages, leases=leases)


def _announced(
    store: ObjectStore,
    settings: Settings,
    doc: naming.DocumentRef,
    document: ObjectInfo,
    count: int,
    failed: int,
) -> bool:
    """Whether @latest.json records the assembled ``document`` (or something newer)."""
    state = notifications.terminal_state(count, failed)
    _, latest = announce.read_latest(store, settings.output_bucket, doc.name)
    return not announce.moves_forward(latest, doc, state, document.metadata.get(DIGEST_KEY))


def recover_unfinished(
    store: ObjectStore,
    publisher: Publisher,
    settings: Settings,
    refinalize: Callable[[str], None],
) -> RecoveryReport:
    """Re-queue what every unfinished input of the input bucket is missing."""
    plans = [
        plan
        for info in store.list(settings.input_bucket, "")
        if (plan := plan_document(store, settings, info.name, info.generation)) is not None
    ]
    messages = [m for plan in plans for m in plan.messages]
    for plan in plans:
        for lease in plan.leases:
            store.delete(settings.work_bucket, lease)
    published = _publish(publisher, settings, messages)
    for plan in plans:
        if plan.rejection is not None:
            announce.announce(plan.rejection, None, store, settings, publisher)
    refinalized = tuple(plan.name for plan in plans if plan.refinalize)
    for name in refinalized:
        refinalize(name)
    return RecoveryReport(refinalized, published)


def _page_message(
    store: ObjectStore,
    settings: Settings,
    doc: naming.DocumentRef,
    page: int,
    count: int,
    work: naming.WorkState,
) -> PageMessage | None:
    """The message the splitter published for ``page``, rebuilt from the work bucket."""
    if (image := work.images.get(page)) is not None:
        return PageMessage.for_image(doc, page, count, settings.work_bucket, image)
    if (record := work.failed.get(page)) is not None:
        reason, message = records.parse_render_failure(store.read(settings.work_bucket, record))
        return PageMessage.failed_render(doc, page, count, reason, message)
    return None


def _publish(publisher: Publisher, settings: Settings, messages: Iterable[PageMessage]) -> int:
    pages = [OutgoingMessage(m.encode(), m.attributes()) for m in messages]
    return publish_batched(publisher, settings.pages_topic, pages)


def notification_sender(
    publisher: Publisher, storage_url: str, bucket: str, topic: str
) -> Callable[[str], None]:
    """Sends an input's finalize notification again, as fake-gcs-server published it (the
    object's JSON resource as data, the notification attributes)."""

    def send(name: str) -> None:
        url = f"{storage_url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
        resource = httpx.get(url, timeout=30).raise_for_status().json()
        attributes = {
            "eventType": "OBJECT_FINALIZE",
            "bucketId": bucket,
            "objectId": name,
            "objectGeneration": str(resource["generation"]),
            "payloadFormat": "JSON_API_V1",
        }
        data = json.dumps(resource).encode()
        publisher.publish_all(topic, [OutgoingMessage(data, attributes)])

    return send
