"""The reconciler job's entry (reconciler_job/main.py) against the real emulators: what the
scheduled Cloud Run job runs, with the settings terraform gives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from ocrpipe import naming, records
from ocrpipe.local.stack import LocalStack, fault_stack
from ocrpipe.storage import GcsStore

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def paused_stack() -> Iterator[LocalStack]:
    """A stack without its splitter (the test lays out a split document itself) and with its
    deliveries paused (what the job publishes stays in the subscription)."""
    with fault_stack() as stack:
        stack.kill("splitter")
        stack.pause_delivery()
        yield stack


def test_the_job_republishes_lost_pages_as_the_reconciler_and_logs_a_summary(
    paused_stack: LocalStack,
) -> None:
    admin = paused_stack.admin_settings
    store = GcsStore.connect(paused_stack.project, admin.storage_emulator_host)
    name = f"job/{uuid.uuid4().hex[:6]}.pdf"
    store.client.bucket(admin.input_bucket).blob(name).upload_from_string(b"%PDF-1.7 stub")
    info = store.stat(admin.input_bucket, name)
    assert info is not None
    doc = naming.DocumentRef(admin.input_bucket, name, info.generation)
    store.create(admin.output_bucket, naming.manifest_name(doc),
                 records.manifest_record(doc, 3), "application/json")  # fmt: skip
    for page in (1, 2, 3):
        store.create(admin.work_bucket, naming.page_image_name(doc.doc_id, page, "png"),
                     b"png", "image/png")  # fmt: skip
    store.create(admin.work_bucket, naming.published_marker_name(doc.doc_id, 1, 3), b"", "")
    # As Cloud Run runs it: the command terraform gives the job, the reconciler's settings.
    env = {"PATH": os.environ["PATH"], **paused_stack.env("reconciler")}
    command = [sys.executable, "-m", "reconciler_job.main", "--prefix", "job/",
               "--lost-after", "0"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    summary = [entry["message"] for entry in lines if entry["logger"] == "reconciler_job"]
    assert summary == [
        "reconciled 1 documents: 1 put back, 3 page messages published again, 0 pages"
        " rendered again, 0 images refreshed, 0 inputs split again, 0 rejections announced,"
        " 0 left for the next run"
    ]
    dated = [o.name for o in store.list(admin.work_bucket, naming.work_prefix(doc.doc_id))
             if "/republished-00001-00003-" in o.name]  # fmt: skip
    assert len(dated) == 1
    usage = paused_stack.iam_usage()["reconciler"]
    assert usage["refused"] == []
    pages_topic = f"projects/{paused_stack.project}/topics/{admin.pages_topic}"
    assert f"pubsub.topics.publish on {pages_topic}" in usage["used"]
