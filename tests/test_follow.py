"""ocrpipe follow's core on an in-memory subscription: each document shown once per state,
only under the prefix, every message acknowledged, and it stops at --count or --timeout."""

from __future__ import annotations

from ocrpipe import notifications
from ocrpipe.naming import DocumentRef
from ocrpipe.notifications import DocumentNotification
from ocrpipe.operations.follow import Follower, follow
from ocrpipe.testing.clock import FakeClock
from ocrpipe.testing.memory import MemorySubscription


def note(name: str, state: str = "done") -> DocumentNotification:
    doc = DocumentRef("in", name, 7)
    failed = {1: "ocr_repetition_loop"} if state != "done" else {}
    made = notifications.assembled(doc, "out", page_count=1 if state != "partial" else 2,
                                   failed_reasons=failed)  # fmt: skip
    assert made.state == state
    return made


def test_each_document_is_shown_once_per_state_and_every_message_is_acked() -> None:
    subscription = MemorySubscription()
    for made in (note("a/one.pdf"), note("a/one.pdf"), note("a/two.pdf", "partial"),
                 note("b/other.pdf"), note("a/two.pdf", "failed")):  # fmt: skip
        subscription.add(made.encode(), made.attributes())
    subscription.add(b"not json", {})
    follower = Follower(subscription, prefix="a/")
    shown: list[tuple[str, str]] = []

    assert follow(follower, lambda n: shown.append((n.source_name, n.state)), count=3)

    assert shown == [("a/one.pdf", "done"), ("a/two.pdf", "partial"), ("a/two.pdf", "failed")]
    assert follower.unreadable == 1
    assert subscription.pending() == []  # nothing left to redeliver


def test_it_stops_at_the_timeout_when_fewer_documents_came() -> None:
    clock = FakeClock()
    subscription = MemorySubscription(clock=clock)
    made = note("x.pdf")
    subscription.add(made.encode(), made.attributes())

    class Waiting(Follower):
        def poll(self) -> list[DocumentNotification]:
            clock.now += 3  # a pull waits a few seconds when nothing is there
            return super().poll()

    shown: list[str] = []
    done = follow(Waiting(subscription), lambda n: shown.append(n.source_name), count=2,
                  timeout=10, clock=clock)  # fmt: skip
    assert (done, shown) == (False, ["x.pdf"])
