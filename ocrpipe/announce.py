"""Telling the world a document is finished: its notification on the documents topic, and
``<key>/@latest.json``, the one name per input that always says where its newest finished
result is. Used by the worker (an assembled document) and the splitter (a rejected input).

At least once, with latest.json as the outbox marker: the notification is published first,
then latest.json is advanced. A writer that dies (or whose publish fails, which nacks its
delivery or fails its event) between the two leaves latest.json behind, so the retry finds
the document not yet recorded and announces it again. Duplicates are possible; losses are
not.

latest.json only moves forward, by preconditions rather than timing: it is read (its object
generation ``G_obj`` and the input generation ``g_old`` it records) and written only if the
new input generation is ``>= g_old`` (the same generation only with another digest or
state), with ``if_generation_match=G_obj`` (0 while absent). A writer that loses the race
reads again and decides again. An older generation that finishes after a newer one is still
announced (subscribers keep the newest ``source_generation`` per input), but never moves
latest.json back.

Within a generation, digests have no order: what makes an announcement the newer one is that
it describes the ``document.md`` that is current. So the worker passes ``is_current`` (does
document.md still carry this digest?), and an announcement is published only if it holds
just before the publish, and recorded only if it holds between reading latest.json and the
conditional write. Two instances racing (one announcing a document built before a retried
page landed, one announcing the rebuilt document) then end with latest.json describing the
current document.md: the stale writer either sees the new document.md before it writes, or
its write lands first and the other's conditional write replaces it. A publish that was in
flight while document.md changed reports :attr:`Outcome.SUPERSEDED`: the caller announces
the current document again, so the last notification on the topic is always the current
one (a duplicate at worst).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from ocrpipe import naming, records
from ocrpipe.errors import ObjectMissing, RetryableError
from ocrpipe.naming import DocumentRef
from ocrpipe.notifications import DocumentNotification
from ocrpipe.pubsub import OutgoingMessage, Publisher
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectInfo, ObjectStore

logger = logging.getLogger(__name__)

LATEST_ROUNDS = 8  # lost races on latest.json before giving up (and retrying)
# latest.json's custom metadata: the input generation it records, so that a listing says
# whether a finished document is announced without reading each record (the reconciler).
RECORDED_GENERATION_KEY = "ocrpipe-recorded-generation"


class Outcome(enum.Enum):
    """What :func:`announce` did."""

    RECORDED = "recorded"  # published; latest.json records it (or something newer)
    STALE = "stale"  # document.md changed before the publish: nothing was said
    SUPERSEDED = "superseded"  # published, then document.md changed: announce the current one


def read_latest(store: ObjectStore, bucket: str, name: str) -> tuple[int, records.Latest | None]:
    """latest.json of input ``name``: (its object generation, 0 when absent; what it says,
    None when absent or unreadable)."""
    latest_name = naming.latest_name(name)
    info = store.stat(bucket, latest_name)
    if info is None:
        return 0, None
    try:
        data = store.read(bucket, latest_name)
    except ObjectMissing:
        return info.generation, None  # deleted meanwhile: the write's precondition decides
    return info.generation, records.parse_latest(data)


def records_document(
    latest: records.Latest | None, doc: DocumentRef, state: str, digest: str | None
) -> bool:
    """Whether ``latest`` already records this generation in this state and digest."""
    return (
        latest is not None
        and latest.generation == doc.generation
        and latest.state == state
        and latest.pages_digest == digest
    )


def moves_forward(
    latest: records.Latest | None, doc: DocumentRef, state: str, digest: str | None
) -> bool:
    """Whether recording ``doc`` in ``state`` would move latest.json forward."""
    if latest is None:
        return True
    if doc.generation != latest.generation:
        return doc.generation > latest.generation
    return not records_document(latest, doc, state, digest)


def announced_after(latest: ObjectInfo | None, doc: DocumentRef, result: ObjectInfo) -> bool:
    """Whether the listing alone shows ``doc`` announced: latest.json (``latest``, as
    listed) records its generation and was written after ``result`` (its document.md or
    error.json) was. False means "read latest.json to know" (:func:`is_announced`)."""
    return (
        latest is not None
        and latest.metadata.get(RECORDED_GENERATION_KEY) == str(doc.generation)
        and latest.updated >= result.updated
    )


def is_announced(
    doc: DocumentRef, state: str, digest: str | None, store: ObjectStore, settings: Settings
) -> bool:
    """Whether latest.json records ``doc`` in ``state`` with ``digest`` (nothing to do)."""
    _, latest = read_latest(store, settings.output_bucket, doc.name)
    return records_document(latest, doc, state, digest)


def announce(
    note: DocumentNotification,
    digest: str | None,
    store: ObjectStore,
    settings: Settings,
    publisher: Publisher,
    *,
    is_current: Callable[[], bool] | None = None,
) -> Outcome:
    """Publish ``note`` on the documents topic, then advance latest.json to it. A publish
    failure raises (:class:`RetryableError`) before latest.json moves. ``is_current``: whether
    the document ``note`` describes is still the current one (None: always)."""
    doc = DocumentRef(note.source_bucket, note.source_name, note.source_generation)
    if is_current is not None and not is_current():
        logger.info("announcement dropped: the document changed since it was built")
        return Outcome.STALE
    publisher.publish_all(
        settings.documents_topic, [OutgoingMessage(note.encode(), note.attributes())]
    )
    logger.info("document announced: %s", note.state, extra={"reason": note.reason})
    if is_current is not None and not is_current():
        logger.info("the document changed while it was announced; announcing it again")
        return Outcome.SUPERSEDED
    advance_latest(doc, note, digest, store, settings.output_bucket, is_current=is_current)
    return Outcome.RECORDED


def advance_latest(
    doc: DocumentRef,
    note: DocumentNotification,
    digest: str | None,
    store: ObjectStore,
    bucket: str,
    *,
    is_current: Callable[[], bool] | None = None,
) -> bool:
    """Record ``note`` in latest.json if that moves it forward and, with ``is_current``, if
    its document is still the current one when latest.json has been read. True if this call
    wrote it."""
    name = naming.latest_name(doc.name)
    record = records.latest_record(
        doc,
        state=note.state,
        folder=note.outputs.folder,
        document_md=note.outputs.document_md,
        document_json=note.outputs.document_json,
        error=note.outputs.error,
        pages_digest=digest,
    )
    for _ in range(LATEST_ROUNDS):
        object_generation, latest = read_latest(store, bucket, doc.name)
        if not moves_forward(latest, doc, note.state, digest):
            return False
        if is_current is not None and not is_current():
            return False  # a newer document.md: its own announcement records it
        written = store.write(
            bucket,
            name,
            record,
            "application/json",
            if_generation_match=object_generation,
            metadata={RECORDED_GENERATION_KEY: str(doc.generation)},
        )
        if written is not None:
            return True
    raise RetryableError(
        f"{naming.object_uri(bucket, name)} kept changing under concurrent writers; the retry"
        " records it",
        reason="latest_contended",
    )
