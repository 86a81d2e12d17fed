"""In-memory fakes of the adapters, for tests and benchmarks. Each implements the same
protocol as the real adapter: :class:`MemoryStore` is an :class:`~ocrpipe.storage.ObjectStore`
with GCS's generation rules, :class:`MemoryPublisher` a :class:`~ocrpipe.pubsub.Publisher`,
:class:`MemorySubscription` a :class:`~ocrpipe.operations.pull.PullSubscription`."""

from __future__ import annotations

import io
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ocrpipe import naming
from ocrpipe.errors import ObjectMissing
from ocrpipe.operations.pull import Received
from ocrpipe.pubsub import OutgoingMessage
from ocrpipe.storage import ObjectInfo, crc32c_of, md5_of


class MemoryStore:
    """In-memory :class:`ObjectStore` with GCS's generation rules, for tests."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        """``clock`` gives each write its ``updated`` time (default: 0.0 for every object)."""
        self._clock = clock
        self._objects: dict[tuple[str, str], tuple[bytes, ObjectInfo]] = {}
        self._lock = threading.Lock()
        self._generation = 1000
        self.writes: list[tuple[str, str]] = []
        self.reads_opened: list[tuple[str, str]] = []

    def put(self, bucket: str, name: str, data: bytes, content_type: str = "") -> int:
        with self._lock:
            return self._put_locked(bucket, name, data, content_type)

    def _put_locked(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        self._generation += 1
        info = ObjectInfo(
            name,
            self._generation,
            len(data),
            content_type,
            updated=self._clock() if self._clock else 0.0,
            metadata=dict(metadata or {}),
            md5=md5_of(data),
            crc32c=crc32c_of(data),
        )
        self._objects[(bucket, name)] = (data, info)
        self.writes.append((bucket, name))
        return self._generation

    def read(self, bucket: str, name: str) -> bytes:
        try:
            return self._objects[(bucket, name)][0]
        except KeyError:
            raise ObjectMissing(naming.object_uri(bucket, name)) from None

    def download(
        self, bucket: str, name: str, dest: Path, *, generation: int | None = None
    ) -> None:
        data = self.read(bucket, name)
        current = self._objects[(bucket, name)][1].generation
        if generation is not None and generation != current:
            raise ObjectMissing(naming.object_uri(bucket, name, generation))
        dest.write_bytes(data)

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        entry = self._objects.get((bucket, name))
        return None if entry is None else entry[1]

    def create(self, bucket: str, name: str, data: bytes, content_type: str) -> bool:
        with self._lock:
            if (bucket, name) in self._objects:
                return False
            self._put_locked(bucket, name, data, content_type)
            return True

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str,
        *,
        if_generation_match: int,
        metadata: Mapping[str, str] | None = None,
    ) -> int | None:
        with self._lock:
            entry = self._objects.get((bucket, name))
            if (entry[1].generation if entry else 0) != if_generation_match:
                return None
            return self._put_locked(bucket, name, data, content_type, metadata)

    def upload(self, bucket: str, name: str, source: IO[bytes], content_type: str) -> int:
        return self.put(bucket, name, source.read(), content_type)

    def list(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        items = sorted(self._objects.items())
        return [info for (b, n), (_, info) in items if b == bucket and n.startswith(prefix)]

    def delete(self, bucket: str, name: str) -> None:
        self._objects.pop((bucket, name), None)

    def rewrite_in_place(self, bucket: str, name: str, generation: int) -> int | None:
        with self._lock:
            entry = self._objects.get((bucket, name))
            if entry is None or entry[1].generation != generation:
                return None
            info = entry[1]
            return self._put_locked(bucket, name, entry[0], info.content_type, info.metadata)

    def copy(
        self, source_bucket: str, source_name: str, source_generation: int, bucket: str, name: str
    ) -> int:
        with self._lock:
            entry = self._objects.get((source_bucket, source_name))
            if entry is None or entry[1].generation != source_generation:
                raise ObjectMissing(
                    naming.object_uri(source_bucket, source_name, source_generation)
                )
            data, info = entry
            return self._put_locked(bucket, name, data, info.content_type, info.metadata)

    def open_reader(self, bucket: str, name: str, generation: int) -> IO[bytes]:
        entry = self._objects.get((bucket, name))
        if entry is None or entry[1].generation != generation:
            raise ObjectMissing(naming.object_uri(bucket, name, generation))
        self.reads_opened.append((bucket, name))
        return io.BytesIO(entry[0])

    def names(self, bucket: str) -> Iterator[str]:
        return (n for (b, n) in self._objects if b == bucket)


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
