"""Publishing many messages: in batches of PUBLISH_BATCH, in order, each confirmed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ocrpipe.pubsub import PUBLISH_BATCH, OutgoingMessage, publish_batched
from ocrpipe.testing.memory import MemoryPublisher


@dataclass
class CountingPublisher(MemoryPublisher):
    calls: list[int] = field(default_factory=list)

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        self.calls.append(len(messages))
        return super().publish_all(topic, messages)


def test_many_messages_go_out_in_batches_in_order() -> None:
    messages = [OutgoingMessage(str(n).encode(), {}) for n in range(2 * PUBLISH_BATCH + 7)]
    publisher = CountingPublisher()
    assert publish_batched(publisher, "pages", messages) == len(messages)
    assert publisher.calls == [PUBLISH_BATCH, PUBLISH_BATCH, 7]
    assert [m for _, m in publisher.published] == messages
    assert publish_batched(publisher, "pages", []) == 0 and len(publisher.calls) == 3
