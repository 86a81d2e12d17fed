"""Pub/Sub: the :class:`Publisher` protocol, the real adapter, a fake for tests, and the
admin calls that create the topology (used by the local stack; terraform does it in
production)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ocrpipe.errors import StorageUnavailable, translate_google_error
from ocrpipe.topology import Topology, load_topology


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
    def connect(cls, project: str, emulator_host: str | None = None) -> PubSubPublisher:
        return cls(publisher_client(emulator_host), project)

    def topic_path(self, topic: str) -> str:
        return f"projects/{self._project}/topics/{topic}"

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        from google.api_core import exceptions as gexc

        path = self.topic_path(topic)
        futures = [self._client.publish(path, m.data, **m.attributes) for m in messages]
        try:
            timeout = load_topology().publish_timeout_seconds
            return [str(f.result(timeout=timeout)) for f in futures]
        except gexc.GoogleAPICallError as exc:
            raise translate_google_error(exc, path) from exc
        except TimeoutError as exc:
            raise StorageUnavailable(f"publishing to {path} timed out: {exc}") from exc


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


def publisher_client(emulator_host: str | None = None) -> Any:
    """A PublisherClient; on the emulator when ``emulator_host`` (host:port) is given."""
    from google.cloud import pubsub_v1

    if not emulator_host:
        return pubsub_v1.PublisherClient()
    import grpc
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    channel = grpc.insecure_channel(emulator_host)
    return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))


def subscriber_client(emulator_host: str | None = None) -> Any:
    from google.cloud import pubsub_v1

    if not emulator_host:
        return pubsub_v1.SubscriberClient()
    import grpc
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(emulator_host)
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def ensure_topology(
    project: str,
    topology: Topology,
    push_endpoint: str,
    *,
    emulator_host: str | None = None,
    pages_topic: str | None = None,
) -> None:
    """Create the pages topic, its push subscription (ack deadline, retry and dead-letter
    policy from ``topology``), the dead-letter topic and its pull subscription, and the
    documents topic (users add their own subscriptions). Idempotent."""
    from google.api_core import exceptions as gexc
    from google.protobuf import duration_pb2

    publisher = publisher_client(emulator_host)
    subscriber = subscriber_client(emulator_host)
    pages = publisher.topic_path(project, pages_topic or topology.pages_topic)
    dead = publisher.topic_path(project, topology.dead_letter_topic)
    documents = publisher.topic_path(project, topology.documents_topic)
    for topic in (pages, dead, documents):
        with contextlib.suppress(gexc.AlreadyExists):
            publisher.create_topic(name=topic)
    subscriptions = [
        {
            "name": subscriber.subscription_path(project, topology.dead_letter_subscription),
            "topic": dead,
            "ack_deadline_seconds": topology.dead_letter_ack_deadline_seconds,
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
