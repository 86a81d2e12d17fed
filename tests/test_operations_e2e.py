"""Operating the pipeline on the local stack: pages that keep failing are dead-lettered,
listed without being consumed, replayed once the OCR server is healthy again (also by runs
that are killed halfway) and completed exactly once; failed pages and whole documents are
retried.

This module runs its own stack, changed in two ways so that a page reaches the dead-letter
topic in seconds rather than half an hour: the worker gets a 2 s OCR budget (a page the
fault server always answers 503 fails a delivery in about 2 s), and the pages subscription
(pull locally, delivered by the stack's relay) loses its retry policy. The emulator honours
``retry_minimum_backoff_seconds`` for the relay's nacks (measured: redeliveries 0, 13, 21,
23 s apart with 10..600 s; at once without a policy), so ten deliveries with the production
policy take minutes. ``max_delivery_attempts``, the ack
deadline and the dead-letter topic stay as in production. The OCR server is switched
between a faulty and a healthy fault server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from ocrpipe import cli, naming, records
from ocrpipe.local.stack import LocalStack, fault_stack, settings_env
from ocrpipe.messages import PageMessage
from ocrpipe.naming import DocumentRef
from ocrpipe.operations import dead_letters as dlq
from ocrpipe.operations.pull import PubSubPullSubscription, Received
from ocrpipe.pubsub import OutgoingMessage, PubSubPublisher, publisher_client, subscriber_client
from ocrpipe.storage import GcsStore
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.testing.waiting import stack_activity, stack_alive, wait_for
from ocrpipe.topology import load_topology
from tests.conftest import (
    output_uploads,
    unique_name,
    wait_for_object,
    wait_until_announced,
    wait_until_finished,
)

pytestmark = pytest.mark.e2e

DEAD_LETTER_ATTRIBUTES = {
    "CloudPubSubDeadLetterSourceDeliveryCount",
    "CloudPubSubDeadLetterSourceSubscription",
    "CloudPubSubDeadLetterSourceSubscriptionProject",
    "CloudPubSubDeadLetterSourceTopicPublishTime",
}
runner = CliRunner()


SEED = 5


@pytest.fixture(scope="module")
def ops_stack() -> Iterator[LocalStack]:
    stack = fault_stack(
        seed=SEED,
        gcs_log_level="info",  # every request logged: uploads are counted from the log
        overrides={"ocr_budget_s": 2},
    )
    with stack:
        redeliver_quickly(stack)
        yield stack


def redeliver_quickly(stack: LocalStack) -> None:
    """Drop the pages subscription's retry policy: the emulator then redelivers ~1 s after
    a nack. Everything else (dead-letter policy, ack deadline) is left as created."""
    from google.protobuf import field_mask_pb2

    settings = stack.admin_settings  # the topology is terraform's, past the proxies
    subscriber = subscriber_client(settings.pubsub_emulator_host)
    path = subscriber.subscription_path(stack.project, settings.pages_subscription)
    subscriber.update_subscription(
        request={
            "subscription": {"name": path},
            "update_mask": field_mask_pb2.FieldMask(paths=["retry_policy"]),
        }
    )
    current = subscriber.get_subscription(request={"subscription": path})
    subscriber.close()
    assert not current.retry_policy.minimum_backoff.seconds, current
    assert current.dead_letter_policy.max_delivery_attempts == load_topology().max_delivery_attempts


@pytest.fixture(scope="module")
def store(ops_stack: LocalStack) -> GcsStore:
    return GcsStore.connect(ops_stack.project, ops_stack.settings.storage_emulator_host)


def use_ocr(stack: LocalStack, *faults: str) -> None:
    """Replace the OCR server by a fault server with these faults (none: a healthy one)."""
    stack.use_fault_server(*faults, seed=SEED)


def ocrpipe(stack: LocalStack, *args: str) -> Result:
    """The CLI in this process, configured the way a user's shell would be."""
    return runner.invoke(cli.app, list(args), env=settings_env(stack.settings))


def json_of(result: Result) -> Any:
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def upload(stack: LocalStack, store: GcsStore, stem: str, pages: int) -> DocumentRef:
    settings = stack.settings
    name = unique_name(stem)
    blob = store.client.bucket(settings.input_bucket).blob(name)
    blob.upload_from_string(text_pdf(pages, seed=pages, lines=3)[0], content_type="application/pdf")
    return DocumentRef(settings.input_bucket, name, int(blob.generation))


def dead_letters(stack: LocalStack, names: set[str]) -> list[dlq.DeadLetter]:
    settings = stack.settings
    subscription = PubSubPullSubscription.connect(
        stack.project, settings.dead_letter_subscription, settings.pubsub_emulator_host
    )
    try:
        return [d for d in dlq.list_dead_letters(subscription) if d.name in names]
    finally:
        subscription.close()


# Where a replay process is killed: at once, or when the operator's Pub/Sub proxy records its
# first call needing this permission.
REPLAY_KILL_POINTS = (
    ("its start", None),
    ("its first publish", "pubsub.topics.publish"),
    ("its first pull", "pubsub.subscriptions.consume"),
)


def pubsub_usage_size(stack: LocalStack) -> int:
    path = stack.usage_files[0]
    return path.stat().st_size if path.exists() else 0


def operator_called(stack: LocalStack, since: int, permission: str) -> bool:
    """Whether the operator made a Pub/Sub call needing ``permission`` (recorded by its proxy
    after byte ``since`` of the usage file)."""
    lines = stack.usage_files[0].read_bytes()[since:].decode().splitlines()
    return any(
        decision["identity"] == "operator" and decision["permission"] == permission
        for decision in (json.loads(line) for line in lines if line.endswith("}"))
    )


def kill_replay_at(stack: LocalStack, point: str, permission: str | None) -> None:
    """Start ``ocrpipe dlq replay`` and SIGKILL it once it makes its first call needing
    ``permission`` (``None``: at once); fail if it exits before."""
    since = pubsub_usage_size(stack)
    process = subprocess.Popen(
        [sys.executable, "-m", "ocrpipe.cli", "dlq", "replay"],
        env=settings_env(stack.settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if permission is not None:
            reached, code = wait_for(
                lambda: (operator_called(stack, since, permission), process.poll()),
                lambda reading: reading[0] or reading[1] is not None,
                what=f"a replay run to reach {point}",
                alive=stack_alive(stack),
                interval=0.01,
            )
            assert reached, f"a replay run exited with {code} before {point}"
    finally:
        process.kill()
        process.wait(timeout=30)


def wait_for_dead_letters(stack: LocalStack, names: set[str], count: int) -> list[dlq.DeadLetter]:
    """Until at least ``count`` of ``names``' pages are in the dead-letter subscription (on
    progress: the stack's deliveries move the wait too)."""
    letters, _ = wait_for(
        lambda: (dead_letters(stack, names), stack_activity(stack)),
        lambda reading: len(reading[0]) >= count,
        what=f"{count} dead-lettered pages",
        alive=stack_alive(stack),
        interval=2,
    )
    return letters


def gcs_log(stack: LocalStack) -> Path:
    """fake-gcs-server's request log (every request: the stack logs at info)."""
    assert stack.log_dir is not None
    return stack.log_dir / "gcs.log"


def outputs(stack: LocalStack, store: GcsStore, doc: DocumentRef) -> dict[str, int]:
    """Every output object of one document generation: name -> object generation."""
    objects = store.list(stack.settings.output_bucket, naming.output_prefix(doc))
    return {o.name: o.generation for o in objects}


class Killed(BaseException):
    """The replay process is gone: nothing after this reaches Pub/Sub, not even cleanup."""


@dataclass
class DiesAfterFirstPublish:
    """Publisher and dead-letter subscription as a replay process sees them when it is
    SIGKILLed right after its first confirmed publish: no ack, no release follows."""

    subscription: PubSubPullSubscription
    publisher: PubSubPublisher
    sent: list[tuple[str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.subscription.name

    def publish_all(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        with self._lock:
            self._alive()
            ids = self.publisher.publish_all(topic, messages)
            self.sent += [(PageMessage.decode(m.data).source_name,
                           PageMessage.decode(m.data).page) for m in messages]  # fmt: skip
            return ids

    def pull(self, max_messages: int) -> list[Received]:
        self._alive()
        return self.subscription.pull(max_messages)

    def set_lease(self, ack_ids: Sequence[str], seconds: int) -> None:
        self._alive()
        self.subscription.set_lease(ack_ids, seconds)

    def ack(self, ack_ids: Sequence[str]) -> None:
        self._alive()
        self.subscription.ack(ack_ids)

    def _alive(self) -> None:
        if self.sent:
            raise Killed()


def test_the_dead_letter_topic_has_a_pull_subscription(ops_stack: LocalStack) -> None:
    settings = ops_stack.admin_settings  # the topology as created, past the proxies
    publisher = publisher_client(settings.pubsub_emulator_host)
    topic = publisher.topic_path(ops_stack.project, settings.dead_letter_topic)
    subscriptions = list(publisher.list_topic_subscriptions(request={"topic": topic}))
    publisher.transport.close()
    expected = f"projects/{ops_stack.project}/subscriptions/{settings.dead_letter_subscription}"
    assert subscriptions == [expected]


def test_dead_letters_are_listed_replayed_and_every_page_is_written_once(
    ops_stack: LocalStack, store: GcsStore
) -> None:
    stack, settings = ops_stack, ops_stack.settings
    use_ocr(stack, "--p503", "1.0")
    docs = [upload(stack, store, "dlq-a", 1), upload(stack, store, "dlq-b", 2),
            upload(stack, store, "dlq-c", 1)]  # fmt: skip
    names = {d.name for d in docs}
    two_pages = docs[1].name

    # 1. Every page keeps failing until Pub/Sub gives up on it.
    letters = wait_for_dead_letters(stack, names, 4)
    assert len(letters) == 4, letters

    # 2. `dlq list` shows them with what Pub/Sub added, and consumes nothing.
    listed = [d for d in json_of(ocrpipe(stack, "dlq", "list", "--json")) if d["name"] in names]
    assert sorted((d["name"], d["page"]) for d in listed) == sorted(
        [(docs[0].name, 1), (two_pages, 1), (two_pages, 2), (docs[2].name, 1)]
    )
    for entry in listed:
        assert set(entry["attributes"]) >= DEAD_LETTER_ATTRIBUTES
        assert entry["delivery_count"] == load_topology().max_delivery_attempts
        assert entry["source_subscription"] == settings.pages_subscription
        assert entry["attributes"]["CloudPubSubDeadLetterSourceSubscriptionProject"] == (
            stack.project
        )
        assert entry["first_published"] and entry["dead_lettered"]
        assert entry["replay_count"] == 0 and "last_error" not in entry
        doc = next(d for d in docs if d.name == entry["name"])
        assert entry["doc_id"] == doc.doc_id and entry["generation"] == doc.generation
    again = json_of(ocrpipe(stack, "dlq", "list", "--json"))
    assert {d["message_id"] for d in listed} <= {d["message_id"] for d in again}
    only_b = json_of(ocrpipe(stack, "dlq", "list", "--doc", two_pages, "--json"))
    assert sorted(d["page"] for d in only_b) == [1, 2]
    assert len(json_of(ocrpipe(stack, "dlq", "list", "--limit", "1", "--json"))) == 1
    human = ocrpipe(stack, "dlq", "list", "--doc", "tests/dlq-b-*")
    assert human.exit_code == 0 and "2 message(s)" in human.stdout

    # The documents wait with pages pending, which status shows in the dead-letter topic
    # (the worker recorded each failed delivery): `wait` says so at once (exit 1).
    status = json_of(ocrpipe(stack, "status", two_pages, "--json"))
    assert (status["state"], status["pending"], status["done"]) == ("running", 2, 0)
    assert (status["dead_lettered"], status["retrying"]) == (2, 0)
    stuck = ocrpipe(stack, "wait", two_pages, "--timeout", "600")
    assert stuck.exit_code == cli.Exit.FAILED, stuck.output
    assert "2 page(s) in the dead-letter topic" in stuck.output

    # A dry run publishes and acks nothing.
    dry = json_of(ocrpipe(stack, "dlq", "replay", "--dry-run", "--doc", "tests/dlq-*", "--json"))
    assert (dry["dry_run"], dry["replayed"], dry["failed"]) == (True, 4, 0)
    assert len(dead_letters(stack, names)) == 4

    # 3. The OCR server is fixed.
    use_ocr(stack)
    log_offset = gcs_log(stack).stat().st_size

    # 4. One message.
    one = json_of(ocrpipe(stack, "dlq", "replay", "--limit", "1", "--json"))
    assert (one["replayed"], one["failed"]) == (1, 0)
    assert len(dead_letters(stack, names)) == 3

    # A replay that dies right after its first confirmed publish: the page gets written,
    # and its message is still dead-lettered once the dead run's leases run out.
    dying = DiesAfterFirstPublish(
        PubSubPullSubscription.connect(
            stack.project, settings.dead_letter_subscription, settings.pubsub_emulator_host
        ),
        PubSubPublisher.connect(stack.project, settings.pubsub_emulator_host),
    )
    with pytest.raises(Killed):
        dlq.replay(dying, dying, settings.pages_topic, selector="tests/dlq-*")
    dying.subscription.close()
    [(killed_name, killed_page)] = dying.sent
    killed_doc = next(d for d in docs if d.name == killed_name)
    page_md = naming.page_markdown_name(killed_doc, killed_page)
    wait_for_object(stack, store, settings.output_bucket, page_md)  # the dead run's publish
    left = wait_for_dead_letters(stack, names, 3)  # once the dead run's leases run out
    assert (killed_name, killed_page) in {(d.name, d.page) for d in left}

    # Replay processes killed (SIGKILL) at points they are seen to reach: before any call,
    # at the first publish (it holds leases, some pages sent, none acked), at the first pull.
    for point, permission in REPLAY_KILL_POINTS:
        kill_replay_at(stack, point, permission)
    # What the killed runs leased is hidden until the lease lapses: dlq.LEASE_SECONDS once a
    # run set it, the subscription's ack deadline for what it had only pulled. Pub/Sub's own
    # clock decides, so this is a lower bound on waiting, not a race.
    hidden_s = max(dlq.LEASE_SECONDS, load_topology().dead_letter_ack_deadline_seconds)
    leases_lapsed_at = time.monotonic() + hidden_s + 5

    # 5. Replay until every document is done and a replay ran after the killed runs' leases
    # lapsed: what they leased comes back then, and nothing is lost.
    def replay_then_states() -> tuple[list[str], bool]:
        lapsed = time.monotonic() > leases_lapsed_at
        result = ocrpipe(stack, "dlq", "replay", "--doc", "tests/dlq-*", "--json")
        assert result.exit_code == 0, result.output
        states = [json_of(ocrpipe(stack, "status", d.name, "--json"))["state"] for d in docs]
        return sorted(states), lapsed

    wait_for(
        lambda: (replay_then_states(), stack_activity(stack)),
        lambda reading: set(reading[0][0]) == {"done"} and reading[0][1],
        what="replays to finish every document",
        alive=stack_alive(stack),
        interval=3,
    )
    for doc in docs:
        final = wait_until_announced(stack, store, doc.name)
        assert final.state == "done", final

    # Every page exactly once: each Markdown object exists, and since the OCR server was
    # fixed the output bucket got exactly one successful upload per object written (only
    # these documents were being written meanwhile; a duplicate would be a 412 or a 200 more).
    written = {}
    for doc, pages in zip(docs, (1, 2, 1), strict=True):
        objects = outputs(stack, store, doc)
        expected = {naming.page_markdown_name(doc, n) for n in range(1, pages + 1)}
        assert {n for n in objects if "/pages/" in n} == expected
        written.update(
            {n: g for n, g in objects.items()
             if not n.endswith("manifest.json") and "/attempts/" not in n}
        )  # fmt: skip
        latest = store.stat(stack.settings.output_bucket, naming.latest_name(doc.name))
        assert latest is not None
        written[latest.name] = latest.generation
    # Per document: its pages, document.md, document.json and @latest.json, each once;
    # and the record of each replay of a page that the CLI wrote (status shows it queued).
    replayed = [
        a
        for doc in docs
        for info in store.list(settings.output_bucket, naming.attempts_prefix(doc))
        if (a := records.parse_attempt(info.metadata)) is not None and a.kind == records.REPLAYED
    ]
    # (a replay killed between its ack and its records leaves none: the count says so)
    assert replayed and {a.page for a in replayed} <= {1, 2}
    assert len(written) == 4 + 3 * 3
    uploads = output_uploads([(gcs_log(stack), log_offset)], settings.output_bucket)
    assert uploads["200"] == len(written) + len(replayed)
    assert dead_letters(stack, names) == []

    # 6. A second replay changes nothing.
    again_report = json_of(ocrpipe(stack, "dlq", "replay", "--doc", "tests/dlq-*", "--json"))
    assert (again_report["replayed"], again_report["failed"]) == (0, 0)  # it published nothing
    for doc in docs:
        assert all(written[n] == g for n, g in outputs(stack, store, doc).items() if n in written)
    assert ocrpipe(stack, "wait", *sorted(names), "--timeout", "10").exit_code == cli.Exit.OK


def test_failed_pages_and_whole_documents_are_retried(
    ops_stack: LocalStack, store: GcsStore
) -> None:
    stack, settings = ops_stack, ops_stack.settings
    use_ocr(stack, "--plength", "1.0", "--loop-always")  # every page fails for good
    doc = upload(stack, store, "retry", 2)
    name = doc.name

    final = wait_until_finished(stack, store, name)
    assert final.state == "failed"
    assert ocrpipe(stack, "wait", name, "--timeout", "30").exit_code == cli.Exit.FAILED
    status = json_of(ocrpipe(stack, "status", name, "--json"))
    assert {n: e["reason"] for n, e in status["page_errors"].items()} == {
        "1": "ocr_repetition_loop",
        "2": "ocr_repetition_loop",
    }
    assert status["elapsed_s"] is not None and status["finished"] is not None
    human = ocrpipe(stack, "status", name)
    assert human.exit_code == 0 and "ocr_repetition_loop" in human.stdout
    assert ocrpipe(stack, "status", "tests/no-such.pdf").exit_code == cli.Exit.FAILED

    use_ocr(stack)
    dry = ocrpipe(stack, "retry", name, "--failed-only", "--dry-run")
    assert dry.exit_code == 0 and "would re-queue pages 1, 2" in dry.stdout
    assert json_of(ocrpipe(stack, "status", name, "--json"))["state"] == "failed"

    # Failed pages only: the same generation, every page written once more, then assembled.
    retried = ocrpipe(stack, "retry", name, "--failed-only")
    assert retried.exit_code == 0, retried.output
    final = wait_until_finished(stack, store, name)
    assert (final.state, final.generation, final.done, final.failed) == (
        "done", doc.generation, 2, 0)  # fmt: skip
    objects = outputs(stack, store, doc)
    assert not any(n.endswith(".error.json") for n in objects)
    document = store.read(settings.output_bucket, naming.document_markdown_name(doc)).decode()
    assert "page-sha256:" in document and "failed" not in document.lower()
    nothing = ocrpipe(stack, "retry", name, "--failed-only")
    assert nothing.exit_code == 0 and "nothing to retry" in nothing.stdout

    # The whole document: a new generation, processed from scratch; the old one stays.
    whole = ocrpipe(stack, "retry", name)
    assert whole.exit_code == 0, whole.output
    final = wait_until_finished(stack, store, name)
    assert final.state == "done" and final.generation is not None
    assert final.generation > doc.generation
    assert outputs(stack, store, doc) == objects
    new = DocumentRef(settings.input_bucket, name, final.generation)
    assert store.read(settings.output_bucket, naming.document_markdown_name(new)).decode() == (
        document
    )

    refused = ocrpipe(stack, "retry", "tests/no-such.pdf", "--failed-only")
    assert refused.exit_code == cli.Exit.FAILED and "does not exist" in refused.output
