"""The local stack's Pub/Sub setup, straight on the emulator (terraform does it in
production): topics and subscriptions from ``ocrpipe/topology.json``.

Two deliberate differences:

* the pages subscription is a *pull* subscription here, served by the stack's push relay
  (:mod:`ocrpipe.local.relay`), because the emulator's own push keeps at most two
  deliveries in flight. Its ack deadline, retry policy and dead-letter policy are
  terraform's (:func:`pages_subscription_request`);
* a subscription keeps messages for at most 7 days here: the emulator refuses more
  ("message_retention_duration out of bounds", measured with 8 days; production allows
  31). Retentions above that are clamped (:func:`local_retention`); topic retention is
  kept as it is (the emulator takes 31 days).
"""

from __future__ import annotations

import contextlib
from typing import Any

from ocrpipe.pubsub import publisher_client, subscriber_client
from ocrpipe.topology import Topology

EMULATOR_MAX_SUBSCRIPTION_RETENTION_S = 7 * 86400


def local_retention(seconds: int) -> int:
    """A subscription's retention as the emulator can keep it."""
    return min(seconds, EMULATOR_MAX_SUBSCRIPTION_RETENTION_S)


def pages_subscription_request(
    project: str, topology: Topology, pages_topic: str | None = None
) -> dict[str, Any]:
    """The pages subscription as terraform creates it (terraform/pubsub.tf), minus its
    ``push_config``."""
    from google.protobuf import duration_pb2

    def seconds(value: int) -> duration_pb2.Duration:
        return duration_pb2.Duration(seconds=value)

    return {
        "name": f"projects/{project}/subscriptions/{topology.pages_push_subscription}",
        "topic": f"projects/{project}/topics/{pages_topic or topology.pages_topic}",
        "ack_deadline_seconds": topology.ack_deadline_seconds,
        "message_retention_duration": seconds(local_retention(topology.message_retention_seconds)),
        "retry_policy": {
            "minimum_backoff": seconds(topology.retry_minimum_backoff_seconds),
            "maximum_backoff": seconds(topology.retry_maximum_backoff_seconds),
        },
        "dead_letter_policy": {
            "dead_letter_topic": f"projects/{project}/topics/{topology.dead_letter_topic}",
            "max_delivery_attempts": topology.max_delivery_attempts,
        },
    }


def ensure_topology(
    project: str,
    topology: Topology,
    *,
    emulator_host: str | None = None,
    pages_topic: str | None = None,
) -> None:
    """Create the pages topic and its (pull) subscription, the dead-letter topic and its
    pull subscription, and the documents topic (users add their own subscriptions).
    Idempotent."""
    from google.api_core import exceptions as gexc
    from google.protobuf import duration_pb2

    publisher = publisher_client(emulator_host)
    subscriber = subscriber_client(emulator_host)
    pages = publisher.topic_path(project, pages_topic or topology.pages_topic)
    dead = publisher.topic_path(project, topology.dead_letter_topic)
    documents = publisher.topic_path(project, topology.documents_topic)
    retention = duration_pb2.Duration(seconds=topology.pages_topic_retention_seconds)
    with contextlib.suppress(gexc.AlreadyExists):
        publisher.create_topic(request={"name": pages, "message_retention_duration": retention})
    for topic in (dead, documents):
        with contextlib.suppress(gexc.AlreadyExists):
            publisher.create_topic(name=topic)
    subscriptions = [
        {
            "name": subscriber.subscription_path(project, topology.dead_letter_subscription),
            "topic": dead,
            "ack_deadline_seconds": topology.dead_letter_ack_deadline_seconds,
            "message_retention_duration": duration_pb2.Duration(
                seconds=local_retention(topology.dead_letter_retention_seconds)
            ),
        },
        pages_subscription_request(project, topology, pages_topic),
    ]
    for request in subscriptions:
        with contextlib.suppress(gexc.AlreadyExists):
            subscriber.create_subscription(request=request)
    publisher.transport.close()
    subscriber.close()


def ensure_push_subscription(
    project: str, topic: str, subscription: str, endpoint: str, emulator_host: str | None
) -> None:
    """A plain push subscription (the local Eventarc stand-in's)."""
    from google.api_core import exceptions as gexc

    subscriber = subscriber_client(emulator_host)
    with contextlib.suppress(gexc.AlreadyExists):
        subscriber.create_subscription(
            request={
                "name": subscriber.subscription_path(project, subscription),
                "topic": f"projects/{project}/topics/{topic}",
                "ack_deadline_seconds": 600,
                "push_config": {"push_endpoint": endpoint},
            }
        )
    subscriber.close()


def ensure_topic(project: str, topic: str, emulator_host: str | None = None) -> None:
    from google.api_core import exceptions as gexc

    publisher = publisher_client(emulator_host)
    with contextlib.suppress(gexc.AlreadyExists):
        publisher.create_topic(name=publisher.topic_path(project, topic))
    publisher.transport.close()


def release_leases(project: str, topology: Topology, emulator_host: str) -> None:
    """Make every message of the pages subscription deliverable again at once, leased ones
    included: what the relay held when it was killed, and what its last pull, still open at
    the emulator, took after it died (measured: the emulator hands messages published then
    to the dead pull, and they wait out the 600 s ack deadline). A seek to a time before
    every retained message marks them all unacknowledged; acknowledged ones are not kept
    (no ``retain_acked_messages``, no topic retention), so nothing done comes back. A page
    still in the worker gets a second delivery, which writes nothing twice."""
    import time

    from google.protobuf import timestamp_pb2

    before = timestamp_pb2.Timestamp()
    before.FromSeconds(int(time.time()) - topology.message_retention_seconds - 60)
    subscriber = subscriber_client(emulator_host)
    try:
        path = subscriber.subscription_path(project, topology.pages_push_subscription)
        subscriber.seek(request={"subscription": path, "time": before})
    finally:
        subscriber.close()
