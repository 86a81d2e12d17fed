"""A corpus already in GCS, on the real emulators through the real CLI: ``ocrpipe plan
gs://...`` counts its pages through ranged reads, ``ocrpipe submit gs://... --wait`` copies
it into the input bucket by GCS and follows it to done, and a second submit copies nothing.

The corpus bucket is the user's own, which ocrpipe/iam.json does not govern (an operator
reads it with their own rights), so this stack runs without the IAM proxies."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from ocrpipe import cli
from ocrpipe.local.stack import LocalStack, fault_stack
from ocrpipe.operations.status import document_status
from ocrpipe.storage import GcsStore
from ocrpipe.testing.pdfs import text_pdf

pytestmark = pytest.mark.e2e

PAGES = {"scans/2024/a.pdf": 3, "scans/2024/b.pdf": 2, "scans/c.pdf": 1}


@pytest.fixture(scope="module")
def raw_stack() -> Iterator[LocalStack]:
    with fault_stack(iam=False) as stack:  # an OCR server that answers at once
        yield stack


def test_a_corpus_in_a_bucket_is_planned_and_submitted_without_a_download(
    raw_stack: LocalStack,
) -> None:
    settings = raw_stack.settings
    store = GcsStore.connect(raw_stack.project, settings.storage_emulator_host)
    corpus = f"corpus-{uuid.uuid4().hex[:8]}"
    store.client.create_bucket(corpus)
    bucket = store.client.bucket(corpus)
    for index, (name, pages) in enumerate(PAGES.items()):
        bucket.blob(name).upload_from_string(text_pdf(pages, seed=index, lines=2)[0])
    bucket.blob("scans/.trash/old.pdf").upload_from_string(b"%PDF-hidden")
    env = raw_stack.env("operator")
    runner = CliRunner()

    planned = runner.invoke(cli.app, ["plan", f"gs://{corpus}/scans/", "--json"], env=env)
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)
    assert (plan["documents"], plan["pages"]) == (3, sum(PAGES.values()))
    assert plan["pages_by_kind"] == {"A4": 6} and plan["rejected"] == []

    args = ["submit", f"gs://{corpus}/scans/", "--prefix", "backfill/", "--wait",
            "--timeout", "300"]  # fmt: skip
    first = runner.invoke(cli.app, args, env=env)
    assert first.exit_code == 0, first.output
    assert "copied 3 object(s) by GCS, none downloaded; 0 unchanged" in first.stdout
    for name, pages in PAGES.items():
        status = document_status(store, settings, "backfill/" + name.removeprefix("scans/"))
        assert (status.state, status.done) == ("done", pages), status
    again = runner.invoke(cli.app, args[:4], env=env)
    assert again.exit_code == 0, again.output
    assert "copied 0 object(s) by GCS, none downloaded; 3 unchanged" in again.stdout
