"""``ocrpipe up --data-dir``: the buckets live on disk, so a stack stopped halfway through a
batch and started again finishes it. The Pub/Sub emulator forgets its messages on stop; the
restarted stack finds what is unfinished and queues it again (ocrpipe/local/recovery.py).
Every page ends up written exactly once and every document done."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from ocrpipe import naming
from ocrpipe.local.stack import LocalStack, free_ports
from ocrpipe.storage import GcsStore
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.testing.waiting import stack_activity, stack_alive, wait_for
from tests.conftest import output_uploads, wait_until_announced

pytestmark = pytest.mark.e2e

DOCUMENTS, PAGES = 6, 10


def stack_on(data_dir: Path, log_dir: Path, suffix: str) -> LocalStack:
    """A stack whose OCR server is slow: 4 pages at a time, 1 s each (4 pages/s)."""
    ports = free_ports()
    command = [sys.executable, "-m", "ocrpipe.local.faults", "--host", "127.0.0.1",
               "--port", str(ports.ocr), "--log-level", "warning",
               "--batch-size", "4", "--service-time", "1"]  # fmt: skip
    return LocalStack(ports=ports, ocr_command=command, bucket_suffix=suffix, data_dir=data_dir,
                      log_dir=log_dir, gcs_log_level="info")  # fmt: skip


def pages_done(store: GcsStore, output_bucket: str) -> int:
    return sum(
        1 for o in store.list(output_bucket, "") if o.name.endswith(".md") and "/pages/" in o.name
    )


def test_a_restarted_stack_finishes_the_batch_once(tmp_path: Path) -> None:
    data, logs = tmp_path / "data", [tmp_path / "logs-1", tmp_path / "logs-2"]
    suffix = f"-{uuid.uuid4().hex[:6]}"
    names = [f"restart/doc-{i}.pdf" for i in range(DOCUMENTS)]
    with stack_on(data, logs[0], suffix) as first:
        settings = first.settings
        store = GcsStore.connect(first.project, settings.storage_emulator_host)
        bucket = store.client.bucket(settings.input_bucket)
        for index, name in enumerate(names[:-1]):
            bucket.blob(name).upload_from_string(text_pdf(PAGES, seed=index, lines=2)[0])
        wait_for(
            lambda: (pages_done(store, settings.output_bucket), stack_activity(first)),
            lambda reading: reading[0] >= 12,
            what="12 pages done before the stop",
            alive=stack_alive(first),
        )
        # The last input arrives while the splitter is down: only its finalize event knew.
        first.kill("splitter")
        bucket.blob(names[-1]).upload_from_string(text_pdf(PAGES, seed=99, lines=2)[0])
        done_at_stop = pages_done(store, settings.output_bucket)
    assert done_at_stop < DOCUMENTS * PAGES, "the batch finished before the stop"

    with stack_on(data, logs[1], suffix) as second:
        assert second.recovery is not None
        print(f"restart: {done_at_stop} pages done at the stop; recovery {second.recovery}")
        assert second.recovery.requeued_pages > 0
        assert names[-1] in second.recovery.split
        settings = second.settings
        store = GcsStore.connect(second.project, settings.storage_emulator_host)
        for name in names:
            assert wait_until_announced(second, store, name).state == "done"
        pages = [o for o in store.list(settings.output_bucket, "") if o.name.endswith(".md")
                 and "/pages/" in o.name]  # fmt: skip
        assert len(pages) == DOCUMENTS * PAGES
        for name in names:
            doc = store.stat(settings.input_bucket, name)
            assert doc is not None
            ref = naming.DocumentRef(settings.input_bucket, name, doc.generation)
            markdown = store.read(settings.output_bucket, naming.document_markdown_name(ref))
            assert markdown.count(b"\n") > PAGES
        # Written once: successful uploads to the output bucket, over both runs, equal the
        # objects in it (a second write of one object would be a 412, or an extra 200).
        objects = store.list(settings.output_bucket, "")
        uploads = output_uploads([(d / "gcs.log", 0) for d in logs], settings.output_bucket)
        assert uploads["200"] == len(objects)
