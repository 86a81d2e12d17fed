"""One worker process serves many pushes at once and keeps exactly its configured number
of requests in flight to the OCR server: enough to fill a GPU's batch, never more.

Production Pub/Sub pushes many messages concurrently to a Cloud Run instance (the emulator
pushes one or two at a time, so this drives the worker directly, as Cloud Run would)."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
from PIL import Image

from ocr_worker.app import build_ocr_client, create_app
from ocrpipe import naming, records
from ocrpipe.local.faults import FaultPlan, serve_in_background
from ocrpipe.local.faults import create_app as create_fault_app
from ocrpipe.messages import PageMessage
from ocrpipe.naming import DocumentRef
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore

PAGES = 96
MAX_IN_FLIGHT = 16
BATCH = 32  # the simulated GPU could take more than the worker may send


def png(page: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), color=page % 256).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_the_worker_keeps_its_in_flight_limit_full_and_never_exceeds_it() -> None:
    plan = FaultPlan(batch_size=BATCH, service_time=0.3)
    store = MemoryStore()
    generation = store.put("in", "big.pdf", b"%PDF-1.7", "application/pdf")
    doc = DocumentRef("in", "big.pdf", generation)
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, PAGES))  # splitter's
    bodies = []
    for page in range(1, PAGES + 1):
        image = naming.page_image_name(doc.doc_id, page, "png")
        store.put("work", image, png(page), "image/png")
        message = PageMessage(
            doc_id=doc.doc_id, source_bucket="in", source_name="big.pdf",
            source_generation=generation, page=page, page_count=PAGES,
            image_uri=f"gs://work/{image}", image_mime="image/png",
        )  # fmt: skip
        bodies.append({"message": {"data": base64.b64encode(message.encode()).decode(),
                                   "messageId": str(page)}, "subscription": "s"})  # fmt: skip

    with serve_in_background(create_fault_app(plan)) as url:
        settings = Settings(
            verify_push_auth=False,
            input_bucket="in",
            work_bucket="work",
            output_bucket="out",
            ocr_url=url,
            ocr_max_in_flight=MAX_IN_FLIGHT,
            ocr_budget_s=60,
            storage_emulator_host="http://127.0.0.1:4443",  # unverified only against emulators
        )
        app = create_app(
            settings, store=store, ocr=build_ocr_client(settings), publisher=MemoryPublisher()
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
                answers = await asyncio.gather(*(client.post("/", json=b) for b in bodies))
            stats = httpx.get(f"{url}/stats").json()

    assert [a.status_code for a in answers] == [204] * PAGES
    assert stats["max_in_flight"] == MAX_IN_FLIGHT
    assert stats["ok"] == PAGES
    assert store.stat("out", naming.document_markdown_name(doc)) is not None
