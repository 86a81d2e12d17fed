"""One worker process serves many pushes at once and keeps exactly its configured number
of requests in flight to the OCR server: enough to fill a GPU's batch, never more.

Production Pub/Sub pushes many messages concurrently to a Cloud Run instance (the emulator
pushes one or two at a time, so this drives the worker directly, as Cloud Run would)."""

from __future__ import annotations

import asyncio
import io

import httpx
from PIL import Image

from ocr_worker.app import build_ocr_client, create_app
from ocrpipe import naming
from ocrpipe.local.faults import FaultPlan, serve_in_background
from ocrpipe.local.faults import create_app as create_fault_app
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pushes import push_envelope, ready_document, worker_settings

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
    doc, messages = ready_document(store, PAGES, name="big.pdf", image=png)
    bodies = [push_envelope(message, str(message.page)) for message in messages]

    with serve_in_background(create_fault_app(plan)) as url:
        settings = worker_settings(ocr_url=url, ocr_max_in_flight=MAX_IN_FLIGHT, ocr_budget_s=60)
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
