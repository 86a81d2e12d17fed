"""The splitter: a Cloud Functions (gen2) CloudEvent function for
``google.cloud.storage.object.v1.finalized``.

Run locally with ``functions-framework --source splitter_fn/main.py --target on_finalize
--signature-type cloudevent``. This module only parses the event, builds the real clients
(once per instance, on the first event, never at import), and calls
:func:`ocrpipe.splitter.split.split_document`.

Returning normally acknowledges the event, which is what happens for bad input once its
error record is written (a file that cannot be processed is never retried). Raising makes
functions-framework answer 500 and Eventarc retry: that is what transient trouble does, and
what a split that ran out of its time budget does to go on where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import functions_framework
from cloudevents.http import CloudEvent

from ocrpipe.errors import BadMessage, RetryableError
from ocrpipe.logs import configure_logging, log_context, trace_from_headers
from ocrpipe.messages import StorageObjectData
from ocrpipe.pubsub import Publisher, PubSubPublisher
from ocrpipe.settings import Settings
from ocrpipe.splitter.split import split_document
from ocrpipe.storage import GcsStore, ObjectStore

FINALIZED = "google.cloud.storage.object.v1.finalized"
logger = logging.getLogger("splitter_fn")


Services = tuple[Settings, ObjectStore, Publisher]


@cache
def real_services() -> Services:
    settings = Settings()
    configure_logging(settings.log_level, service="splitter_fn")
    store = GcsStore.connect(settings.project, settings.storage_emulator_host)
    return settings, store, PubSubPublisher.connect(settings.project, settings.pubsub_emulator_host)


def make_handler(services: Callable[[], Services]) -> Callable[[CloudEvent], None]:
    """The event handler, with its clients from ``services`` (called on each event)."""

    def handle(event: CloudEvent) -> None:
        handle_event(event, *services())

    return handle


def handle_event(
    event: CloudEvent, settings: Settings, store: ObjectStore, publisher: Publisher
) -> None:
    trace = trace_from_headers(_trace_headers(event), settings.project)
    with log_context(trace=trace):
        if event["type"] != FINALIZED:
            logger.warning("ignoring event of type %s", event["type"])
            return
        try:
            data = StorageObjectData.model_validate(event.data)
        except ValueError as exc:
            logger.error("finalize event without a usable object: %s", BadMessage(str(exc)))
            return
        doc = data.document
        if doc.bucket != settings.input_bucket:
            logger.warning("ignoring object in bucket %s, not the input bucket", doc.bucket)
            return
        with log_context(doc_id=doc.doc_id):
            try:
                outcome = split_document(doc, store, publisher, settings)
            except RetryableError as exc:
                logger.warning(
                    "split %s not finished, to be retried: %s",
                    doc.uri,
                    exc.message,
                    extra={"reason": exc.reason, "error_class": type(exc).__name__},
                )
                raise
            logger.info(
                "split %s: %s",
                doc.uri,
                outcome.state,
                extra={"reason": outcome.reason or None},
            )


on_finalize = functions_framework.cloud_event(make_handler(real_services))


def _trace_headers(event: CloudEvent) -> dict[str, str]:
    attributes: Mapping[str, Any] = event.get_attributes()
    return {k: str(v) for k, v in attributes.items() if k in ("traceparent",)}
