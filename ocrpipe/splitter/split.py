"""The splitter's core: one finalized input object in, page images and page messages out.

An input is a PDF or an image (PNG, JPEG, TIFF, WebP), recognised by its content
(:mod:`ocrpipe.file_kinds`). Input that cannot be processed gets ``error.json`` next
to where its output would be (:func:`ocrpipe.naming.document_error_name`) with a stable reason code,
is announced as failed on the documents topic, and the event is acknowledged: it is never
retried (unless the announcement could not be published).

In the output bucket the splitter writes ``manifest.json`` and ``error.json`` (and, for a
rejected input, ``@latest.json``, after announcing it on the documents topic:
:mod:`ocrpipe.announce`) and nothing else, and never lists it: page results and the
document are the worker's. A page that cannot be rendered is remembered in the work bucket
(``pages/<doc_id>/00002.failed.json``, so a retried split does not render it again) and
published like any page, with ``render_failure`` instead of an image: the worker writes its
error record and checks completion, so a document whose last pages failed to render is
still assembled.

At-least-once: Eventarc may deliver the same finalize event twice, or retry after this
function died halfway. The manifest, page images and error records are created only if
absent, and what was published is recorded per batch in the work bucket
(:mod:`ocrpipe.splitter.split_lease`), so a retry continues where the last attempt stopped.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ocrpipe import announce, file_kinds, naming, notifications, records
from ocrpipe.errors import BadInput, RetryableError
from ocrpipe.logs import log_context
from ocrpipe.messages import PageMessage
from ocrpipe.pubsub import PUBLISH_BATCH, OutgoingMessage, Publisher
from ocrpipe.settings import Settings
from ocrpipe.splitter import split_lease
from ocrpipe.splitter.rendering.page_decoders import RenderedPage
from ocrpipe.splitter.rendering.renderer import PageFailure, Renderer, RenderLimits
from ocrpipe.storage import ObjectStore
from ocrpipe.topology import load_topology

logger = logging.getLogger(__name__)

UPLOADS_IN_FLIGHT = 8
LEASE_MARGIN_S = 180.0  # beyond the budget and one page timeout: one publish, and slack
# The longest a batch's publish may take: the publisher's own timeout.
PUBLISH_FENCE_S = float(load_topology().publish_timeout_seconds)


@dataclass(frozen=True)
class SplitOutcome:
    doc: naming.DocumentRef
    state: str  # "published", "rejected", "stale"
    page_count: int = 0
    published: int = 0
    failed: int = 0
    reason: str = ""


def split_document(
    doc: naming.DocumentRef,
    store: ObjectStore,
    publisher: Publisher,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    batch_size: int = PUBLISH_BATCH,
) -> SplitOutcome:
    """Split one input. Raises :class:`RetryableError` for trouble worth a retry (storage,
    another attempt holding the lease, the time budget spent with pages left).

    Pages are published ``batch_size`` at a time; each batch is recorded as published in
    the work bucket once Pub/Sub confirmed it."""
    deadline = clock() + settings.split_budget_s
    info = store.stat(doc.bucket, doc.name)
    if info is None or info.generation != doc.generation:
        logger.info("input superseded or deleted; nothing to do", extra={"reason": "stale"})
        return SplitOutcome(doc, "stale", reason="stale")
    try:
        file_kinds.check_size(info.size, settings.max_input_bytes)
        with opened_input(doc, store, settings) as (renderer, kind):
            page_count = renderer.page_count()
            _check_pages(page_count, kind, settings)
            store.create(
                settings.output_bucket,
                naming.manifest_name(doc),
                records.manifest_record(doc, page_count),
                "application/json",
            )
            job = _Job(doc, page_count, renderer, store, publisher, settings)
            return job.run(wall_clock, clock=clock, deadline=deadline, batch=batch_size)
    except BadInput as exc:
        reject(doc, exc, store, publisher, settings)
        return SplitOutcome(doc, "rejected", reason=exc.reason)


@contextmanager
def opened_input(
    doc: naming.DocumentRef, store: ObjectStore, settings: Settings
) -> Iterator[tuple[Renderer, file_kinds.InputKind]]:
    """``doc``'s input downloaded to a temporary file, with render processes open on it.
    Raises :class:`BadInput` for an empty file or a kind ocrpipe does not read."""
    with tempfile.TemporaryDirectory(prefix="ocrpipe-split-") as tmp:
        path = Path(tmp) / "input"
        store.download(doc.bucket, doc.name, path, generation=doc.generation)
        with path.open("rb") as handle:
            head = handle.read(file_kinds.HEAD_BYTES)
        if not head:
            raise BadInput("the file is empty (0 bytes)", reason="empty_file")
        kind = file_kinds.classify(doc.name, head)
        with Renderer(
            path,
            kind,
            processes=settings.render_processes,
            longest_side=settings.render_longest_side,
            dpi=settings.render_dpi,
            limits=RenderLimits.from_settings(settings),
        ) as renderer:
            yield renderer, kind


def render_again(
    doc: naming.DocumentRef,
    pages: Sequence[int],
    page_count: int,
    store: ObjectStore,
    settings: Settings,
) -> list[OutgoingMessage]:
    """Render ``pages`` of a document that was split before, whose images are gone from the
    work bucket (deleted by its lifecycle while their messages waited): upload the images,
    or record the pages that fail to render, and return their messages, in the order of
    ``pages``, for the caller to publish (:mod:`ocrpipe.splitter.reconcile`). Raises
    :class:`BadInput` if the input cannot be read any more."""
    with opened_input(doc, store, settings) as (renderer, _):
        job = _Job(doc, page_count, renderer, store, None, settings)
        with _Uploads(store, settings.work_bucket) as uploads:
            messages = [job.outcome_message(result, uploads) for result in renderer.render(pages)]
            uploads.wait_all()
    return messages


def reject(
    doc: naming.DocumentRef,
    exc: BadInput,
    store: ObjectStore,
    publisher: Publisher,
    settings: Settings,
) -> None:
    """Write the input's ``error.json`` (once), then announce it as failed unless
    ``@latest.json`` already records it: a failed publish raises (the event is retried and
    announces it then)."""
    store.create(
        settings.output_bucket,
        naming.document_error_name(doc),
        records.error_record(doc, exc.reason, exc.message),
        "application/json",
    )
    logger.warning("input rejected: %s", exc.message, extra={"reason": exc.reason})
    if not announce.is_announced(doc, "failed", None, store, settings):
        note = notifications.rejected(doc, settings.output_bucket, reason=exc.reason)
        announce.announce(note, None, store, settings, publisher)


def _check_pages(page_count: int, kind: file_kinds.InputKind, settings: Settings) -> None:
    if page_count > settings.max_pages:
        what = "PDF" if kind is file_kinds.InputKind.PDF else "image"
        raise BadInput(
            f"the {what} has {page_count} pages, over the limit of {settings.max_pages}",
            reason="too_many_pages",
        )


class _Job:
    """Render, upload and publish the pages of one document that are not published yet."""

    def __init__(
        self,
        doc: naming.DocumentRef,
        page_count: int,
        renderer: Renderer,
        store: ObjectStore,
        publisher: Publisher | None,
        settings: Settings,
    ) -> None:
        self.doc = doc
        self.page_count = page_count
        self.renderer = renderer
        self.store = store
        self.publisher = publisher
        self.settings = settings
        self.published = 0
        self._fence: Callable[[], None] = lambda: None

    def run(
        self,
        wall_clock: Callable[[], float],
        *,
        clock: Callable[[], float],
        deadline: float,
        batch: int,
    ) -> SplitOutcome:
        started = clock()
        work = self.settings.work_bucket
        state = naming.parse_work_listing(
            [o.name for o in self.store.list(work, naming.work_prefix(self.doc.doc_id))],
            self.doc.doc_id,
        )
        ttl = self.settings.split_budget_s + self.settings.render_page_timeout_s + LEASE_MARGIN_S
        now = wall_clock()
        split_lease.check_split_deadline(
            self.store, work, self.doc.doc_id, state, self.page_count,
            now=now, deadline_s=self.settings.split_deadline_s,
        )  # fmt: skip
        lease = split_lease.acquire_lease(
            self.store, work, self.doc.doc_id, state, now=now, ttl_s=ttl
        )
        self._fence = partial(_check_lease, wall_clock, now + ttl)
        try:
            failed = self._publish_missing(state, clock, deadline, batch)
        finally:
            self.store.delete(work, lease)
        logger.info(
            "split %d pages: %d published, %d failed",
            self.page_count,
            self.published,
            len(failed),
            extra={"duration_ms": round((clock() - started) * 1000)},
        )
        return SplitOutcome(
            self.doc, "published", self.page_count, self.published, failed=len(failed)
        )

    def _publish_missing(
        self,
        state: naming.WorkState,
        clock: Callable[[], float],
        deadline: float,
        batch_size: int,
    ) -> set[int]:
        """Publish every page not yet published; returns the pages that failed to render."""
        failed = set(state.failed)
        todo = [p for p in range(1, self.page_count + 1) if p not in state.published]
        to_render = [p for p in todo if p not in state.images and p not in failed]
        rendered = self.renderer.render(to_render)
        with _Uploads(self.store, self.settings.work_bucket) as uploads:
            batch: list[int] = []
            messages: list[OutgoingMessage] = []
            for index, page in enumerate(todo):
                if page in state.images:
                    messages.append(self._message(page, state.images[page]))
                elif page in state.failed:
                    raw = self.store.read(self.settings.work_bucket, state.failed[page])
                    reason, text = records.parse_render_failure(raw)
                    messages.append(self._failure_message(PageFailure(page, reason, text)))
                else:
                    result = next(rendered)
                    assert result.page == page, (result.page, page)
                    if isinstance(result, PageFailure):
                        failed.add(page)
                    messages.append(self.outcome_message(result, uploads))
                batch.append(page)
                last = index + 1 == len(todo)
                contiguous = not last and todo[index + 1] == page + 1
                over_budget = clock() > deadline
                if len(batch) >= batch_size or not contiguous or over_budget:
                    uploads.wait_all()
                    self._publish(batch, messages)
                    batch, messages = [], []
                    if over_budget and not last:
                        raise RetryableError(
                            f"split time budget of {self.settings.split_budget_s:g} s spent"
                            f" after page {page} of {self.page_count}; the retry goes on",
                            reason="split_budget_spent",
                        )
        return failed

    def outcome_message(
        self, result: RenderedPage | PageFailure, uploads: _Uploads
    ) -> OutgoingMessage:
        """A rendered page's image goes up (its message names it); a page that failed to
        render is recorded as such (its message says so)."""
        if isinstance(result, PageFailure):
            self._record_failure(result)
            return self._failure_message(result)
        return self._message(result.page, uploads.submit(self.doc.doc_id, result))

    def _failure_message(self, failure: PageFailure) -> OutgoingMessage:
        message = PageMessage.failed_render(
            self.doc, failure.page, self.page_count, failure.reason, failure.message
        )
        return OutgoingMessage(message.encode(), message.attributes())

    def _message(self, page: int, image_name: str) -> OutgoingMessage:
        message = PageMessage.for_image(
            self.doc, page, self.page_count, self.settings.work_bucket, image_name
        )
        return OutgoingMessage(message.encode(), message.attributes())

    def _publish(self, batch: list[int], messages: list[OutgoingMessage]) -> None:
        self._fence()
        if messages:
            assert self.publisher is not None
            self.publisher.publish_all(self.settings.pages_topic, messages)
            self.published += len(messages)
        marker = naming.published_marker_name(self.doc.doc_id, batch[0], batch[-1])
        self.store.create(self.settings.work_bucket, marker, b"", "text/plain")

    def _record_failure(self, failure: PageFailure) -> None:
        """Remember the failure in the work bucket: a retry publishes it without rendering
        the page again, and the worker trusts only what the splitter wrote there."""
        self.store.create(
            self.settings.work_bucket,
            naming.render_failure_name(self.doc.doc_id, failure.page),
            records.render_failure_record(failure.reason, failure.message),
            "application/json",
        )
        with log_context(page=failure.page):
            logger.warning(
                "page not rendered: %s", failure.message, extra={"reason": failure.reason}
            )


def _check_lease(wall_clock: Callable[[], float], expires: float) -> None:
    """Publish only while the lease surely outlives the publish: once it expired, another
    attempt may be publishing the same pages."""
    if wall_clock() + PUBLISH_FENCE_S > expires:
        raise RetryableError(
            "this attempt's lease is about to expire; the retry goes on",
            reason="split_budget_spent",
        )


class _Uploads:
    """Page images uploaded on a few threads while the next pages render; at most
    :data:`UPLOADS_IN_FLIGHT` images held at once."""

    def __init__(self, store: ObjectStore, bucket: str) -> None:
        self._store = store
        self._bucket = bucket
        self._pool = ThreadPoolExecutor(UPLOADS_IN_FLIGHT, thread_name_prefix="upload")
        self._pending: deque[Future[bool]] = deque()

    def __enter__(self) -> _Uploads:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, doc_id: str, page: RenderedPage) -> str:
        name = naming.page_image_name(doc_id, page.page, page.extension)
        while len(self._pending) >= UPLOADS_IN_FLIGHT:
            self._pending.popleft().result()
        self._pending.append(
            self._pool.submit(self._store.create, self._bucket, name, page.data, page.mime)
        )
        return name

    def wait_all(self) -> None:
        while self._pending:
            self._pending.popleft().result()
