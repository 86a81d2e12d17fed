"""A backlog that outlives Pub/Sub, on the real local stack: mid-batch every message of the
pages subscription is dropped (the subscription is seeked to now, which is what an expired
backlog looks like to the pipeline), then ``ocrpipe reconcile`` runs as the reconciler
identity, through the IAM proxies. Every document finishes, every page is written once,
and ``status`` never showed a document done before its pages were. The same with the page
images deleted too (their retention ran out): the reconciler renders them again."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from google.protobuf import timestamp_pb2
from typer.testing import CliRunner

from ocrpipe import cli, naming
from ocrpipe.local.stack import LocalStack, fault_stack
from ocrpipe.operations.status import document_status
from ocrpipe.pubsub import subscriber_client
from ocrpipe.settings import Settings
from ocrpipe.storage import GcsStore, ObjectInfo
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.testing.waiting import stack_activity, stack_alive, wait_for
from tests.conftest import wait_until_finished

pytestmark = pytest.mark.e2e

DOCUMENTS, PAGES = 4, 6
STILL = 10.0  # seconds without a change that make "nothing is moving"


@pytest.fixture
def slow_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """Its OCR server serves 2 pages at a time, 1 s each, and 2 deliveries are open at a
    time: a batch lasts long enough, and most of it waits in the subscription, to drop its
    messages halfway."""
    with fault_stack("--batch-size", "2", "--service-time", "1", log_dir=tmp_path / "logs",
                     overrides={"local_delivery_max_in_flight": 2}) as stack:  # fmt: skip
        yield stack


@dataclass
class StatusWatch:
    """Polls ``status`` of every document in a thread, as a user would, and keeps every
    answer with the time it was given."""

    store: GcsStore
    settings: Settings
    names: list[str]
    seen: list[tuple[float, str, str]] = field(default_factory=list)  # (when, name, state)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> StatusWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def observe(self) -> None:
        for name in self.names:
            state = document_status(self.store, self.settings, name).state
            self.seen.append((time.time(), name, state))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.observe()
            self._stop.wait(0.3)


def page_objects(store: GcsStore, settings: Settings) -> list[ObjectInfo]:
    return [o for o in store.list(settings.output_bucket, "") if "/pages/" in o.name]


def ocr_in_flight(stack: LocalStack) -> int:
    stats = httpx.get(f"http://127.0.0.1:{stack.ports.ocr}/stats", timeout=10).json()
    return int(stats["in_flight"])


def settled(stack: LocalStack, store: GcsStore, settings: Settings) -> int:
    """Wait until the deliveries that were open when the relay stopped have ended: no page at
    the OCR server, no new page result and no line in the worker's or splitter's log for
    STILL seconds (only a stack part that died fails it; nothing bounds how long the open
    deliveries take). Returns the page results."""
    reading: tuple[int, tuple[int, ...]] | None = None
    since = time.monotonic()
    alive = stack_alive(stack)
    while True:
        assert (reason := alive()) is None, reason
        latest = (len(page_objects(store, settings)), stack_activity(stack))
        if latest != reading or ocr_in_flight(stack):
            reading, since = latest, time.monotonic()
        elif time.monotonic() - since >= STILL:
            return latest[0]
        time.sleep(0.3)


def queued_messages(stack: LocalStack) -> int:
    """How many messages the pages subscription hands out now (pulled and left to expire:
    only called while nothing else pulls, and only to show that there are none)."""
    admin = stack.admin_settings
    subscriber = subscriber_client(admin.pubsub_emulator_host)
    path = subscriber.subscription_path(stack.project, admin.pages_subscription)
    pulled = subscriber.pull(request={"subscription": path, "max_messages": 100}, timeout=30)
    subscriber.close()
    return len(pulled.received_messages)


def drop_every_message(stack: LocalStack) -> None:
    """Seek the pages subscription to now: every message published before is acknowledged,
    as Pub/Sub drops messages past the subscription's retention."""
    admin = stack.admin_settings
    subscriber = subscriber_client(admin.pubsub_emulator_host)
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    path = subscriber.subscription_path(stack.project, admin.pages_subscription)
    subscriber.seek(request={"subscription": path, "time": now})
    subscriber.close()


def pages_written(log: Path) -> Counter[tuple[str, int]]:
    """(doc_id, page) -> how many deliveries created that page's Markdown, from the worker's
    log (a delivery that finds it already written says so instead)."""
    found: Counter[tuple[str, int]] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if '"page written"' not in line:
            continue
        entry = json.loads(line)
        if entry["logger"] == "ocrpipe.worker.page_work":  # the writer, not the app's summary
            labels = entry["logging.googleapis.com/labels"]
            found[(labels["doc_id"], int(labels["page"]))] += 1
    return found


def run_batch_and_drop_midway(
    stack: LocalStack, tag: str, *, delete_images: bool
) -> tuple[list[str], StatusWatch, dict[str, object]]:
    settings = stack.settings
    store = GcsStore.connect(stack.project, settings.storage_emulator_host)
    admin = GcsStore.connect(stack.project, stack.admin_settings.storage_emulator_host)
    names = [f"backlog-{tag}/doc-{i}.pdf" for i in range(DOCUMENTS)]
    watch = StatusWatch(store, settings, names)
    with watch:
        bucket = store.client.bucket(settings.input_bucket)
        for index, name in enumerate(names):
            bucket.blob(name).upload_from_string(text_pdf(PAGES, seed=index, lines=2)[0])
        wait_for(
            lambda: (len(page_objects(store, settings)), stack_activity(stack)),
            lambda reading: reading[0] >= 4,
            what="the first pages",
            alive=stack_alive(stack),
        )
        stack.pause_delivery()
        drop_every_message(stack)
        at_drop = settled(stack, store, settings)
        assert at_drop < DOCUMENTS * PAGES, "the batch finished before its messages were dropped"
        # Nothing is left to deliver: without the reconciler the batch is stuck where it is.
        assert queued_messages(stack) == 0
        if delete_images:
            gone = [o.name for o in admin.list(settings.work_bucket, "pages/") if
                    o.name.endswith(".png")]  # fmt: skip
            for name in gone:
                admin.delete(settings.work_bucket, name)
        stack.start_relay()
        stuck = [n for n in names if not document_status(store, settings, n).finished_state]
        assert stuck, "every document finished without its dropped pages"

        env = stack.env("reconciler")
        args = ["reconcile", "--prefix", f"backlog-{tag}/", "--lost-after", "0", "--json"]
        result = CliRunner().invoke(cli.app, args, env=env)
        assert result.exit_code == 0, result.output
        report: dict[str, object] = json.loads(result.output)
        print(f"{tag}: {at_drop} page results at the drop; reconcile: {report}")
        for name in names:
            assert wait_until_finished(stack, store, name).state == "done"
    watch.observe()  # what a user asking now is told (the thread may not have asked since)
    return names, watch, report


def check_written_once_and_never_done_early(
    stack: LocalStack, names: list[str], watch: StatusWatch
) -> None:
    settings = stack.settings
    store = GcsStore.connect(stack.project, settings.storage_emulator_host)
    assert stack.log_dir is not None
    written = pages_written(stack.log_dir / "worker.log")
    for name in names:
        info = store.stat(settings.input_bucket, name)
        assert info is not None
        doc = naming.DocumentRef(settings.input_bucket, name, info.generation)
        pages = [(doc.doc_id, n) for n in range(1, PAGES + 1)]
        assert {p: written[p] for p in pages} == dict.fromkeys(pages, 1)
        last_page = max(o.updated for o in store.list(settings.output_bucket,
                                                      naming.pages_prefix(doc)))  # fmt: skip
        done_at = [when for when, seen, state in watch.seen if seen == name and state == "done"]
        assert done_at, f"status never showed {name} done"
        assert min(done_at) >= last_page, f"{name} shown done before its last page landed"
        markdown = store.read(settings.output_bucket, naming.document_markdown_name(doc))
        assert markdown.count(b"<!-- page ") == PAGES


def test_a_dropped_backlog_is_put_back_by_the_reconciler(slow_stack: LocalStack) -> None:
    names, watch, report = run_batch_and_drop_midway(slow_stack, "drop", delete_images=False)
    assert isinstance(report["requeued_pages"], int) and report["requeued_pages"] > 0
    assert report["rendered"] == 0
    assert report["refreshed"] == 0  # published again days before its image could expire
    check_written_once_and_never_done_early(slow_stack, names, watch)


def test_dropped_messages_whose_images_expired_are_rendered_again(
    slow_stack: LocalStack,
) -> None:
    names, watch, report = run_batch_and_drop_midway(slow_stack, "expired", delete_images=True)
    assert isinstance(report["rendered"], int) and report["rendered"] > 0
    assert report["rendered"] == report["requeued_pages"]
    check_written_once_and_never_done_early(slow_stack, names, watch)
