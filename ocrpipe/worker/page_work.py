"""The worker's core: one page message in, the page's Markdown (and, once every page is
accounted for, the document's) out, and the document announced on the documents topic.

The storage logic is plain synchronous functions, shared with the splitter where it writes
the same things (:func:`ocrpipe.announce.announce`). The async worker crosses to a thread
once per phase (:func:`process_page`): :func:`prepare_page` before OCR (checks, manifest,
image), then :func:`finish_page` or :func:`fail_page` after it (write the page, assemble
and announce the document).

A message is checked against what the splitter writes before anything is read for it
(:func:`check_message`): its document must be of the input bucket, its image must be the
one the splitter renders for that document and page (in the work bucket, with the
extension of its MIME type), its page count the manifest's, and the image no larger than
the splitter can produce. A message that fails a check raises :class:`RefusedMessage`: the
worker records it under ``_invalid-messages/`` and acknowledges it.

Idempotent under at-least-once delivery:

* a page whose Markdown or error record exists is not OCR'd again;
* page objects are created with ``if_generation_match=0``, so a duplicate or a concurrent
  delivery can never write a second copy of a page; the OCR client's usage travels with
  the page as its custom metadata (``ocrpipe-usage``), written in the same request; with a
  bbox model the page's figures are written first (:mod:`ocrpipe.worker.page_figures`),
  so a page whose Markdown exists has them;
* every page result that lands checks whether the document is complete and, if so,
  assembles it (:func:`complete_document`). ``document.md`` carries the digest of the page
  results it was built from and is rebuilt, with a generation precondition, whenever a
  result lands that it was not built from (a ``retry --failed-only`` that raced an
  in-flight page, a duplicate delivery between the retry's deletes). So it always ends
  equal to the assembly of its current pages;
* a complete, current document is announced (:mod:`ocrpipe.announce`) unless
  ``<key>/@latest.json`` already records its generation, digest and state: the publish
  comes before the delivery is acked, and a failed publish nacks it, so the redelivery
  announces it. It is published and recorded only while ``document.md`` is still the one
  it describes, so an instance that built it before a retried page landed never replaces
  the newer announcement, and if its publish was in flight meanwhile it announces the
  current document again;
* a page of a superseded generation (the input was overwritten or deleted) is dropped.

One function writes permanent page error records (:func:`fail_page`): for a page the OCR
server rejected, a page the splitter could not render, and a page whose image expired
before a late replay. A delivery that is nacked leaves an attempt record
(:func:`record_failed_delivery`): why, which delivery it was of how many before the
dead-letter topic, and what its OCR requests cost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from anyio import to_thread

from ocrpipe import announce, figure_links, naming, notifications, records
from ocrpipe.assemble import (
    DIGEST_KEY,
    DOCUMENT_GENERATION_KEY,
    Assembly,
    assemble,
    results_digest,
)
from ocrpipe.attempts import write_attempt
from ocrpipe.errors import (
    ObjectMissing,
    OcrpipeError,
    OcrRejected,
    OcrUnavailable,
    RefusedMessage,
    RetryableError,
)
from ocrpipe.messages import PageMessage
from ocrpipe.pubsub import Publisher
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore
from ocrpipe.topology import load_topology
from ocrpipe.usage import OcrUsage
from ocrpipe.worker.ocr_client import OcrClient, OcrResult
from ocrpipe.worker.page_figures import save_figures

logger = logging.getLogger(__name__)

GROUP_SIZE = 100  # pages whose 5-digit numbers share their first 3 digits
ASSEMBLY_ROUNDS = 6  # rebuilds lost to concurrent writers before giving up (and retrying)


@dataclass(frozen=True)
class PageOutcome:
    state: str  # "written", "failed", "already_done", "stale"
    document_written: bool = False


@dataclass(frozen=True)
class PageToOcr:
    """A page that passed every check and still needs OCR: its image, read."""

    doc: naming.DocumentRef
    page: int
    page_count: int
    image: bytes
    mime: str


class KeyedLocks:
    """One lock per key, kept only while someone holds it or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


_ASSEMBLING = KeyedLocks()


class ManifestCache:
    """Page counts of documents, from their manifests (written once, never changed): a
    small LRU so that a document's pages read its manifest about once per instance."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._counts: OrderedDict[str, int] = OrderedDict()

    def get(self, doc_id: str) -> int | None:
        count = self._counts.get(doc_id)
        if count is not None:
            self._counts.move_to_end(doc_id)
        return count

    def put(self, doc_id: str, page_count: int) -> None:
        self._counts[doc_id] = page_count
        self._counts.move_to_end(doc_id)
        while len(self._counts) > self._size:
            self._counts.popitem(last=False)


def check_message(message: PageMessage, settings: Settings) -> None:
    """The checks that need no I/O: whose document, which image."""
    if message.source_bucket != settings.input_bucket:
        raise RefusedMessage(
            f"the message names a document in bucket {message.source_bucket!r}, not the input"
            f" bucket {settings.input_bucket!r}",
            reason="foreign_source",
        )
    if message.render_failure is None:
        assert message.image_mime is not None  # the message's validator says so
        expected = naming.page_image_uri(
            settings.work_bucket, message.doc_id, message.page, message.image_mime
        )
        if message.image_uri != expected:
            raise RefusedMessage(
                f"the message names image {message.image_uri!r}; the splitter writes page"
                f" {message.page} of this document ({message.image_mime}) at {expected!r}",
                reason="foreign_image",
            )


async def process_page(
    message: PageMessage,
    store: ObjectStore,
    ocr: OcrClient,
    settings: Settings,
    publisher: Publisher,
    *,
    deadline: float,
    manifests: ManifestCache | None = None,
) -> PageOutcome:
    """The async front door: one thread crossing before OCR, one after it.

    Raises :class:`RefusedMessage` for a message the splitter did not write."""
    prepared = await to_thread.run_sync(
        partial(prepare_page, message, store, settings, publisher, manifests=manifests)
    )
    if isinstance(prepared, PageOutcome):
        return prepared
    started = time.monotonic()
    try:
        result = await ocr.ocr_page(prepared.image, prepared.mime, deadline=deadline)
    except OcrRejected as exc:
        failed = partial(
            fail_page,
            prepared.doc,
            prepared.page,
            prepared.page_count,
            exc.reason,
            exc.message,
            store,
            settings,
            publisher,
            usage=exc.usage,
        )
        return await to_thread.run_sync(failed)
    ocr_ms = round((time.monotonic() - started) * 1000)
    return await to_thread.run_sync(
        partial(finish_page, prepared, result, store, settings, publisher, ocr_ms=ocr_ms)
    )


def prepare_page(
    message: PageMessage,
    store: ObjectStore,
    settings: Settings,
    publisher: Publisher,
    *,
    manifests: ManifestCache | None = None,
) -> PageToOcr | PageOutcome:
    """Everything before OCR: the checks, the manifest, whether the page is done already,
    and its image. A :class:`PageOutcome` when no OCR is needed (done, stale, failed)."""
    doc = message.document
    page = message.page
    check_message(message, settings)
    page_count = manifest_page_count(doc, store, settings, manifests)
    if page_count is None:
        if is_stale(doc, store):
            return PageOutcome("stale")
        raise RefusedMessage(
            "no manifest for this document: the splitter never planned it", reason="no_manifest"
        )
    if page_count != message.page_count:
        raise RefusedMessage(
            f"the message says {message.page_count} pages; the manifest says {page_count}",
            reason="page_count_mismatch",
        )

    md_name = naming.page_markdown_name(doc, page)
    err_name = naming.page_error_name(doc, page)
    # One listing answers both "has Markdown" and "has an error record" (…/00007.).
    existing = {o.name for o in store.list(settings.output_bucket, md_name.removesuffix("md"))}
    if md_name in existing or err_name in existing:
        written = complete_document(doc, page_count, store, settings, publisher, page=page)
        return PageOutcome("already_done", written)

    if is_stale(doc, store):
        logger.info("input superseded or deleted; dropping page", extra={"reason": "stale"})
        return PageOutcome("stale")

    if message.render_failure is not None:
        return _render_failed(message, store, settings, publisher)

    image = read_image(message, store, settings)
    if image is None:
        if is_stale(doc, store):
            return PageOutcome("stale")
        return fail_page(
            doc,
            page,
            page_count,
            "page_image_expired",
            "the page image was deleted from the work bucket (lifecycle) before this"
            " delivery; retry the whole document (`ocrpipe retry`)",
            store,
            settings,
            publisher,
        )
    return PageToOcr(doc, page, page_count, image, str(message.image_mime))


def finish_page(
    prepared: PageToOcr,
    result: OcrResult,
    store: ObjectStore,
    settings: Settings,
    publisher: Publisher,
    *,
    ocr_ms: int | None = None,
) -> PageOutcome:
    """Write the page's Markdown (once, with its usage; with a bbox model, after its
    figures), then finish the document."""
    doc, page = prepared.doc, prepared.page
    markdown = result.markdown
    metadata = records.usage_metadata(result.usage.as_dict())
    if settings.ocr_figure_boxes:
        markdown, figures = save_figures(
            doc, page, markdown, prepared.image, prepared.mime, store, settings.output_bucket
        )
        metadata |= figures
    generation = store.write(
        settings.output_bucket,
        naming.page_markdown_name(doc, page),
        markdown.encode(),
        "text/markdown",
        if_generation_match=0,
        metadata=metadata,
    )
    created = generation is not None
    logger.info(
        "page written" if created else "page already written by another delivery",
        extra={"duration_ms": ocr_ms},
    )
    written = complete_document(doc, prepared.page_count, store, settings, publisher, page=page)
    return PageOutcome("written" if created else "already_done", written)


def fail_page(
    doc: naming.DocumentRef,
    page: int,
    page_count: int,
    reason: str,
    message: str,
    store: ObjectStore,
    settings: Settings,
    publisher: Publisher,
    *,
    usage: OcrUsage | None = None,
) -> PageOutcome:
    """Write page ``page``'s permanent error record (once, with the usage of the OCR
    attempts that led to it, if any), then check completion."""
    record = records.error_record(doc, reason, message, page=page)
    store.write(
        settings.output_bucket,
        naming.page_error_name(doc, page),
        record,
        "application/json",
        if_generation_match=0,
        metadata=records.usage_metadata(usage.as_dict()) if usage is not None else None,
    )
    logger.warning("page failed for good: %s", message, extra={"reason": reason})
    written = complete_document(doc, page_count, store, settings, publisher, page=page)
    return PageOutcome("failed", written)


def record_failed_delivery(
    message: PageMessage,
    error: BaseException,
    store: ObjectStore,
    settings: Settings,
    *,
    delivery: int | None,
    message_id: str,
    now_ns: int | None = None,
) -> records.Attempt:
    """Keep why this delivery of ``message`` is nacked, which delivery it is (``delivery``:
    Pub/Sub's ``deliveryAttempt``; without it, counted from the earlier records of the same
    message) and what its OCR requests cost, as an attempt record of the page."""
    doc, page, out = message.document, message.page, settings.output_bucket
    if delivery is None:
        earlier = store.list(out, naming.page_attempts_prefix(doc, page))
        found = [records.parse_attempt(info.metadata) for info in earlier]
        delivery = 1 + sum(
            1
            for a in found
            if a is not None and a.kind == records.FAILED_DELIVERY and a.message_id == message_id
        )
    usage = error.usage if isinstance(error, OcrUnavailable) else None
    attempt = records.Attempt(
        page=page,
        kind=records.FAILED_DELIVERY,
        reason=error.reason if isinstance(error, OcrpipeError) else "internal",
        message=str(error) or type(error).__name__,
        delivery=delivery,
        max_deliveries=load_topology().max_delivery_attempts,
        message_id=message_id,
        usage=usage.as_dict() if usage is not None else None,
    )
    return write_attempt(store, settings, doc, attempt, now_ns=now_ns)


def _render_failed(
    message: PageMessage, store: ObjectStore, settings: Settings, publisher: Publisher
) -> PageOutcome:
    """A page the splitter could not render: its reason comes from the splitter's own
    record in the work bucket, which also proves the splitter sent the message."""
    doc = message.document
    name = naming.render_failure_name(doc.doc_id, message.page)
    try:
        raw = store.read(settings.work_bucket, name)
    except ObjectMissing:
        raise RefusedMessage(
            f"the message says page {message.page} failed to render, but the splitter"
            f" recorded no such failure at {naming.object_uri(settings.work_bucket, name)}",
            reason="foreign_render_failure",
        ) from None
    reason, text = records.parse_render_failure(raw)
    return fail_page(
        doc, message.page, message.page_count, reason, text, store, settings, publisher
    )


def read_image(message: PageMessage, store: ObjectStore, settings: Settings) -> bytes | None:
    """The page image, or None if it is gone. Its size is checked before it is read."""
    assert message.image_uri is not None
    bucket, name = naming.split_uri(message.image_uri)
    info = store.stat(bucket, name)
    if info is None:
        return None
    limit = settings.page_image_limit
    if info.size > limit:
        raise RefusedMessage(
            f"the page image is {info.size} bytes; the splitter writes at most {limit}",
            reason="page_image_too_large",
        )
    try:
        return store.read(bucket, name)
    except ObjectMissing:
        return None


def manifest_page_count(
    doc: naming.DocumentRef,
    store: ObjectStore,
    settings: Settings,
    manifests: ManifestCache | None = None,
) -> int | None:
    """The page count of ``doc``'s manifest, or None if the splitter wrote none."""
    cached = manifests.get(doc.doc_id) if manifests else None
    if cached is not None:
        return cached
    try:
        raw = store.read(settings.output_bucket, naming.manifest_name(doc))
    except ObjectMissing:
        return None
    count = records.parse_manifest(raw).page_count
    if manifests is not None:
        manifests.put(doc.doc_id, count)
    return count


def complete_document(
    doc: naming.DocumentRef,
    page_count: int,
    store: ObjectStore,
    settings: Settings,
    publisher: Publisher,
    *,
    page: int | None = None,
    locks: KeyedLocks | None = None,
) -> bool:
    """Assemble the document if every page is accounted for and ``document.md`` is not
    already built from exactly these page results, then announce it if latest.json does not
    record it yet. True if this call wrote ``document.md``.

    Listing every page after every page would cost O(pages) per page. With ``page`` given,
    a long document first lists only that page's group of 100 (``pages/000xx``,
    ``pages/001xx``, ...): while the group is incomplete, so is the document. Only pages
    that find their group complete list everything.

    ``document.md`` is written with a generation precondition (absent, or the generation
    this call saw) and the digest of its page results in its metadata; ``document.json``
    follows it with the generation it describes. A writer that loses a race looks again,
    so the last result to land always ends up in both.
    """
    out = settings.output_bucket
    prefix = naming.pages_prefix(doc)
    if page is not None and page_count > GROUP_SIZE:
        group = page // GROUP_SIZE
        group_prefix = naming.page_group_prefix(doc, group)
        names = [o.name for o in store.list(out, group_prefix)]
        in_group = naming.parse_page_listing(names, prefix)
        expected = min(page_count, GROUP_SIZE * group + GROUP_SIZE - 1) - max(1, GROUP_SIZE * group)
        if len(in_group.done | in_group.failed) < expected + 1:
            return False
    # One assembly per document at a time in this process: when a document's last pages
    # land together, the others then find it built instead of each reading every page
    # (measured: ~12 of the ~20 GCS calls per page at 64 in flight). Other instances still
    # race, which the generation preconditions below settle. ``locks``: another instance's
    # table (tests run two instances in one process); None: this process's.
    with (_ASSEMBLING if locks is None else locks).hold(doc.doc_id):
        return _assemble(doc, page_count, store, settings, publisher)


def _assemble(
    doc: naming.DocumentRef,
    page_count: int,
    store: ObjectStore,
    settings: Settings,
    publisher: Publisher,
) -> bool:
    out = settings.output_bucket
    prefix = naming.pages_prefix(doc)
    final_name = naming.document_markdown_name(doc)
    index_name = naming.document_index_name(doc)
    wrote = again = False
    for _ in range(ASSEMBLY_ROUNDS):
        listed = store.list(out, prefix)
        results = naming.page_results([(o.name, o.generation) for o in listed], prefix, page_count)
        if len(results) < page_count:
            return wrote
        metadata = {o.name: o.metadata for o in listed}
        digest = results_digest(results)
        current = store.stat(out, final_name)
        index = store.stat(out, index_name)
        index_generation = index.generation if index is not None else 0
        if current is not None and current.metadata.get(DIGEST_KEY) == digest:
            if index is not None and index.metadata.get(DOCUMENT_GENERATION_KEY) == str(
                current.generation
            ):
                said = _announce_current(
                    doc, page_count, results, digest, store, settings, publisher, again=again
                )
                if said is announce.Outcome.RECORDED:
                    return wrote
                again = again or said is announce.Outcome.SUPERSEDED
                continue  # document.md moved on while it was announced: announce the new one
            built = _build(page_count, results, metadata, prefix, store, out)
            if built is not None:
                _write_index(doc, built, current.generation, digest, index_generation, store, out)
            continue  # look again: document.md may have moved on meanwhile
        built = _build(page_count, results, metadata, prefix, store, out)
        if built is None:
            continue  # a page result changed while it was read
        generation = store.write(
            out,
            final_name,
            built.assembly.markdown,
            "text/markdown",
            if_generation_match=current.generation if current is not None else 0,
            metadata={DIGEST_KEY: digest},
        )
        if generation is None:
            continue  # another writer got there first; see what it built from
        wrote = True
        logger.info("document %s from %d pages", "rebuilt" if current else "assembled", page_count)
        _write_index(doc, built, generation, digest, index_generation, store, out)
    raise RetryableError(
        "document.md kept changing under concurrent writers; the retry assembles it",
        reason="assembly_contended",
    )


def _announce_current(
    doc: naming.DocumentRef,
    page_count: int,
    results: Mapping[int, naming.PageResult],
    digest: str,
    store: ObjectStore,
    settings: Settings,
    publisher: Publisher,
    *,
    again: bool = False,
) -> announce.Outcome:
    """Announce a complete, current document unless latest.json already records it (or
    ``again``: a stale announcement went out after it, so it is said once more). The
    reasons of failed pages come from document.json (read only when some page failed).
    Only while document.md is still the one built from ``digest`` (:mod:`ocrpipe.announce`)."""
    failed = sum(1 for r in results.values() if r.state == "failed")
    state = notifications.terminal_state(page_count, failed)
    if not again and announce.is_announced(doc, state, digest, store, settings):
        return announce.Outcome.RECORDED
    reasons: dict[int, str] = {}
    if failed:
        try:
            index = store.read(settings.output_bucket, naming.document_index_name(doc))
        except ObjectMissing:
            raise RetryableError(
                "document.json vanished while the document was announced; the retry does it",
                reason="assembly_contended",
            ) from None
        reasons = records.parse_index_reasons(index)
    note = notifications.assembled(
        doc, settings.output_bucket, page_count=page_count, failed_reasons=reasons
    )
    markdown_name = naming.document_markdown_name(doc)

    def is_current() -> bool:
        info = store.stat(settings.output_bucket, markdown_name)
        return info is not None and info.metadata.get(DIGEST_KEY) == digest

    return announce.announce(note, digest, store, settings, publisher, is_current=is_current)


@dataclass(frozen=True)
class _Built:
    assembly: Assembly
    provenance: dict[int, dict[str, object] | None]
    figures: list[records.FigureEntry] | None  # None: no page records figures


def _build(
    page_count: int,
    results: dict[int, naming.PageResult],
    metadata: Mapping[str, Mapping[str, str]],
    prefix: str,
    store: ObjectStore,
    out: str,
) -> _Built | None:
    """The assembly of ``results`` and each page's provenance (from its result's custom
    metadata), or None if one of them was deleted meanwhile (a retry removing an error
    record). A bbox model's page links its figures from beside it; in ``document.md``, one
    folder up, the links get the pages' folder (:mod:`ocrpipe.figure_links`)."""
    pages: dict[int, str] = {}
    failed: dict[int, str] = {}
    provenance: dict[int, dict[str, object] | None] = {}
    figures: list[records.FigureEntry] | None = None
    objects = naming.parse_figure_names(metadata, prefix)
    for number, result in sorted(results.items()):
        try:
            raw = store.read(out, result.name)
        except ObjectMissing:
            return None
        page_metadata = metadata.get(result.name, {})
        usage = records.parse_usage(page_metadata)
        provenance[number] = dict(usage) if usage is not None else None
        if result.state != "done":
            failed[number] = records.parse_error_reason(raw)
            continue
        pages[number] = raw.decode()
        page_figures = records.parse_page_figures(page_metadata)
        if page_figures is None:
            continue
        figures = figures if figures is not None else []
        provenance[number] = {**(provenance[number] or {}), **records.figure_report(page_figures)}
        moves: dict[str, str] = {}
        for figure in page_figures.figures:
            found = objects.get((number, figure))
            if found is None:
                continue  # deleted by hand: its link stays as the page has it
            moves[found.basename] = naming.figure_link_from_document(found.basename)
            where = records.parse_figure_metadata(metadata.get(found.name, {}))
            figures.append(records.FigureEntry(number, figure, found.name, where))
        pages[number] = figure_links.relink(pages[number], moves)
    return _Built(assemble(page_count, pages, failed), provenance, figures)


def _write_index(
    doc: naming.DocumentRef,
    built: _Built,
    generation: int,
    digest: str,
    index_generation: int,
    store: ObjectStore,
    out: str,
) -> None:
    markdown_name = naming.document_markdown_name(doc)
    record = records.document_index_record(
        doc,
        markdown_name,
        generation,
        digest,
        built.assembly.spans,
        built.provenance,
        built.figures,
    )
    store.write(
        out,
        naming.document_index_name(doc),
        record,
        "application/json",
        if_generation_match=index_generation,
        metadata={DOCUMENT_GENERATION_KEY: str(generation)},
    )


def is_stale(doc: naming.DocumentRef, store: ObjectStore) -> bool:
    """Whether ``doc``'s input was overwritten or deleted."""
    info = store.stat(doc.bucket, doc.name)
    return info is None or info.generation != doc.generation
