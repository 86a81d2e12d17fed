"""The worker's core: one page message in, the page's Markdown (and, for the last page,
the document's) out.

Idempotent under at-least-once delivery:

* a page whose Markdown or error record exists is not OCR'd again;
* page and document objects are created with ``if_generation_match=0``, so a duplicate or
  a concurrent delivery can never write a second copy or rewrite finished output;
* every page that completes checks whether the document is complete and, if so, assembles
  it. When the last two pages finish at once on two instances both may assemble, but the
  content is a pure function of the pages and only one create succeeds;
* a page of a superseded generation (the input was overwritten or deleted) is dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from anyio import to_thread

from ocrpipe import naming, records
from ocrpipe.assemble import assemble_document
from ocrpipe.errors import OcrRejected
from ocrpipe.messages import PageMessage
from ocrpipe.ocr_client import OcrClient
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectMissing, ObjectStore

logger = logging.getLogger(__name__)

GROUP_SIZE = 100  # pages whose 5-digit numbers share their first 3 digits


@dataclass(frozen=True)
class PageOutcome:
    state: str  # "written", "failed", "already_done", "stale"
    document_written: bool = False


async def _io(fn: Any, *args: Any) -> Any:
    return await to_thread.run_sync(partial(fn, *args))


async def process_page(
    message: PageMessage,
    store: ObjectStore,
    ocr: OcrClient,
    settings: Settings,
    *,
    deadline: float,
) -> PageOutcome:
    doc = message.document
    out = settings.output_bucket
    md_name = naming.page_markdown_name(doc, message.page)
    err_name = naming.page_error_name(doc, message.page)

    # One listing answers both "has Markdown" and "has an error record" (…/00007.).
    existing = {o.name for o in await _io(store.list, out, md_name.removesuffix("md"))}
    if md_name in existing or err_name in existing:
        written = await complete_document(
            doc, message.page_count, store, settings, page=message.page
        )
        return PageOutcome("already_done", written)

    if await _is_stale(doc, store):
        logger.info("input superseded or deleted; dropping page", extra={"reason": "stale"})
        return PageOutcome("stale")

    bucket, image_name = _split_uri(message.image_uri)
    try:
        image = await _io(store.read, bucket, image_name)
    except ObjectMissing:
        if await _is_stale(doc, store):
            return PageOutcome("stale")
        raise

    started = time.monotonic()
    try:
        result = await ocr.ocr_page(image, message.image_mime, deadline=deadline)
    except OcrRejected as exc:
        record = records.error_record(doc, exc.reason, exc.message, page=message.page)
        await _io(store.create, out, err_name, record, "application/json")
        logger.warning("page failed for good: %s", exc.message, extra={"reason": exc.reason})
        written = await complete_document(
            doc, message.page_count, store, settings, page=message.page
        )
        return PageOutcome("failed", written)

    created = await _io(store.create, out, md_name, result.markdown.encode(), "text/markdown")
    logger.info(
        "page written" if created else "page already written by another delivery",
        extra={"duration_ms": round((time.monotonic() - started) * 1000)},
    )
    written = await complete_document(doc, message.page_count, store, settings, page=message.page)
    return PageOutcome("written" if created else "already_done", written)


async def complete_document(
    doc: naming.DocumentRef,
    page_count: int,
    store: ObjectStore,
    settings: Settings,
    *,
    page: int | None = None,
) -> bool:
    """Assemble the document if every page is accounted for. True if this call wrote it.

    Listing every page after every page would cost O(pages) per page. With ``page`` given,
    a long document first lists only that page's group of 100 (``pages/000xx``,
    ``pages/001xx``, ...): while the group is incomplete, so is the document. Only pages
    that find their group complete list everything.
    """
    out = settings.output_bucket
    final_name = naming.document_markdown_name(doc)
    prefix = naming.pages_prefix(doc)
    if page is not None and page_count > GROUP_SIZE:
        group = page // GROUP_SIZE
        group_prefix = f"{prefix}{group:0{naming.PAGE_DIGITS - 2}d}"
        names = [o.name for o in await _io(store.list, out, group_prefix)]
        in_group = naming.parse_page_listing(names, prefix)
        expected = min(page_count, GROUP_SIZE * group + GROUP_SIZE - 1) - max(1, GROUP_SIZE * group)
        if len(in_group.done | in_group.failed) < expected + 1:
            return False
    listing = naming.parse_page_listing(
        [o.name for o in await _io(store.list, out, prefix)], prefix
    )
    if len(listing.done | listing.failed) < page_count:
        return False
    if await _io(store.stat, out, final_name):
        return False
    pages = {
        n: (await _io(store.read, out, naming.page_markdown_name(doc, n))).decode()
        for n in sorted(listing.done)
    }
    failed = {}
    for number in sorted(listing.failed):
        raw = await _io(store.read, out, naming.page_error_name(doc, number))
        failed[number] = records.parse_error_reason(raw)
    markdown = assemble_document(page_count, pages, failed)
    created: bool = await _io(store.create, out, final_name, markdown.encode(), "text/markdown")
    if created:
        logger.info("document assembled from %d pages", page_count)
    return created


async def _is_stale(doc: naming.DocumentRef, store: ObjectStore) -> bool:
    info = await _io(store.stat, doc.bucket, doc.name)
    return info is None or info.generation != doc.generation


def _split_uri(uri: str) -> tuple[str, str]:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return bucket, name
