"""Following the documents topic (``ocrpipe follow``): each document's notification as it
lands, read from a pull subscription.

Without a subscription of one's own, :func:`new_subscription_name` names one
(``ocrpipe-follow-<random>``) that the caller creates on the documents topic and deletes
when done: that needs the right to create subscriptions (the project's owner, or Pub/Sub
Editor; on the local stack, the ``owner`` identity). A new subscription receives only what
is published after it exists. With a name, the caller reads that subscription (one the
project's owner created and granted, docs/OPERATIONS.md) and leaves it in place.

Delivery is at least once: :class:`Follower` shows a notification once per ``doc_id`` and
``state``, as docs/OPERATIONS.md tells subscribers to. Every message it pulls is
acknowledged, also one outside ``prefix`` or one that is not a notification (it is only
counted): follow with a subscription no one else reads.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from ocrpipe.notifications import DocumentNotification
from ocrpipe.operations.pull import PullSubscription

PULL_BATCH = 100


def new_subscription_name() -> str:
    return f"ocrpipe-follow-{secrets.token_hex(4)}"


@dataclass
class Follower:
    subscription: PullSubscription
    prefix: str = ""
    seen: set[tuple[str, str]] = field(default_factory=set)
    unreadable: int = 0  # messages that were not a document notification

    def poll(self) -> list[DocumentNotification]:
        """The new notifications of one pull (which waits a few seconds when none is
        there), after acknowledging every message pulled."""
        received = self.subscription.pull(PULL_BATCH)
        fresh: list[DocumentNotification] = []
        for message in received:
            try:
                note = DocumentNotification.model_validate_json(message.data)
            except ValidationError:
                self.unreadable += 1
                continue
            key = (note.doc_id, note.state)
            if key not in self.seen and note.source_name.startswith(self.prefix):
                self.seen.add(key)
                fresh.append(note)
        if received:
            self.subscription.ack([message.ack_id for message in received])
        return fresh


def follow(
    follower: Follower,
    on_note: Callable[[DocumentNotification], None],
    *,
    count: int | None = None,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Pull until ``count`` notifications were shown (True) or ``timeout`` seconds passed
    (False); without either, until interrupted."""
    deadline = None if timeout is None else clock() + timeout
    shown = 0
    while count is None or shown < count:
        if deadline is not None and clock() >= deadline:
            return False
        for note in follower.poll():
            on_note(note)
            shown += 1
            if count is not None and shown >= count:
                break
    return True
