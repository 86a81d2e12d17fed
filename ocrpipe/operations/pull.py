"""Pub/Sub pull subscriptions: the :class:`PullSubscription` protocol, the adapter on
Google's client (production or the emulator), and an in-memory fake with the same lease
rules, for tests.

Only the operator CLI pulls (from the dead-letter subscription). A pulled message is leased
to the puller until its ack deadline; :meth:`PullSubscription.set_lease` moves that deadline
(``0`` releases the message at once, which is a nack) and :meth:`PullSubscription.ack`
removes the message from the subscription for good.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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
            f"{path} does not exist. The dead-letter topic needs a pull subscription:"
            " create it with terraform (or start the local stack)."
        ) from exc
    except gexc.GoogleAPICallError as exc:
        raise translate_google_error(exc, path) from exc
    except gexc.RetryError as exc:
        raise StorageUnavailable(f"Pub/Sub trouble at {path}: {exc}") from exc


@dataclass
class _Stored:
    received: Received
    leased_until: float = 0.0
    ack_id: str = ""


@dataclass
class MemorySubscription:
    """In-memory :class:`PullSubscription` with Pub/Sub's lease rules, for tests.

    ``batch`` caps what one pull returns, as the emulator does; each pull issues new ack ids,
    and an ack or lease change with an outdated ack id is ignored, as in Pub/Sub.
    """

    name: str = "memory-subscription"
    ack_deadline: float = 60.0
    batch: int = 1000
    clock: Callable[[], float] = time.monotonic
    _messages: dict[str, _Stored] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    pulls: int = 0

    def add(self, data: bytes, attributes: Mapping[str, str]) -> str:
        with self._lock:
            message_id = f"m{next(self._ids)}"
            self._messages[message_id] = _Stored(
                Received("", message_id, data, dict(attributes), None)
            )
            return message_id

    def pending(self) -> list[Received]:
        """Every message still in the subscription, leased or not."""
        return [stored.received for stored in self._messages.values()]

    def pull(self, max_messages: int) -> list[Received]:
        with self._lock:
            self.pulls += 1
            now = self.clock()
            out: list[Received] = []
            for stored in self._messages.values():
                if len(out) >= min(max_messages, self.batch):
                    break
                if stored.leased_until > now:
                    continue
                stored.ack_id = f"a{next(self._ids)}"
                stored.leased_until = now + self.ack_deadline
                out.append(
                    Received(
                        stored.ack_id,
                        stored.received.message_id,
                        stored.received.data,
                        dict(stored.received.attributes),
                        stored.received.publish_time,
                    )
                )
            return out

    def set_lease(self, ack_ids: Sequence[str], seconds: int) -> None:
        with self._lock:
            for stored in self._by_ack_id(ack_ids):
                stored.leased_until = self.clock() + seconds if seconds else 0.0

    def ack(self, ack_ids: Sequence[str]) -> None:
        with self._lock:
            for stored in self._by_ack_id(ack_ids):
                del self._messages[stored.received.message_id]

    def _by_ack_id(self, ack_ids: Sequence[str]) -> list[_Stored]:
        wanted = set(ack_ids)
        now = self.clock()
        return [s for s in self._messages.values() if s.ack_id in wanted and s.leased_until > now]
