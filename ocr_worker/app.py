"""The OCR worker: a Cloud Run service that receives Pub/Sub push deliveries of page
messages. Run it as ``uvicorn --factory ocr_worker.app:create_app``.

This module only parses the request, builds the real clients once per process (the store,
the OCR client, the publisher of the documents topic), and calls
:func:`ocrpipe.worker.page_work.process_page`. The push status comes from one place,
:func:`ocrpipe.errors.push_status_for`.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from anyio import to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ocrpipe import naming
from ocrpipe.errors import (
    BadMessage,
    OcrpipeError,
    PermanentError,
    RetryableError,
    push_status_for,
)
from ocrpipe.logs import configure_logging, log_context, trace_from_headers
from ocrpipe.messages import PageMessage, PushEnvelope
from ocrpipe.pubsub import Publisher, PubSubPublisher
from ocrpipe.settings import Settings
from ocrpipe.storage import GcsStore, ObjectStore
from ocrpipe.worker.context_fit import check_ocr_context
from ocrpipe.worker.ocr_client import OcrClient, OcrParams
from ocrpipe.worker.page_work import ManifestCache, process_page, record_failed_delivery
from ocrpipe.worker.push_auth import PushVerifier, build_verifier

logger = logging.getLogger("ocr_worker")


@dataclass
class Services:
    settings: Settings
    store: ObjectStore
    ocr: OcrClient
    publisher: Publisher
    verifier: PushVerifier | None
    manifests: ManifestCache


def build_ocr_client(settings: Settings) -> OcrClient:
    from ocrpipe.worker.id_tokens import auth_for

    params = OcrParams.from_settings(settings)
    return OcrClient.create(settings.ocr_url, params, auth=auth_for(settings))


def create_app(
    settings: Settings | None = None,
    *,
    store: ObjectStore | None = None,
    ocr: OcrClient | None = None,
    publisher: Publisher | None = None,
) -> Starlette:
    """Build the app. Tests pass fakes for ``store``, ``ocr`` and ``publisher``; production
    builds real ones."""
    settings = settings or Settings()
    configure_logging(settings.log_level, service="ocr_worker")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        verifier = build_verifier(settings)  # first: a misconfigured worker never starts
        services = Services(
            settings=settings,
            store=store
            or GcsStore.connect(settings.project, settings.storage_emulator_host, trust_env=False),
            ocr=ocr or build_ocr_client(settings),
            publisher=publisher
            or PubSubPublisher.connect(settings.project, settings.pubsub_emulator_host),
            verifier=verifier,
            manifests=ManifestCache(),
        )
        app.state.services = services
        try:
            # Replies that cannot fit the served context: the worker does not start.
            await check_ocr_context(services.ocr, settings)
            yield
        finally:
            if ocr is None:
                await services.ocr.aclose()

    return Starlette(
        routes=[
            Route("/", push, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def health(request: Request) -> Response:
    return Response(status_code=200)


async def stats(request: Request) -> Response:
    services: Services = request.app.state.services
    refused = await _refused(services, request)
    if refused is not None:
        return refused
    ocr = services.ocr
    return JSONResponse({"requests": ocr.stats.requests, "retries_by_cause": ocr.stats.by_cause})


async def _refused(services: Services, request: Request) -> Response | None:
    """The answer to a caller without a valid push token, or ``None`` to go on."""
    if services.verifier is None:
        return None
    denied = await services.verifier.check(request.headers)
    if denied is None:
        return None
    logger.warning("request refused: %s", denied.message, extra={"status": denied.status})
    return Response(status_code=denied.status)


async def push(request: Request) -> Response:
    services: Services = request.app.state.services
    settings = services.settings
    received = time.monotonic()
    deadline = received + settings.ocr_budget_s
    with log_context(trace=trace_from_headers(request.headers, settings.project)):
        refused = await _refused(services, request)
        if refused is not None:
            return refused
        body = await request.body()
        try:
            envelope = PushEnvelope.parse(body)
            message = PageMessage.decode(envelope.data())
        except BadMessage as exc:
            await _record_bad_message(services, body, exc)
            return Response(status_code=push_status_for(exc))
        except RetryableError as exc:  # a newer schema: wait for a worker that reads it
            logger.warning("page message not read: %s", exc, extra={"reason": exc.reason})
            return Response(status_code=push_status_for(exc))
        with log_context(doc_id=message.doc_id, page=message.page):
            error: BaseException | None = None
            try:
                outcome = await process_page(
                    message,
                    services.store,
                    services.ocr,
                    settings,
                    services.publisher,
                    deadline=deadline,
                    manifests=services.manifests,
                )
            except BadMessage as exc:  # well-formed, but not what the splitter wrote
                error = exc
                await _record_bad_message(services, body, exc, message)
            except (RetryableError, PermanentError) as exc:
                error = exc
                logger.warning(
                    "page not done: %s",
                    exc,
                    extra={"error_class": type(exc).__name__, "reason": exc.reason},
                )
            except Exception as exc:
                error = exc
                logger.exception(
                    "page failed unexpectedly", extra={"error_class": type(exc).__name__}
                )
            else:
                logger.info(
                    "page %s",
                    outcome.state,
                    extra={"duration_ms": round((time.monotonic() - received) * 1000)},
                )
            status = push_status_for(error)
            if error is not None and status >= 300:  # a nack: keep why, for status and report
                await _record_failed_delivery(services, envelope, message, error)
            return Response(status_code=status)


async def _record_failed_delivery(
    services: Services, envelope: PushEnvelope, message: PageMessage, error: BaseException
) -> None:
    """The page's attempt record; trouble writing it never changes the answer."""
    record = partial(
        record_failed_delivery,
        message,
        error,
        services.store,
        services.settings,
        delivery=envelope.delivery_attempt,
        message_id=envelope.message.message_id,
    )
    try:
        attempt = await to_thread.run_sync(record)
    except OcrpipeError as exc:
        logger.warning("failed delivery not recorded: %s", exc, extra={"reason": exc.reason})
        return
    if attempt.dead_lettered:
        logger.error(
            "delivery %d of %d failed: the page goes to the dead-letter topic",
            attempt.delivery,
            attempt.max_deliveries,
            extra={"reason": attempt.reason},
        )


async def _record_bad_message(
    services: Services, body: bytes, exc: BadMessage, message: PageMessage | None = None
) -> None:
    """Keep an undecodable or refused delivery where an operator finds it (``ocrpipe status``
    counts them), then ack it."""
    now = time.time_ns()
    name = naming.invalid_message_name(time.strftime("%Y%m%d", time.gmtime(now / 1e9)), now)
    fields: dict[str, object] = {
        "reason": exc.reason,
        "message": exc.message,
        "created": now / 1e9,
        "body_base64": base64.b64encode(body[:1_000_000]).decode(),
    }
    if message is not None:
        fields.update(doc_id=message.doc_id, page=message.page, source=message.source_name)
    record = json.dumps(fields, ensure_ascii=False).encode()
    await to_thread.run_sync(
        services.store.create, services.settings.output_bucket, name, record, "application/json"
    )
    logger.error(
        "%s push delivery kept at %s: %s",
        "refused" if message is not None else "undecodable",
        naming.object_uri(services.settings.output_bucket, name),
        exc.message,
        extra={"reason": exc.reason},
    )
