"""A long PDF through the splitter against the real emulators: every page published exactly
once, memory flat (pages are streamed, never all held), and a retry after a crash goes on
where the crash stopped. The OCR side is left out (a separate topic with a pull
subscription stands in for the worker): 300 pages of CPU OCR would take minutes.

``SPLIT_SCALE_PAGES=1000 pytest -s -k scale`` measures a longer one and prints the figures.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.api_core.exceptions import DeadlineExceeded

from ocrpipe import naming
from ocrpipe.errors import StorageUnavailable
from ocrpipe.local.pubsub_admin import ensure_topic
from ocrpipe.local.stack import LocalStack
from ocrpipe.messages import PageMessage
from ocrpipe.naming import DocumentRef
from ocrpipe.pubsub import OutgoingMessage, PubSubPublisher, subscriber_client
from ocrpipe.settings import Settings
from ocrpipe.splitter.split import split_document
from ocrpipe.storage import GcsStore
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.testing.waiting import stack_alive, wait_for

pytestmark = pytest.mark.e2e

PAGES = int(os.environ.get("SPLIT_SCALE_PAGES", "300"))
MiB = 2**20


def _rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


@dataclass
class MemorySampler:
    """Samples the RSS of this process and of the processes that join its process group
    while it samples (the render processes, and the forkserver if the split starts it; the
    stack's services run in sessions of their own) every 20 ms. A process already in the
    group is left out: in a whole run, earlier tests' subprocesses can still be there (one
    of 1.2 GB was once counted as a render process)."""

    parent_peak_kib: int = 0
    children_peak_kib: dict[int, int] = field(default_factory=dict)
    total_peak_kib: int = 0
    pids_seen: set[int] = field(default_factory=set)
    already_there: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> MemorySampler:
        self.already_there = set(self._group())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _group(self) -> list[int]:
        me, group = os.getpid(), os.getpgid(0)
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != me:
                try:
                    if os.getpgid(int(entry.name)) == group:
                        pids.append(int(entry.name))
                except ProcessLookupError:
                    continue
        return pids

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            parent = _rss_kib(os.getpid())
            joined = [pid for pid in self._group() if pid not in self.already_there]
            children = {pid: _rss_kib(pid, "VmHWM") for pid in joined}
            self.pids_seen.update(children)
            self.parent_peak_kib = max(self.parent_peak_kib, parent)
            for pid, hwm in children.items():
                self.children_peak_kib[pid] = max(self.children_peak_kib.get(pid, 0), hwm)
            self.total_peak_kib = max(self.total_peak_kib, parent + sum(children.values()))


@dataclass
class CrashAfter:
    """A real publisher that dies before its ``batches + 1``-th publish."""

    inner: PubSubPublisher
    batches: int
    calls: int = 0

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        self.calls += 1
        if self.calls > self.batches:
            raise StorageUnavailable("the instance died")
        return self.inner.publish_all(topic, messages)


@pytest.fixture(scope="module")
def gcs(stack: LocalStack) -> GcsStore:
    """This file runs the splitter in this process, on buckets and a topic of its own that no
    grant names: it talks to the raw emulators, as the stack's own setup does."""
    return GcsStore.connect(stack.project, stack.admin_settings.storage_emulator_host)


@pytest.fixture(scope="module")
def scale(stack: LocalStack, gcs: GcsStore) -> Iterator[tuple[Settings, PubSubPublisher, str]]:
    """Settings with an input bucket the splitter service does not watch and a pages topic
    no worker listens to, plus a pull subscription on it."""
    suffix = uuid.uuid4().hex[:6]
    settings = stack.admin_settings.model_copy(
        update={"input_bucket": f"scale-in-{suffix}", "pages_topic": f"scale-pages-{suffix}"}
    )
    gcs.client.create_bucket(settings.input_bucket)
    host = settings.pubsub_emulator_host
    ensure_topic(stack.project, settings.pages_topic, host)
    subscriber = subscriber_client(host)
    subscription = subscriber.subscription_path(stack.project, f"scale-pull-{suffix}")
    subscriber.create_subscription(
        request={
            "name": subscription,
            "topic": f"projects/{stack.project}/topics/{settings.pages_topic}",
        }
    )
    subscriber.close()
    yield settings, PubSubPublisher.connect(stack.project, host), subscription


def pull_all(stack: LocalStack, subscription: str, expected: int) -> list[PageMessage]:
    """Every message on the subscription: pulls until ``expected`` arrived (failing only when
    none comes for a generous while, or a part of the stack dies), then once more to catch
    any extra (a page published twice)."""
    subscriber = subscriber_client(stack.admin_settings.pubsub_emulator_host)
    found: list[PageMessage] = []

    def pull(timeout: float) -> int:
        try:
            reply = subscriber.pull(
                request={"subscription": subscription, "max_messages": 1000}, timeout=timeout
            )
        except DeadlineExceeded:
            return len(found)
        found.extend(PageMessage.decode(r.message.data) for r in reply.received_messages)
        if reply.received_messages:
            subscriber.acknowledge(
                request={
                    "subscription": subscription,
                    "ack_ids": [r.ack_id for r in reply.received_messages],
                }
            )
        return len(found)

    wait_for(
        lambda: pull(10),
        lambda count: count >= expected,
        what=f"{expected} page messages",
        alive=stack_alive(stack),
    )
    pull(2)
    subscriber.close()
    return found


def upload_long_pdf(gcs: GcsStore, settings: Settings, pages: int) -> DocumentRef:
    data, _ = text_pdf(pages)
    name = f"long-{uuid.uuid4().hex[:8]}.pdf"
    blob = gcs.client.bucket(settings.input_bucket).blob(name)
    blob.upload_from_string(data, content_type="application/pdf")
    return DocumentRef(settings.input_bucket, name, int(blob.generation))


def test_a_long_pdf_is_split_in_flat_memory_and_published_once(
    stack: LocalStack, gcs: GcsStore, scale: tuple[Settings, PubSubPublisher, str]
) -> None:
    settings, publisher, subscription = scale
    doc = upload_long_pdf(gcs, settings, PAGES)
    baseline = _rss_kib(os.getpid())
    started = time.monotonic()
    with MemorySampler() as memory:
        outcome = split_document(doc, gcs, publisher, settings)
    elapsed = time.monotonic() - started
    assert (outcome.page_count, outcome.published, outcome.failed) == (PAGES, PAGES, 0)

    messages = pull_all(stack, subscription, PAGES)
    assert Counter(m.page for m in messages) == Counter(range(1, PAGES + 1))
    assert {m.doc_id for m in messages} == {doc.doc_id}
    images = [
        o
        for o in gcs.list(settings.work_bucket, naming.work_prefix(doc.doc_id))
        if o.name.endswith((".png", ".jpg"))
    ]
    image_mib = sum(o.size for o in images) / MiB
    assert len(images) == PAGES

    parent_growth_mib = (memory.parent_peak_kib - baseline) / 1024
    child_peak_mib = max(memory.children_peak_kib.values(), default=0) / 1024
    print(
        f"\n{PAGES} pages split in {elapsed:.1f} s ({PAGES / elapsed:.0f} pages/s) with"
        f" {settings.render_processes} render processes; images {image_mib:.0f} MiB in all;"
        f" parent RSS {baseline / 1024:.0f} -> peak {memory.parent_peak_kib / 1024:.0f} MiB"
        f" (+{parent_growth_mib:.0f}); largest render process peak {child_peak_mib:.0f} MiB;"
        f" parent + children peak {memory.total_peak_kib / 1024:.0f} MiB;"
        f" processes that joined the group {len(memory.pids_seen)}"
        f" (already in it: {len(memory.already_there)})"
    )
    # Holding every image (or every message) would grow the parent by the images' size
    # (about 20 MiB of one-channel PNGs for 300 text pages).
    assert image_mib > 15 and parent_growth_mib < image_mib / 2, (image_mib, parent_growth_mib)
    assert child_peak_mib < 300, child_peak_mib


def test_a_retry_after_a_crash_goes_on_without_publishing_a_page_twice(
    stack: LocalStack, gcs: GcsStore, scale: tuple[Settings, PubSubPublisher, str]
) -> None:
    settings, publisher, subscription = scale
    pages = min(PAGES, 250)
    doc = upload_long_pdf(gcs, settings, pages)
    with pytest.raises(StorageUnavailable):
        split_document(doc, gcs, CrashAfter(publisher, batches=1), settings)
    first = pull_all(stack, subscription, 100)
    assert sorted(m.page for m in first) == list(range(1, 101))

    outcome = split_document(doc, gcs, publisher, settings)
    assert outcome.published == pages - 100
    second = pull_all(stack, subscription, pages - 100)
    assert Counter(m.page for m in first + second) == Counter(range(1, pages + 1))
