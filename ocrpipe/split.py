"""The splitter's core: one finalized input object in, page images and page messages out.

At-least-once: Eventarc may deliver the same finalize event twice, or retry after this
function died halfway. Every step is safe to repeat: the manifest and page images are
created only if absent, and a page published twice is written once by the worker.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ocrpipe import naming, records
from ocrpipe.errors import BadInput
from ocrpipe.messages import PageMessage
from ocrpipe.pubsub import OutgoingMessage, Publisher
from ocrpipe.render import PdfRenderer
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore

logger = logging.getLogger(__name__)

PUBLISH_BATCH = 100
_PDF_MAGIC = b"%PDF-"


@dataclass(frozen=True)
class SplitOutcome:
    doc: naming.DocumentRef
    state: str  # "published", "rejected", "stale"
    page_count: int = 0
    published: int = 0
    reason: str = ""


def split_document(
    doc: naming.DocumentRef, store: ObjectStore, publisher: Publisher, settings: Settings
) -> SplitOutcome:
    info = store.stat(doc.bucket, doc.name)
    if info is None or info.generation != doc.generation:
        logger.info("input superseded or deleted; nothing to do", extra={"reason": "stale"})
        return SplitOutcome(doc, "stale", reason="stale")
    try:
        _check_size(info.size, settings)
        with tempfile.TemporaryDirectory(prefix="ocrpipe-split-") as tmp:
            path = Path(tmp) / "input"
            store.download(doc.bucket, doc.name, path, generation=doc.generation)
            _check_type(path)
            return _split_pdf(doc, path, store, publisher, settings)
    except BadInput as exc:
        store.create(
            settings.output_bucket,
            naming.document_error_name(doc),
            records.error_record(doc, exc.reason, exc.message),
            "application/json",
        )
        logger.warning("input rejected: %s", exc.message, extra={"reason": exc.reason})
        return SplitOutcome(doc, "rejected", reason=exc.reason)


def _check_size(size: int, settings: Settings) -> None:
    if size == 0:
        raise BadInput("the file is empty (0 bytes)", reason="empty_file")
    if size > settings.max_input_bytes:
        raise BadInput(
            f"the file is {size} bytes, over the limit of {settings.max_input_bytes}",
            reason="file_too_large",
        )


def _check_type(path: Path) -> None:
    with path.open("rb") as handle:
        head = handle.read(1024)
    if _PDF_MAGIC not in head:
        raise BadInput("the file is not a PDF (no %PDF- header)", reason="unsupported_type")


def _split_pdf(
    doc: naming.DocumentRef,
    path: Path,
    store: ObjectStore,
    publisher: Publisher,
    settings: Settings,
) -> SplitOutcome:
    started = time.monotonic()
    with PdfRenderer(
        path, processes=settings.render_processes, longest_side=settings.render_longest_side
    ) as renderer:
        page_count = renderer.page_count()
        if page_count > settings.max_pages:
            raise BadInput(
                f"the PDF has {page_count} pages, over the limit of {settings.max_pages}",
                reason="too_many_pages",
            )
        store.create(
            settings.output_bucket,
            naming.manifest_name(doc),
            records.manifest_record(doc, page_count),
            "application/json",
        )
        published = 0
        batch: list[OutgoingMessage] = []
        for page in renderer.render(range(1, page_count + 1)):
            image_name = naming.page_image_name(doc.doc_id, page.page, page.extension)
            store.create(settings.work_bucket, image_name, page.data, page.mime)
            message = PageMessage(
                doc_id=doc.doc_id,
                source_bucket=doc.bucket,
                source_name=doc.name,
                source_generation=doc.generation,
                page=page.page,
                page_count=page_count,
                image_uri=f"gs://{settings.work_bucket}/{image_name}",
                image_mime=page.mime,
            )
            batch.append(OutgoingMessage(message.encode(), message.attributes()))
            if len(batch) >= PUBLISH_BATCH:
                published += len(publisher.publish_all(settings.pages_topic, batch))
                batch = []
        if batch:
            published += len(publisher.publish_all(settings.pages_topic, batch))
    logger.info(
        "split %d pages",
        page_count,
        extra={"duration_ms": round((time.monotonic() - started) * 1000)},
    )
    return SplitOutcome(doc, "published", page_count=page_count, published=published)
