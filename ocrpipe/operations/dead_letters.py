"""The dead-letter topic, for operators: list what is in it without consuming it, and replay
it to the pages topic.

A page message lands in the dead-letter topic after ``max_delivery_attempts`` failed pushes
(``topology.json``). It keeps its data and attributes (``doc_id``, ``page``,
``source_generation``, ``schema_version``, and ``replay_count`` once replayed), and Pub/Sub
adds these (names and values as seen on the emulator; production uses the same)::

    CloudPubSubDeadLetterSourceDeliveryCount        "10": failed deliveries
    CloudPubSubDeadLetterSourceSubscription         "ocrpipe-pages-push": a short name
    CloudPubSubDeadLetterSourceSubscriptionProject  "my-project"
    CloudPubSubDeadLetterSourceTopicPublishTime     "2026-11-26T23:05:04.598Z": when the
                                                    splitter published it

The message does not say why its last delivery failed: the worker's attempt record of that
delivery does (``ocrpipe status NAME``), and its log (labels ``doc_id`` and ``page``).

How a run treats the subscription: every message it pulls is leased for
:data:`LEASE_SECONDS` (renewed while the run goes on), so a pull never returns it again and
a pull that comes back empty means every message has been seen. A message is acked only
after its copy on the pages topic is confirmed; every other message (listed, filtered out,
beyond ``limit``, failed to publish) is released with a zero ack deadline when the run ends.
A run that is killed releases nothing: its leases run out after at most
:data:`LEASE_SECONDS`, and the messages are back. Killed between publish and ack, a message
is published again by the next run: a duplicate delivery, which the worker makes harmless
(it writes each page once).
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ocrpipe.errors import BadMessage, NewerSchema, OcrpipeError
from ocrpipe.messages import PageMessage
from ocrpipe.operations.pull import PullSubscription, Received
from ocrpipe.pubsub import OutgoingMessage, Publisher

DEAD_LETTER_PREFIX = "CloudPubSubDeadLetter"
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
SOURCE_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"
SOURCE_PROJECT = "CloudPubSubDeadLetterSourceSubscriptionProject"
SOURCE_PUBLISH_TIME = "CloudPubSubDeadLetterSourceTopicPublishTime"
REPLAY_COUNT = "replay_count"

LEASE_SECONDS = 15
PULL_BATCH = 100
PUBLISH_THREADS = 16
STALE_PULLS = 3


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered page message."""

    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    dead_lettered: datetime | None = None  # when it reached the dead-letter topic
    page_message: PageMessage | None = None  # None if the data is not a page message

    @classmethod
    def from_received(cls, received: Received) -> DeadLetter:
        try:
            page_message: PageMessage | None = PageMessage.decode(received.data)
        except (BadMessage, NewerSchema):  # shown and replayed as is
            page_message = None
        return cls(
            received.message_id,
            received.data,
            dict(received.attributes),
            received.publish_time,
            page_message,
        )

    @property
    def name(self) -> str:
        return self.page_message.source_name if self.page_message else ""

    @property
    def doc_id(self) -> str:
        return self.attributes.get("doc_id") or (
            self.page_message.doc_id if self.page_message else ""
        )

    @property
    def page(self) -> int | None:
        if self.page_message:
            return self.page_message.page
        return _int(self.attributes.get("page"))

    @property
    def delivery_count(self) -> int | None:
        return _int(self.attributes.get(DELIVERY_COUNT))

    @property
    def source_subscription(self) -> str:
        return self.attributes.get(SOURCE_SUBSCRIPTION, "")

    @property
    def first_published(self) -> str:
        return self.attributes.get(SOURCE_PUBLISH_TIME, "")

    @property
    def replay_count(self) -> int:
        return _int(self.attributes.get(REPLAY_COUNT)) or 0

    def matches(self, selector: str | None) -> bool:
        """``selector``: an input name, a shell pattern over names (``reports/*``), or a
        doc_id; ``None`` matches everything."""
        if selector is None:
            return True
        return selector in (self.name, self.doc_id) or (
            bool(self.name) and fnmatch.fnmatchcase(self.name, selector)
        )

    def replay_message(self) -> OutgoingMessage:
        """The original message again: same data, the original attributes without the
        dead-letter ones, and ``replay_count`` one higher."""
        attributes = {
            k: v for k, v in self.attributes.items() if not k.startswith(DEAD_LETTER_PREFIX)
        }
        attributes[REPLAY_COUNT] = str(self.replay_count + 1)
        return OutgoingMessage(self.data, attributes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "name": self.name or None,
            "doc_id": self.doc_id or None,
            "page": self.page,
            "generation": self.page_message.source_generation if self.page_message else None,
            "source_subscription": self.source_subscription or None,
            "delivery_count": self.delivery_count,
            "first_published": self.first_published or None,
            "dead_lettered": self.dead_lettered.isoformat() if self.dead_lettered else None,
            "replay_count": self.replay_count,
            "attributes": dict(self.attributes),
        }


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _Run:
    """The messages one run has pulled: each is held (leased to us) until it is acked or
    the run ends and releases it."""

    def __init__(self, subscription: PullSubscription, clock: Callable[[], float]) -> None:
        self._sub = subscription
        self._clock = clock
        self._held: dict[str, tuple[str, float]] = {}  # message id -> (ack id, lease end)
        self._acked: set[str] = set()

    def batches(self) -> Iterator[list[Received]]:
        """Messages this run has not seen, a pull at a time, until a pull is empty (or only
        brings back messages seen already, :data:`STALE_PULLS` times in a row: leases that
        ran out while a pull was slow)."""
        stale = 0
        while stale < STALE_PULLS:
            self._renew()
            received = self._sub.pull(PULL_BATCH)
            if not received:
                return
            self._sub.set_lease([r.ack_id for r in received], LEASE_SECONDS)
            lease_end = self._clock() + LEASE_SECONDS
            fresh = []
            for item in received:
                if item.message_id in self._acked:  # replayed already; that ack was lost
                    self._sub.ack([item.ack_id])
                    continue
                if item.message_id not in self._held:
                    fresh.append(item)
                self._held[item.message_id] = (item.ack_id, lease_end)
            stale = 0 if fresh else stale + 1
            yield fresh

    def ack(self, items: Sequence[Received]) -> None:
        self._sub.ack([self._held[item.message_id][0] for item in items])
        for item in items:
            self._held.pop(item.message_id, None)
            self._acked.add(item.message_id)

    def release(self) -> None:
        """Give every held message back to the subscription (a nack, not an ack)."""
        held, self._held = self._held, {}
        with contextlib.suppress(OcrpipeError):  # if this fails, the leases just run out
            self._sub.set_lease([ack_id for ack_id, _ in held.values()], 0)

    def _renew(self) -> None:
        soon = self._clock() + LEASE_SECONDS / 3
        due = [mid for mid, (_, end) in self._held.items() if end < soon]
        if not due:
            return
        self._sub.set_lease([self._held[mid][0] for mid in due], LEASE_SECONDS)
        lease_end = self._clock() + LEASE_SECONDS
        for mid in due:
            self._held[mid] = (self._held[mid][0], lease_end)


def list_dead_letters(
    subscription: PullSubscription,
    *,
    selector: str | None = None,
    limit: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[DeadLetter]:
    """The dead-lettered messages matching ``selector``, without consuming any."""
    run = _Run(subscription, clock)
    found: list[DeadLetter] = []
    try:
        for batch in run.batches():
            letters = (DeadLetter.from_received(item) for item in batch)
            found.extend(letter for letter in letters if letter.matches(selector))
            if limit is not None and len(found) >= limit:
                break
    finally:
        run.release()
    return found if limit is None else found[:limit]


@dataclass
class ReplayReport:
    dry_run: bool
    replayed: list[DeadLetter] = field(default_factory=list)  # or would be, in a dry run
    skipped: int = 0  # did not match the selector; left in the dead-letter topic
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "replayed": len(self.replayed),
            "skipped": self.skipped,
            "failed": len(self.failed),
            "messages": [letter.as_dict() for letter in self.replayed],
            "errors": [{**letter.as_dict(), "error": why} for letter, why in self.failed],
        }


def replay(
    subscription: PullSubscription,
    publisher: Publisher,
    topic: str,
    *,
    selector: str | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayReport:
    """Publish each matching dead letter to ``topic`` again, then ack it.

    The ack follows the confirmed publish, so no message is ever lost; see the module
    docstring for what an interrupted run leaves behind."""
    report = ReplayReport(dry_run)
    run = _Run(subscription, clock)
    try:
        for batch in run.batches():
            chosen: list[tuple[Received, DeadLetter]] = []
            for item in batch:
                if limit is not None and len(report.replayed) + len(chosen) >= limit:
                    break
                letter = DeadLetter.from_received(item)
                if letter.matches(selector):
                    chosen.append((item, letter))
                else:
                    report.skipped += 1
            if dry_run:
                report.replayed.extend(letter for _, letter in chosen)
            else:
                _replay_batch(run, publisher, topic, chosen, report)
            if limit is not None and len(report.replayed) >= limit:
                break
    finally:
        run.release()
    return report


def _replay_batch(
    run: _Run,
    publisher: Publisher,
    topic: str,
    chosen: list[tuple[Received, DeadLetter]],
    report: ReplayReport,
) -> None:
    def publish(letter: DeadLetter) -> str | None:
        try:
            publisher.publish_all(topic, [letter.replay_message()])
        except OcrpipeError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(PUBLISH_THREADS) as pool:
        errors = list(pool.map(publish, [letter for _, letter in chosen]))
    published = [pair for pair, error in zip(chosen, errors, strict=True) if error is None]
    run.ack([item for item, _ in published])
    report.replayed.extend(letter for _, letter in published)
    report.failed.extend(
        (letter, error) for (_, letter), error in zip(chosen, errors, strict=True) if error
    )
