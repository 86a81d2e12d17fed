"""Pub/Sub pull subscriptions: the :class:`PullSubscription` protocol, the adapter on
Google's client (production or the emulator), and an in-memory fake with the same lease
rules, for tests.

Only the operator CLI pulls: from the dead-letter subscription, and ``ocrpipe follow`` from
a subscription of its own on the documents topic (which it creates and deletes). A pulled
message is leased to the puller until its ack deadline; :meth:`PullSubscription.set_lease`
moves that deadline (``0`` releases the message at once, which is a nack) and
:meth:`PullSubscription.ack` removes the message from the subscription for good.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ocrpipe.errors import StorageUnavailable, SubscriptionMissing, translate_google_error
from ocrpipe.pubsub import subscriber_client

ACK_ID_CHUNK = 1000  # acknowledge / modifyAckDeadline take at most a few thousand ids
DEFAULT_WAIT_SECONDS = 3.0


@dataclass(frozen=True)
class Received:
    """One pulled message and the ack id that leases it to this puller."""

    ack_id: str
    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time: datetime | None = None


class PullSubscription(Protocol):
    @property
    def name(self) -> str:
        """The subscription's short name."""
        ...

    def pull(self, max_messages: int) -> list[Received]:
        """Lease up to ``max_messages`` messages; an empty list when none is available.

        May return fewer messages than are available (the emulator often does)."""
        ...

    def set_lease(self, ack_ids: Sequence[str], seconds: int) -> None:
        """Keep the messages leased for ``seconds`` from now; ``0`` releases them."""
        ...

    def ack(self, ack_ids: Sequence[str]) -> None:
        """Remove the messages from the subscription."""
        ...


class PubSubPullSubscription:
    """:class:`PullSubscription` on ``google-cloud-pubsub``'s unary pull."""

    def __init__(
        self, client: Any, path: str, *, wait_seconds: float = DEFAULT_WAIT_SECONDS
    ) -> None:
        self._client = client
        self._path = path
        self._wait_seconds = wait_seconds

    @classmethod
    def connect(
        cls, project: str, subscription: str, emulator_host: str | None = None
    ) -> PubSubPullSubscription:
        client = subscriber_client(emulator_host)
        return cls(client, client.subscription_path(project, subscription))

    @classmethod
    def create(
        cls,
        project: str,
        subscription: str,
        topic: str,
        emulator_host: str | None = None,
        *,
        ack_deadline_seconds: int = 60,
        expire_after_seconds: int = 86400,
    ) -> PubSubPullSubscription:
        """A new pull subscription on ``topic``; it only receives what is published from
        now on. Pub/Sub deletes it after ``expire_after_seconds`` without a pull (a day is
        its minimum), and keeps an unread message an hour at most."""
        client = subscriber_client(emulator_host)
        path = client.subscription_path(project, subscription)
        with _translated(path):
            client.create_subscription(
                request={
                    "name": path,
                    "topic": f"projects/{project}/topics/{topic}",
                    "ack_deadline_seconds": ack_deadline_seconds,
                    "expiration_policy": {"ttl": {"seconds": expire_after_seconds}},
                    "message_retention_duration": {"seconds": 3600},
                }
            )
        return cls(client, path)

    def delete(self) -> None:
        with _translated(self._path):
            self._client.delete_subscription(request={"subscription": self._path})

    @property
    def name(self) -> str:
        return self._path.rsplit("/", 1)[-1]

    def close(self) -> None:
        self._client.close()

    def pull(self, max_messages: int) -> list[Received]:
        from google.api_core import exceptions as gexc

        with _translated(self._path):
            try:
                response = self._client.pull(
                    request={"subscription": self._path, "max_messages": max_messages},
                    timeout=self._wait_seconds,
                )
            except gexc.DeadlineExceeded:
                return []  # nothing arrived while we waited
        return [
            Received(
                ack_id=item.ack_id,
                message_id=item.message.message_id,
                data=bytes(item.message.data),
                attributes=dict(item.message.attributes),
                publish_time=item.message.publish_time,
            )
            for item in response.received_messages
        ]

    def set_lease(self, ack_ids: Sequence[str], seconds: int) -> None:
        for chunk in _chunks(ack_ids):
            with _translated(self._path):
                self._client.modify_ack_deadline(
                    request={
                        "subscription": self._path,
                        "ack_ids": chunk,
                        "ack_deadline_seconds": seconds,
                    }
                )

    def ack(self, ack_ids: Sequence[str]) -> None:
        for chunk in _chunks(ack_ids):
            with _translated(self._path):
                self._client.acknowledge(request={"subscription": self._path, "ack_ids": chunk})


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i : i + ACK_ID_CHUNK]) for i in range(0, len(ids), ACK_ID_CHUNK)]


@contextmanager
def _translated(path: str) -> Iterator[None]:
    """Wrap google-api-core's exceptions into ours (``raise ... from``)."""
    from google.api_core import exceptions as gexc

    try:
        yield
    except gexc.NotFound as exc:
        raise SubscriptionMissing(
            f"{path} does not exist (the dead-letter one is created by terraform, or by"
            " the local stack)."
        ) from exc
    except gexc.GoogleAPICallError as exc:
        raise translate_google_error(exc, path) from exc
    except gexc.RetryError as exc:
        raise StorageUnavailable(f"Pub/Sub trouble at {path}: {exc}") from exc
