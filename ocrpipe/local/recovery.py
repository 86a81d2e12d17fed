"""After a restart of a local stack whose buckets are on disk (``ocrpipe up --data-dir``):
put back what the Pub/Sub emulator forgot, so that nothing submitted is lost.

The buckets survive a restart (fake-gcs-server's filesystem backend); the emulator's
messages do not: finalize notifications not yet split and page messages not yet answered
are gone, all at once. So the stack runs the reconciler
(:mod:`ocrpipe.splitter.reconcile`) with every message presumed lost and every split
attempt dead (their leases are released), as the ``reconciler`` identity. An input whose
split never started or stopped halfway gets its finalize notification again, sent the way
fake-gcs-server sends it (the splitter starts it, or resumes it where it stopped and
publishes the pages it had not published); every other page without a result is published
again; a finished document or a rejected input that ``@latest.json`` does not record is
announced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

import httpx

from ocrpipe import naming
from ocrpipe.pubsub import OutgoingMessage, Publisher
from ocrpipe.settings import Settings
from ocrpipe.splitter.reconcile import Policy, ReconcileReport, reconcile
from ocrpipe.storage import ObjectStore


def recover_unfinished(
    store: ObjectStore,
    publisher: Publisher,
    settings: Settings,
    refinalize: Callable[[str], None],
) -> ReconcileReport:
    """Re-queue what every unfinished input of the input bucket is missing; ``refinalize``
    sends an input's finalize event again."""

    def split_again(doc: naming.DocumentRef) -> str:
        refinalize(doc.name)
        return "finalize event sent again"

    policy = Policy.everything_lost(release_leases=True)
    return reconcile(store, publisher, settings, policy=policy, split_again=split_again)


def notification_sender(
    publisher: Publisher, storage_url: str, bucket: str, topic: str
) -> Callable[[str], None]:
    """Sends an input's finalize notification again, as fake-gcs-server published it (the
    object's JSON resource as data, the notification attributes)."""

    def send(name: str) -> None:
        url = f"{storage_url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
        resource = httpx.get(url, timeout=30).raise_for_status().json()
        attributes = {
            "eventType": "OBJECT_FINALIZE",
            "bucketId": bucket,
            "objectId": name,
            "objectGeneration": str(resource["generation"]),
            "payloadFormat": "JSON_API_V1",
        }
        data = json.dumps(resource).encode()
        publisher.publish_all(topic, [OutgoingMessage(data, attributes)])

    return send
