"""Pub/Sub: the :class:`Publisher` protocol, the real adapter, a fake for tests, and the
admin calls that create the topology (used by the local stack; terraform does it in
production)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ocrpipe.errors import StorageUnavailable
from ocrpipe.topology import Topology


@dataclass(frozen=True)
class OutgoingMessage:
    data: bytes
    attributes: dict[str, str]


class Publisher(Protocol):
    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publish and wait until every message is confirmed; return their ids in order."""
        ...


class PubSubPublisher:
    def __init__(self, client: Any, project: str) -> None:
        self._client = client
        self._project = project

    @classmethod
    def connect(cls, project: str) -> PubSubPublisher:
        from google.cloud import pubsub_v1

        return cls(pubsub_v1.PublisherClient(), project)

    def topic_path(self, topic: str) -> str:
        return f"projects/{self._project}/topics/{topic}"

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        from google.api_core import exceptions as gexc

        path = self.topic_path(topic)
        futures = [self._client.publish(path, m.data, **m.attributes) for m in messages]
        try:
            return [str(f.result(timeout=120)) for f in futures]
        except (gexc.GoogleAPICallError, TimeoutError) as exc:
            raise StorageUnavailable(f"publishing to {path} failed: {exc}") from exc


@dataclass
class MemoryPublisher:
    """Records what would be published, for tests."""

    published: list[tuple[str, OutgoingMessage]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        with self._lock:
            start = len(self.published)
            self.published.extend((topic, m) for m in messages)
            return [str(start + i) for i in range(len(messages))]


def ensure_topology(
    project: str, topology: Topology, push_endpoint: str, *, pages_topic: str | None = None
) -> None:
    """Create the pages topic, its push subscription (ack deadline, retry and dead-letter
    policy from ``topology``), the dead-letter topic and its pull subscription. Idempotent."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1
    from google.protobuf import duration_pb2

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    pages = publisher.topic_path(project, pages_topic or topology.pages_topic)
    dead = publisher.topic_path(project, topology.dead_letter_topic)
    for topic in (pages, dead):
        try:
            publisher.create_topic(name=topic)
        except gexc.AlreadyExists:
            pass
    subscriptions = [
        {
            "name": subscriber.subscription_path(project, topology.dead_letter_subscription),
            "topic": dead,
            "ack_deadline_seconds": 60,
            "message_retention_duration": duration_pb2.Duration(
                seconds=topology.message_retention_seconds
            ),
        },
        {
            "name": subscriber.subscription_path(project, topology.pages_push_subscription),
            "topic": pages,
            "ack_deadline_seconds": topology.ack_deadline_seconds,
            "push_config": {"push_endpoint": push_endpoint},
            "retry_policy": {
                "minimum_backoff": duration_pb2.Duration(
                    seconds=topology.retry_minimum_backoff_seconds
                ),
                "maximum_backoff": duration_pb2.Duration(
                    seconds=topology.retry_maximum_backoff_seconds
                ),
            },
            "dead_letter_policy": {
                "dead_letter_topic": dead,
                "max_delivery_attempts": topology.max_delivery_attempts,
            },
        },
    ]
    for request in subscriptions:
        try:
            subscriber.create_subscription(request=request)
        except gexc.AlreadyExists:
            pass
    publisher.transport.close()
    subscriber.close()


def ensure_topic(project: str, topic: str) -> None:
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    try:
        publisher.create_topic(name=publisher.topic_path(project, topic))
    except gexc.AlreadyExists:
        pass
    publisher.transport.close()
