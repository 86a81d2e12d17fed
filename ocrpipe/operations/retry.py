"""Put a document through the pipeline again (``ocrpipe retry``).

Two ways, both safe to run twice and to interrupt (run them again):

* **The whole document** (:func:`reprocess`): the input object is rewritten onto itself,
  which makes a new generation with the same bytes and a new finalize event. The splitter
  renders it again into a fresh ``@<generation>/`` folder under a new ``doc_id``; the old
  generation's output stays where it was, and any of its page messages still queued or
  dead-lettered are dropped by the worker as stale. Nothing is deleted. Running it twice
  makes two new generations; the second supersedes the first (wasted work, mixed nothing).

* **Pages without Markdown** (:func:`plan_unfinished_pages`, then :func:`requeue`): for the
  current generation, every page that has no ``.md`` (failed pages, with an error record,
  and pending ones) is published again from the manifest and the page images already in
  the work bucket. The worker skips a page that has Markdown *or* an error record, so
  :func:`requeue` first deletes the error records, then publishes. ``document.md`` stays
  until the worker rebuilds it: it records which page results it was built from, and the
  worker rebuilds it whenever a result lands that it lacks, so a page that raced the retry
  (landing between the plan and the deletes) cannot leave it wrong. Pending pages are
  included so that a retry interrupted after a delete and before the publish is finished
  by running it again; a pending page that is in fact still being processed, or
  dead-lettered and replayed later, gets a duplicate delivery, which writes nothing twice.
  A document whose every page is done but whose ``document.md`` is out of date (status
  ``stale_assembly``) gets one page published again: the worker finds it done, and the
  completion check rebuilds the document. Each page queued again first gets a ``retried``
  attempt record (:mod:`ocrpipe.attempts`), which keeps the usage of the
  error record deleted, for ``report``.

A document rejected as a whole (``error.json``: not a PDF, encrypted, ...) is refused both
ways: it has no pages, and reprocessing the same bytes rejects them again. ``force``
reprocesses it anyway (after a fix in the pipeline, say).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ocrpipe import naming, records
from ocrpipe.assemble import assembly_stale
from ocrpipe.attempts import record_requeued
from ocrpipe.errors import ObjectMissing, RetryRefused
from ocrpipe.messages import PageMessage
from ocrpipe.operations.status import PageError, parse_error
from ocrpipe.pubsub import OutgoingMessage, Publisher, publish_batched
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore


@dataclass(frozen=True)
class RetryPlan:
    name: str
    doc: naming.DocumentRef
    failed: tuple[int, ...]
    pending: tuple[int, ...]
    remove: tuple[str, ...]  # output objects to delete first, in this order
    messages: tuple[PageMessage, ...]
    rebuild: bool = False  # only to make the worker rebuild a stale document.md
    # The error records to delete, by page: (name#generation, its usage or None).
    failed_results: dict[int, tuple[str, records.Usage | None]] = field(default_factory=dict)

    @property
    def pages(self) -> tuple[int, ...]:
        return tuple(m.page for m in self.messages)


def plan_unfinished_pages(store: ObjectStore, settings: Settings, name: str) -> RetryPlan:
    """What :func:`requeue` would do for ``name``'s pages that have no Markdown."""
    source = store.stat(settings.input_bucket, name)
    if source is None:
        raise RetryRefused(
            f"{naming.object_uri(settings.input_bucket, name)} does not exist: its pages would"
            " be dropped as stale. Upload the file again."
        )
    doc = naming.DocumentRef(settings.input_bucket, name, source.generation)
    out = settings.output_bucket
    if store.stat(out, naming.document_error_name(doc)) is not None:
        raise RetryRefused(
            f"{name} was rejected as a whole (see `ocrpipe status {name}`): it has no pages to"
            " retry. Fix the file and upload it again, or retry the whole document."
        )
    try:
        manifest = records.parse_manifest(store.read(out, naming.manifest_name(doc)))
    except ObjectMissing:
        raise RetryRefused(
            f"{name} has not been split yet (no manifest for generation {doc.generation}):"
            " wait for it, or retry the whole document."
        ) from None
    prefix = naming.pages_prefix(doc)
    listed = store.list(out, prefix)
    listing = naming.parse_page_listing([o.name for o in listed], prefix)
    todo = [n for n in range(1, manifest.page_count + 1) if n not in listing.done]
    rebuild = False
    if not todo:
        document = store.stat(out, naming.document_markdown_name(doc))
        if not assembly_stale(document, listed, prefix, manifest.page_count):
            return RetryPlan(name, doc, (), (), (), ())
        todo, rebuild = [manifest.page_count], True
    images = _page_images(store, settings, doc.doc_id)
    missing = [n for n in todo if n not in images]
    if missing:
        raise RetryRefused(
            f"the page images of {name} are gone from"
            f" {naming.object_uri(settings.work_bucket, naming.work_prefix(doc.doc_id))}"
            f" (pages {_ranges(missing)}): retry the whole document instead."
        )
    failed = tuple(n for n in todo if n in listing.failed)
    remove = [naming.page_error_name(doc, n) for n in failed]
    messages = tuple(
        PageMessage.for_image(doc, n, manifest.page_count, settings.work_bucket, images[n])
        for n in todo
    )
    pending = () if rebuild else tuple(n for n in todo if n not in listing.failed)
    by_name = {info.name: info for info in listed}
    failed_results = {}
    for number in failed:
        info = by_name[naming.page_error_name(doc, number)]
        failed_results[number] = (
            f"{info.name}#{info.generation}",
            records.parse_usage(info.metadata),
        )
    return RetryPlan(name, doc, failed, pending, tuple(remove), messages, rebuild, failed_results)


def requeue(plan: RetryPlan, store: ObjectStore, publisher: Publisher, settings: Settings) -> int:
    """Record each page as retried, delete what would stop the worker (the error records),
    then publish the pages. Returns how many page messages were published."""
    if not plan.rebuild:
        for number in plan.pages:
            source, usage = plan.failed_results.get(number, ("", None))
            record_requeued(
                store, settings, plan.doc, number, records.RETRIED, source=source, usage=usage
            )
    for name in plan.remove:
        store.delete(settings.output_bucket, name)
    pages = [OutgoingMessage(m.encode(), m.attributes()) for m in plan.messages]
    return publish_batched(publisher, settings.pages_topic, pages)


def reprocess(
    store: ObjectStore, settings: Settings, name: str, *, force: bool = False, dry_run: bool = False
) -> int | None:
    """Rewrite the input onto itself: a new generation, split and OCR'd from scratch.
    Returns the new generation (None for a ``dry_run``, which only makes the checks). A
    rejected input is refused unless ``force``."""
    source = store.stat(settings.input_bucket, name)
    if source is None:
        where = naming.object_uri(settings.input_bucket, name)
        raise RetryRefused(f"{where} does not exist: upload it again.")
    doc = naming.DocumentRef(settings.input_bucket, name, source.generation)
    if not force and (error := _rejection(store, settings, doc)) is not None:
        raise RetryRefused(
            f"{name} was rejected as a whole ({error.reason}: {error.message}); the same bytes"
            " would be rejected again. Fix the file and upload it again (or --force)."
        )
    if dry_run:
        return None
    generation = store.rewrite_in_place(settings.input_bucket, name, source.generation)
    if generation is None:
        raise RetryRefused(
            f"{naming.object_uri(settings.input_bucket, name)} changed while it was being"
            " rewritten: a new generation is already on its way (see `ocrpipe status`)."
        )
    return generation


def _rejection(store: ObjectStore, settings: Settings, doc: naming.DocumentRef) -> PageError | None:
    """Why ``doc`` was rejected as a whole, or None if it was not."""
    try:
        return parse_error(store.read(settings.output_bucket, naming.document_error_name(doc)))
    except ObjectMissing:
        return None


def _page_images(store: ObjectStore, settings: Settings, doc_id: str) -> dict[int, str]:
    """Page number -> its image's object name, from the work bucket."""
    listed = store.list(settings.work_bucket, naming.work_prefix(doc_id))
    return naming.parse_work_listing((info.name for info in listed), doc_id).images


def _ranges(pages: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    spans: list[list[int]] = []
    for page in sorted(pages):
        if spans and page == spans[-1][1] + 1:
            spans[-1][1] = page
        else:
            spans.append([page, page])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)
