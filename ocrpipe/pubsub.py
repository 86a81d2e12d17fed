"""Pub/Sub: the :class:`Publisher` protocol, the real adapter, publishing many messages in
batches (:func:`publish_batched`), and the client factories (emulator-aware). The local
stack's admin calls are in :mod:`ocrpipe.local.pubsub_admin`; terraform does them in
production."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ocrpipe.errors import StorageUnavailable, translate_google_error
from ocrpipe.topology import load_topology


@dataclass(frozen=True)
class OutgoingMessage:
    data: bytes
    attributes: dict[str, str]


class Publisher(Protocol):
    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publish and wait until every message is confirmed; return their ids in order."""
        ...


# Messages per publish call when many go out at once (the splitter's pages, a retry, a
# recovery): each batch is confirmed before the next is sent.
PUBLISH_BATCH = 100


def publish_batched(
    publisher: Publisher,
    topic: str,
    messages: Sequence[OutgoingMessage],
    batch: int = PUBLISH_BATCH,
) -> int:
    """Publish ``messages`` to ``topic``, ``batch`` at a time; how many were published."""
    published = 0
    for start in range(0, len(messages), batch):
        published += len(publisher.publish_all(topic, messages[start : start + batch]))
    return published


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
