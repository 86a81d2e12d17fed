"""A document as the splitter leaves it for the worker, and its pages as Pub/Sub push delivers
them: for tests and benchmarks that drive the worker app directly (its test client, an ASGI
transport, or uvicorn), with an in-memory store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ocrpipe import naming, records
from ocrpipe.local.relay import Delivery
from ocrpipe.local.relay import push_envelope as relay_envelope
from ocrpipe.messages import PageMessage
from ocrpipe.naming import DocumentRef
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryStore


def worker_settings(**fields: Any) -> Settings:
    """The worker's settings on the in-memory store (buckets ``in``, ``work``, ``out``), with
    ``fields`` changed."""
    base: dict[str, Any] = {
        "verify_push_auth": False,
        # unverified pushes are allowed only against emulators: one is named, never contacted
        "storage_emulator_host": "http://127.0.0.1:4443",
        "input_bucket": "in",
        "work_bucket": "work",
        "output_bucket": "out",
        "ocr_budget_s": 5,
    }
    return Settings(**(base | fields))


WORKER_SETTINGS = worker_settings()
PAGES_SUBSCRIPTION = "projects/local-project/subscriptions/ocrpipe-pages-push"
PUBLISHED = datetime(2026, 11, 26, tzinfo=UTC)


def text_image(page: int) -> bytes:
    """A page "image" whose bytes are its text: ``image 1``, ``image 2``, ..."""
    return f"image {page}".encode()


def ready_document(
    store: MemoryStore,
    pages: int = 2,
    *,
    name: str = "docs/a.pdf",
    settings: Settings = WORKER_SETTINGS,
    image: Callable[[int], bytes] = text_image,
    mime: str = "image/png",
) -> tuple[DocumentRef, list[PageMessage]]:
    """Put ``name`` (an input), its manifest and one image per page (``image(page)``) in
    ``store``, in ``settings``' buckets, as the splitter does; return the document and the
    page messages the splitter would publish."""
    generation = store.put(settings.input_bucket, name, b"%PDF-1.7 ...", "application/pdf")
    doc = DocumentRef(settings.input_bucket, name, generation)
    manifest = records.manifest_record(doc, pages)
    store.put(settings.output_bucket, naming.manifest_name(doc), manifest)
    extension = naming.IMAGE_EXTENSIONS[mime]
    messages = []
    for page in range(1, pages + 1):
        image_name = naming.page_image_name(doc.doc_id, page, extension)
        store.put(settings.work_bucket, image_name, image(page), mime)
        messages.append(
            PageMessage(
                doc_id=doc.doc_id,
                source_bucket=doc.bucket,
                source_name=name,
                source_generation=generation,
                page=page,
                page_count=pages,
                image_uri=naming.object_uri(settings.work_bucket, image_name),
                image_mime=mime,
            )
        )
    return doc, messages


def push_envelope(message: PageMessage, message_id: str = "1") -> dict[str, Any]:
    """``message`` in the body Pub/Sub push POSTs to the worker (the relay's own format)."""
    delivery = Delivery(message.encode(), message.attributes(), message_id, PUBLISHED, None)
    return relay_envelope(delivery, PAGES_SUBSCRIPTION)
