"""Dead-letter listing and replay against the in-memory subscription (same lease rules as
Pub/Sub): nothing is consumed by a listing, a replay acks only what it has published, and
an interrupted replay loses nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from ocrpipe.errors import StorageUnavailable
from ocrpipe.messages import PageMessage
from ocrpipe.naming import DocumentRef
from ocrpipe.operations import dead_letters as dlq
from ocrpipe.operations.pull import Received
from ocrpipe.pubsub import OutgoingMessage
from ocrpipe.testing.clock import FakeClock
from ocrpipe.testing.memory import MemoryPublisher, MemorySubscription

PAGES_TOPIC = "ocrpipe-pages"


def page_message(name: str, page: int, page_count: int = 9) -> PageMessage:
    doc = DocumentRef("in", name, 17)
    return PageMessage(
        doc_id=doc.doc_id,
        source_bucket="in",
        source_name=name,
        source_generation=17,
        page=page,
        page_count=page_count,
        image_uri=f"gs://work/pages/{doc.doc_id}/{page:05d}.png",
        image_mime="image/png",
    )


def dead_letter(sub: MemorySubscription, name: str, page: int, **extra: str) -> PageMessage:
    message = page_message(name, page)
    sub.add(
        message.encode(),
        {
            **message.attributes(),
            dlq.DELIVERY_COUNT: "10",
            dlq.SOURCE_SUBSCRIPTION: "ocrpipe-pages-push",
            dlq.SOURCE_PROJECT: "p",
            dlq.SOURCE_PUBLISH_TIME: "2026-11-26T23:05:04.598Z",
            **extra,
        },
    )
    return message


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sub(clock: FakeClock) -> MemorySubscription:
    # batch=2: like the emulator, a pull returns fewer messages than are available.
    subscription = MemorySubscription(ack_deadline=60, batch=2, clock=clock)
    for name, page in [("a.pdf", 1), ("a.pdf", 3), ("b.pdf", 2), ("reports/c.pdf", 1)]:
        dead_letter(subscription, name, page)
    return subscription


def available(sub: MemorySubscription) -> int:
    """How many messages another puller would get now."""
    got: list[Received] = []
    while batch := sub.pull(1000):
        got += batch
    sub.set_lease([r.ack_id for r in got], 0)
    return len(got)


def test_listing_shows_every_message_and_consumes_none(sub: MemorySubscription) -> None:
    letters = dlq.list_dead_letters(sub, clock=sub.clock)

    assert sorted((d.name, d.page) for d in letters) == [
        ("a.pdf", 1),
        ("a.pdf", 3),
        ("b.pdf", 2),
        ("reports/c.pdf", 1),
    ]
    first = next(d for d in letters if d.name == "b.pdf")
    assert first.delivery_count == 10
    assert first.source_subscription == "ocrpipe-pages-push"
    assert first.first_published == "2026-11-26T23:05:04.598Z"
    assert first.doc_id == DocumentRef("in", "b.pdf", 17).doc_id
    assert first.replay_count == 0
    assert not hasattr(first, "last_error")  # not recorded: see the worker's log
    # Still there, and released at once: not left leased for the ack deadline.
    assert len(sub.pending()) == 4
    assert available(sub) == 4


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("a.pdf", [("a.pdf", 1), ("a.pdf", 3)]),
        ("reports/*", [("reports/c.pdf", 1)]),
        (DocumentRef("in", "b.pdf", 17).doc_id, [("b.pdf", 2)]),
        ("nothing.pdf", []),
    ],
)
def test_listing_filters_by_name_pattern_or_doc_id(
    sub: MemorySubscription, selector: str, expected: list[tuple[str, int]]
) -> None:
    letters = dlq.list_dead_letters(sub, selector=selector, clock=sub.clock)
    assert sorted((d.name, d.page) for d in letters) == expected
    assert available(sub) == 4


def test_listing_stops_at_the_limit(sub: MemorySubscription) -> None:
    assert len(dlq.list_dead_letters(sub, limit=3, clock=sub.clock)) == 3
    assert available(sub) == 4


def test_a_long_listing_renews_its_leases_and_sees_each_message_once(clock: FakeClock) -> None:
    sub = MemorySubscription(ack_deadline=60, batch=1, clock=clock)
    for page in range(1, 8):
        dead_letter(sub, "long.pdf", page)

    class SlowSubscription:
        """Each pull takes 6 s: without renewal, the first leases would run out."""

        name = "slow"

        def pull(self, max_messages: int) -> list[Received]:
            clock.now += 6
            return sub.pull(max_messages)

        def set_lease(self, ack_ids: Sequence[str], seconds: int) -> None:
            sub.set_lease(ack_ids, seconds)

        def ack(self, ack_ids: Sequence[str]) -> None:
            sub.ack(ack_ids)

    letters = dlq.list_dead_letters(SlowSubscription(), clock=clock)
    assert sorted(d.page or 0 for d in letters) == list(range(1, 8))  # None: not a page
    assert sub.pulls == 8  # seven messages, then an empty pull: none came back
    assert available(sub) == 7


def test_replay_republishes_the_original_message_then_acks_it(sub: MemorySubscription) -> None:
    publisher = MemoryPublisher()
    original = dead_letter(sub, "d.pdf", 2, replay_count="1")

    report = dlq.replay(sub, publisher, PAGES_TOPIC, selector="d.pdf", clock=sub.clock)

    assert (len(report.replayed), report.skipped, report.failed) == (1, 4, [])
    [(topic, sent)] = publisher.published
    assert topic == PAGES_TOPIC
    assert PageMessage.decode(sent.data) == original
    assert sent.attributes == {**original.attributes(), "replay_count": "2"}
    assert not any(k.startswith("CloudPubSubDeadLetter") for k in sent.attributes)
    # Acked: gone. The others were released, not acked, and are available at once.
    assert sorted(d.name for d in dlq.list_dead_letters(sub, clock=sub.clock)) == [
        "a.pdf",
        "a.pdf",
        "b.pdf",
        "reports/c.pdf",
    ]
    assert available(sub) == 4


def test_replaying_twice_publishes_each_message_once(sub: MemorySubscription) -> None:
    publisher = MemoryPublisher()
    first = dlq.replay(sub, publisher, PAGES_TOPIC, clock=sub.clock)
    second = dlq.replay(sub, publisher, PAGES_TOPIC, clock=sub.clock)

    assert len(first.replayed) == 4 and len(second.replayed) == 0
    assert len(publisher.published) == 4
    assert all(m.attributes["replay_count"] == "1" for _, m in publisher.published)
    assert sub.pending() == []


def test_replay_stops_at_the_limit_and_leaves_the_rest(sub: MemorySubscription) -> None:
    publisher = MemoryPublisher()
    report = dlq.replay(sub, publisher, PAGES_TOPIC, limit=1, clock=sub.clock)
    assert len(report.replayed) == len(publisher.published) == 1
    assert len(sub.pending()) == 3
    assert available(sub) == 3


def test_a_dry_run_publishes_and_acks_nothing(sub: MemorySubscription) -> None:
    publisher = MemoryPublisher()
    report = dlq.replay(sub, publisher, PAGES_TOPIC, dry_run=True, clock=sub.clock)
    assert len(report.replayed) == 4 and report.dry_run
    assert publisher.published == []
    assert available(sub) == 4


@dataclass
class FailingPublisher:
    """Refuses messages for one document, as Pub/Sub would during an outage."""

    refuse: str
    inner: MemoryPublisher = field(default_factory=MemoryPublisher)

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        if any(PageMessage.decode(m.data).source_name == self.refuse for m in messages):
            raise StorageUnavailable("publishing failed: 503")
        return self.inner.publish_all(topic, messages)


def test_a_message_that_cannot_be_published_stays(sub: MemorySubscription) -> None:
    publisher = FailingPublisher(refuse="b.pdf")
    report = dlq.replay(sub, publisher, PAGES_TOPIC, clock=sub.clock)

    assert len(report.replayed) == 3
    [(letter, why)] = report.failed
    assert letter.name == "b.pdf" and "503" in why
    assert [PageMessage.decode(r.data).source_name for r in sub.pending()] == ["b.pdf"]
    assert available(sub) == 1


class Killed(BaseException):
    """The process died (SIGKILL): nothing after this point runs, not even cleanup."""


def test_a_replay_killed_between_publish_and_ack_loses_nothing(
    sub: MemorySubscription, clock: FakeClock
) -> None:
    publisher = MemoryPublisher()

    @dataclass
    class DiesAfterPublishing:
        """The subscription as seen by a process that dies once it has published."""

        name: str = "dying"

        def pull(self, max_messages: int) -> list[Received]:
            self._alive()
            return sub.pull(max_messages)

        def set_lease(self, ack_ids: Sequence[str], seconds: int) -> None:
            self._alive()
            sub.set_lease(ack_ids, seconds)

        def ack(self, ack_ids: Sequence[str]) -> None:
            self._alive()
            sub.ack(ack_ids)

        def _alive(self) -> None:
            if publisher.published:
                raise Killed()

    with pytest.raises(Killed):
        dlq.replay(DiesAfterPublishing(), publisher, PAGES_TOPIC, clock=clock)
    published_before = len(publisher.published)
    assert published_before >= 1
    assert len(sub.pending()) == 4  # nothing acked
    assert available(sub) == 2  # the batch the dead run had pulled is still leased...
    clock.now += dlq.LEASE_SECONDS + 1  # ...until its leases run out

    report = dlq.replay(sub, publisher, PAGES_TOPIC, clock=clock)

    assert len(report.replayed) == 4
    assert sub.pending() == []
    pages = [(PageMessage.decode(m.data).source_name, m.attributes["page"]) for _, m in
             publisher.published]  # fmt: skip
    assert sorted(set(pages)) == [("a.pdf", "1"), ("a.pdf", "3"), ("b.pdf", "2"),
                                  ("reports/c.pdf", "1")]  # fmt: skip
    assert len(pages) == 4 + published_before  # the dead run's publishes, duplicated


def test_a_message_that_is_not_a_page_message_is_listed_and_replayed_as_is() -> None:
    sub = MemorySubscription()
    sub.add(b"not json", {"doc_id": "dX", "page": "4", dlq.DELIVERY_COUNT: "10"})
    [letter] = dlq.list_dead_letters(sub)
    assert (letter.name, letter.doc_id, letter.page, letter.page_message) == ("", "dX", 4, None)
    publisher = MemoryPublisher()
    dlq.replay(sub, publisher, PAGES_TOPIC, selector="dX")
    [(_, sent)] = publisher.published
    assert sent.data == b"not json"
    assert sent.attributes == {"doc_id": "dX", "page": "4", "replay_count": "1"}


def test_a_message_of_a_newer_schema_is_listed_and_replayed_as_is() -> None:
    """What a worker nacks for its schema ends here; listing must not choke on it."""
    import json

    sub = MemorySubscription()
    newer = {**json.loads(page_message("n.pdf", 2).encode()), "schema_version": 99}
    data = json.dumps(newer).encode()
    sub.add(data, {"doc_id": "dN", "page": "2", dlq.DELIVERY_COUNT: "10"})
    [letter] = dlq.list_dead_letters(sub)
    assert (letter.doc_id, letter.page, letter.page_message) == ("dN", 2, None)
    publisher = MemoryPublisher()
    dlq.replay(sub, publisher, PAGES_TOPIC, selector="dN")
    assert [m.data for _, m in publisher.published] == [data]
