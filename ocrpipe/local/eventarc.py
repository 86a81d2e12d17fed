"""A local stand-in for Eventarc.

fake-gcs-server publishes a GCS notification (``OBJECT_FINALIZE``, JSON API object as the
data) to a Pub/Sub emulator topic. A push subscription delivers it here; this app turns it
into the binary-mode ``google.cloud.storage.object.v1.finalized`` CloudEvent that Eventarc
would send and posts it to the splitter. A splitter failure answers 503, so the emulator
redelivers, as Eventarc retries a failed function.

Run: ``uvicorn --factory ocrpipe.local.eventarc:create_app`` with
``OCRPIPE_EVENTARC_TARGET=http://127.0.0.1:8081/``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

logger = logging.getLogger(__name__)

FINALIZED = "google.cloud.storage.object.v1.finalized"
SPLITTER_TIMEOUT_S = 560.0  # a little over the function's 540 s timeout


def notification_to_event(envelope: dict[str, Any]) -> CloudEvent | None:
    """A Pub/Sub push envelope carrying a GCS notification -> a storage CloudEvent."""
    message = envelope["message"]
    attributes = message.get("attributes", {})
    if attributes.get("eventType") != "OBJECT_FINALIZE":
        return None
    data = json.loads(base64.b64decode(message["data"]))
    bucket = attributes["bucketId"]
    return CloudEvent(
        {
            "id": message.get("messageId") or message.get("message_id"),
            "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
            "type": FINALIZED,
            "subject": f"objects/{attributes['objectId']}",
            "time": message.get("publishTime") or attributes.get("eventTime"),
            "datacontenttype": "application/json",
        },
        data,
    )


def percent_encode_header(value: str) -> str:
    """A ``ce-`` header value as the CloudEvents HTTP binding sends it: space, ``"``,
    ``%`` and anything outside printable ASCII percent-encoded as UTF-8 (an object name in
    ``ce-subject`` may be any Unicode)."""
    return "".join(c if "!" <= c <= "~" and c not in '"%' else quote(c, safe="") for c in value)


def create_app(target: str | None = None) -> Starlette:
    from ocrpipe.settings import Settings

    target_url = target or Settings().eventarc_target
    client = httpx.AsyncClient(timeout=SPLITTER_TIMEOUT_S)

    async def receive(request: Request) -> Response:
        envelope = json.loads(await request.body())
        event = notification_to_event(envelope)
        if event is None:
            return Response(status_code=204)
        headers, body = to_binary(event)
        headers = {key: percent_encode_header(value) for key, value in headers.items()}
        try:
            reply = await client.post(target_url, headers=headers, content=body)
        except httpx.TransportError as exc:
            logger.warning("splitter unreachable: %s", exc)
            return Response(status_code=503)
        return Response(status_code=204 if reply.is_success else 503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(routes=[Route("/", receive, methods=["POST"])], lifespan=lifespan)
