"""IAM on the local stack: every service reaches the emulators through the authorizing
proxies as its own identity, with the grants of ocrpipe/iam.json. The sample PDF goes
through with no refusal; a narrowed grant breaks the path it belongs to, and says so in the
proxy's log; a too-wide grant shows up in the usage report."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ocrpipe import naming
from ocrpipe.local.stack import IDENTITIES, LocalStack, free_ports
from ocrpipe.naming import DocumentRef
from ocrpipe.operations.status import document_status
from ocrpipe.storage import GcsStore
from ocrpipe.testing.waiting import stack_activity, stack_alive, wait_for
from tests.conftest import unique_name, wait_until_finished

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.pdf"
REFUSAL_MARKERS = ("permission denied", "PERMISSION_DENIED", "User not authorized",
                   "does not have storage.", "403 Forbidden", "AccessDenied", "refused:",
                   "access_denied")  # fmt: skip
NARROWED = {"worker": {"revoke": [{"bucket": "output", "permission": "storage.objects.list"}]}}
WIDENED = {"worker": {"add": [{"bucket": "input", "role": "roles/storage.objectAdmin"}]}}


def make_stack(overrides: dict[str, Any] | None = None) -> LocalStack:
    return LocalStack(
        ports=free_ports(), bucket_suffix=f"-{uuid.uuid4().hex[:6]}", iam_overrides=overrides
    )


@pytest.fixture(scope="module")
def iam_stack() -> Iterator[LocalStack]:
    with make_stack() as stack:
        yield stack


@pytest.fixture(scope="module")
def narrowed_stack() -> Iterator[LocalStack]:
    """The worker without storage.objects.list on the output bucket."""
    with make_stack(NARROWED) as stack:
        yield stack


@pytest.fixture(scope="module")
def widened_stack() -> Iterator[LocalStack]:
    """The worker with objectAdmin on the input bucket, where it only needs to stat."""
    with make_stack(WIDENED) as stack:
        yield stack


def submit_sample(stack: LocalStack) -> tuple[GcsStore, DocumentRef]:
    settings = stack.settings  # the operator's, through the proxies
    store = GcsStore.connect(stack.project, settings.storage_emulator_host)
    name = unique_name("sample")
    with SAMPLE.open("rb") as handle:
        generation = store.upload(settings.input_bucket, name, handle, "application/pdf")
    return store, DocumentRef(settings.input_bucket, name, generation)


def refusals_in_logs(stack: LocalStack) -> dict[str, list[str]]:
    """Per service log, the lines that speak of a refusal."""
    assert stack.log_dir is not None
    found = {}
    for log in sorted(stack.log_dir.glob("*.log")):
        lines = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if any(marker in line for marker in REFUSAL_MARKERS)
        ]
        if lines:
            found[log.stem] = lines
    return found


REFUSED = re.compile(r"^refused: (?P<identity>\S+) lacks (?P<permission>\S+) on (?P<resource>\S+)$")


def proxy_refusals(stack: LocalStack, proxy: str) -> list[tuple[str, str, str]]:
    """(identity, permission, resource) of each refusal a proxy logged (one JSON line each,
    ``refused: <identity> lacks <permission> on <resource>``)."""
    assert stack.log_dir is not None
    found = []
    for line in (stack.log_dir / f"{proxy}.log").read_text(errors="replace").splitlines():
        if line.startswith("{") and (match := REFUSED.match(json.loads(line)["message"])):
            found.append((match["identity"], match["permission"], match["resource"]))
    return found


def test_the_sample_goes_through_with_no_refusal(iam_stack: LocalStack) -> None:
    store, doc = submit_sample(iam_stack)
    status = wait_until_finished(iam_stack, store, doc.name)
    assert status.state == "done", status
    markdown = store.read(iam_stack.settings.output_bucket, naming.document_markdown_name(doc))
    assert markdown.strip()
    assert refusals_in_logs(iam_stack) == {}
    assert {i: r["refused"] for i, r in iam_stack.iam_usage().items() if r["refused"]} == {}


# What one document needs of each identity, in the decided split of responsibilities
# (docs/DEPLOY.md, "Who may do what"): exactly these permissions, on these resources.
def expected_usage(stack: LocalStack) -> dict[str, list[str]]:
    s = stack.settings
    inp, work, out = (f"projects/_/buckets/{b}" for b in (s.input_bucket, s.work_bucket,
                                                          s.output_bucket))  # fmt: skip
    pages = f"projects/{stack.project}/topics/{s.pages_topic}"
    documents = f"projects/{stack.project}/topics/{s.documents_topic}"
    notifications = f"projects/{stack.project}/topics/ocrpipe-gcs-notifications"
    return {
        "splitter": sorted([
            f"storage.objects.get on {inp}/objects/*",
            f"storage.objects.create on {work}/objects/*",
            f"storage.objects.delete on {work}/objects/*",
            f"storage.objects.list on {work}",
            f"storage.objects.create on {out}/objects/* if splitter-records-only",
            f"pubsub.topics.publish on {pages}",
        ]),
        "worker": sorted([
            f"storage.objects.get on {inp}/objects/*",
            f"storage.objects.get on {work}/objects/*",
            f"storage.objects.create on {out}/objects/*",
            f"storage.objects.get on {out}/objects/*",
            f"storage.objects.list on {out}",
            f"pubsub.topics.publish on {documents}",  # the document's notification
        ]),
        "eventarc": [],
        "gcs-agent": [f"pubsub.topics.publish on {notifications}"],
        "owner": [],  # the project's owner: only people act as it (ocrpipe follow --local)
        "operator": sorted([  # the test's submit and status polling
            f"storage.objects.create on {inp}/objects/*",
            f"storage.objects.get on {inp}/objects/*",
            f"storage.objects.get on {out}/objects/*",
            f"storage.objects.list on {out}",
        ]),
        "reconciler": [],  # only on a restart with --data-dir, or `ocrpipe reconcile`
    }  # fmt: skip


def test_the_usage_report_lists_exactly_what_each_identity_needed(
    iam_stack: LocalStack,
) -> None:
    """After one document (the test above, or this one's own when run alone)."""
    store, doc = submit_sample(iam_stack)
    assert wait_until_finished(iam_stack, store, doc.name).finished_state
    report = iam_stack.iam_usage()
    assert set(report) == set(IDENTITIES)
    assert {i: r["used"] for i, r in report.items()} == expected_usage(iam_stack)
    assert {i: r["refused"] for i, r in report.items() if r["refused"]} == {}


def test_a_narrowed_grant_breaks_its_path_and_the_proxy_says_why(
    narrowed_stack: LocalStack,
) -> None:
    settings = narrowed_stack.settings
    store, doc = submit_sample(narrowed_stack)
    output = f"projects/_/buckets/{settings.output_bucket}"

    def refused() -> list[tuple[str, str, str]]:
        return proxy_refusals(narrowed_stack, "gcs-proxy")

    wait_for(
        lambda: (refused(), stack_activity(narrowed_stack)),
        lambda reading: ("worker", "storage.objects.list", output) in reading[0],
        what="the worker's list on the output bucket to be refused",
        alive=stack_alive(narrowed_stack),
        interval=0.5,
    )
    # The worker's delivery failed (it is retried, then dead-lettered): no document.
    status = document_status(store, settings, doc.name)
    assert status.state != "done", status
    assert store.stat(settings.output_bucket, naming.document_markdown_name(doc)) is None
    assert "worker" in refusals_in_logs(narrowed_stack)


def test_a_too_wide_grant_shows_as_granted_but_never_used(widened_stack: LocalStack) -> None:
    store, doc = submit_sample(widened_stack)
    status = wait_until_finished(widened_stack, store, doc.name)
    assert status.state == "done", status
    inp = f"projects/_/buckets/{widened_stack.settings.input_bucket}"
    worker = widened_stack.iam_usage()["worker"]
    assert f"storage.objects.get on {inp}/objects/*" in worker["used"]
    for unused in ("delete", "create", "setIamPolicy"):
        assert f"storage.objects.{unused} on {inp}/objects/*" in worker["granted_never_used"]
