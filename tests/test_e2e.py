"""End to end on the real emulators: a PDF uploaded to the input bucket becomes Markdown
through the finalize notification, the Eventarc stand-in, the splitter, Pub/Sub push, the
worker and the local OCR engine."""

from __future__ import annotations

import json
import re

import pytest
from rapidfuzz.distance import Levenshtein

from ocrpipe import naming
from ocrpipe.local.stack import LocalStack
from ocrpipe.naming import DocumentRef
from ocrpipe.storage import GcsStore
from ocrpipe.testing.pdfs import text_pdf
from tests.conftest import unique_name, wait_until_finished

pytestmark = pytest.mark.e2e


def collapse(text: str) -> str:
    return " ".join(text.split())


def cer(expected: str, actual: str) -> float:
    return float(Levenshtein.normalized_distance(collapse(expected), collapse(actual)))


def test_a_three_page_pdf_becomes_markdown(stack: LocalStack, gcs: GcsStore) -> None:
    settings = stack.settings
    data, texts = text_pdf(3, seed=7)
    name = unique_name("three-pages")
    blob = gcs.client.bucket(settings.input_bucket).blob(name)
    blob.upload_from_string(data, content_type="application/pdf")

    status = wait_until_finished(stack, gcs, name)
    assert status.state == "done", status
    assert (status.page_count, status.done, status.failed) == (3, 3, 0)

    doc = DocumentRef(settings.input_bucket, name, int(blob.generation))
    pages = [
        gcs.read(settings.output_bucket, naming.page_markdown_name(doc, n)).decode()
        for n in (1, 2, 3)
    ]
    document = gcs.read(settings.output_bucket, naming.document_markdown_name(doc)).decode()

    for number, (page, lines) in enumerate(zip(pages, texts, strict=True), start=1):
        assert cer("\n".join(lines), page) <= 0.02, f"page {number}: {page!r}"
    markers = [int(m) for m in re.findall(r"<!-- page (\d+) -->", document)]
    assert markers == [1, 2, 3]
    body = re.sub(r"<!-- page \d+ -->", "", document)
    assert cer("\n".join("\n".join(lines) for lines in texts), body) <= 0.02
    # document.json (custom metadata on fake-gcs-server included) slices it back exactly.
    index = json.loads(gcs.read(settings.output_bucket, naming.document_index_name(doc)))
    info = gcs.stat(settings.output_bucket, naming.document_markdown_name(doc))
    assert info is not None and index["document"]["generation"] == info.generation
    assert index["document"]["pages_digest"] == info.metadata["ocrpipe-pages-digest"]
    raw = document.encode()
    assert [raw[p["start"] : p["end"]].decode() for p in index["pages"]] == pages
    listed = {o.name for o in gcs.list(settings.output_bucket, naming.pages_prefix(doc))}
    assert listed == {naming.page_markdown_name(doc, n) for n in (1, 2, 3)}
