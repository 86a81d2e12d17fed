"""Bad, odd and hostile input, end to end on the local stack: each bad file gets its error
record with a stable reason code, publishes nothing, and is handled once (no retry); image
files and odd pages are processed; a page that cannot be rendered fails alone."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from PIL import Image

from ocrpipe import naming
from ocrpipe.local.stack import LocalStack, free_ports
from ocrpipe.naming import DocumentRef
from ocrpipe.operations.status import document_status
from ocrpipe.storage import GcsStore
from ocrpipe.testing import inputs as make
from ocrpipe.testing.pdfs import text_pdf
from tests.conftest import unique_name, wait_until_finished
from tests.stack_logs import entries, split_answers

pytestmark = pytest.mark.e2e

BAD_INPUTS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "empty_file": (".pdf", lambda: b""),
    "not_a_pdf": (".pdf", lambda: b"Dear diary, this is not a PDF at all.\n"),
    "pdf_corrupt": (".pdf", lambda: text_pdf(3)[0][:2000]),
    "pdf_encrypted": (".pdf", lambda: make.encrypted_pdf("secret")),
    "pdf_no_pages": (".pdf", make.no_pages_pdf),
    "too_many_pages": (".pdf", lambda: make.many_pages_pdf(2001)),  # the default limit: 2000
    "unsupported_type": (".docx", make.docx_like),
}


def upload(gcs: GcsStore, stack: LocalStack, name: str, data: bytes) -> DocumentRef:
    blob = gcs.client.bucket(stack.settings.input_bucket).blob(name)
    blob.upload_from_string(data)
    return DocumentRef(stack.settings.input_bucket, name, int(blob.generation))


def assert_rejected_once(stack: LocalStack, gcs: GcsStore, doc: DocumentRef, reason: str) -> None:
    settings = stack.settings
    status = document_status(gcs, settings, doc.name)
    assert status.state == "rejected" and status.error is not None, status
    assert status.error.reason == reason  # what `ocrpipe status` shows
    record = json.loads(gcs.read(settings.output_bucket, naming.document_error_name(doc)))
    assert record["reason"] == reason and len(record["message"]) > 10
    assert record["source"] == {
        "bucket": doc.bucket,
        "name": doc.name,
        "generation": doc.generation,
    }
    # Nothing published: no page images, no manifest, and the worker never heard of it.
    assert gcs.list(settings.work_bucket, f"pages/{doc.doc_id}/") == []
    assert gcs.stat(settings.output_bucket, naming.manifest_name(doc)) is None
    assert entries(stack, "worker", doc) == []
    # Handled once: acknowledged, not retried.
    assert split_answers(stack, [doc]) == {doc.name: ["ack"]}


SERVICES = ("splitter", "worker", "eventarc", "gcs-agent")


@pytest.fixture(scope="module")
def rejected(stack: LocalStack, gcs: GcsStore) -> dict[str, DocumentRef]:
    docs = {
        reason: upload(gcs, stack, unique_name(f"bad-{reason}", suffix), make_data())
        for reason, (suffix, make_data) in BAD_INPUTS.items()
    }
    for doc in docs.values():
        wait_until_finished(stack, gcs, doc.name)
    return docs


@pytest.mark.parametrize("reason", list(BAD_INPUTS))
def test_bad_input_is_rejected_once_with_its_reason(
    stack: LocalStack, gcs: GcsStore, rejected: dict[str, DocumentRef], reason: str
) -> None:
    assert_rejected_once(stack, gcs, rejected[reason], reason)


def test_every_bad_input_is_handled_under_the_production_grants_without_a_refusal(
    stack: LocalStack, rejected: dict[str, DocumentRef]
) -> None:
    """IAM is enforced on this stack: rejecting a bad file (error.json, @latest.json, the
    documents notification) needs nothing the splitter is not granted."""
    answers = split_answers(stack, list(rejected.values()))
    assert answers == {doc.name: ["ack"] for doc in rejected.values()}
    # The pipeline's identities only: the operator is every test's on this session stack,
    # and some are refused on purpose (test_follow_e2e: an operator may not subscribe).
    usage = stack.iam_usage()
    refused = {i: r["refused"] for i, r in usage.items() if r["refused"] and i in SERVICES}
    assert refused == {}
    used = usage["splitter"]["used"]
    documents = f"projects/{stack.project}/topics/{stack.settings.documents_topic}"
    assert f"pubsub.topics.publish on {documents}" in used  # rejections are announced


@pytest.fixture(scope="module")
def limited_stack() -> Iterator[LocalStack]:
    """A second stack whose splitter has small limits, as an operator would set them
    (uploading 512 MiB to fake-gcs-server's memory backend would cost seconds and GBs).
    Its OCR URL answers nothing: only inputs that never reach OCR go here."""
    with LocalStack(
        ports=free_ports(),
        ocr_url="http://127.0.0.1:9",
        bucket_suffix=f"-lim-{uuid.uuid4().hex[:6]}",
        overrides={"max_input_bytes": 2 * 2**20, "render_page_timeout_s": 1},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def limited_gcs(limited_stack: LocalStack) -> GcsStore:
    return GcsStore.connect(limited_stack.project, limited_stack.settings.storage_emulator_host)


def test_a_file_over_the_size_limit_is_rejected_once(
    limited_stack: LocalStack, limited_gcs: GcsStore
) -> None:
    doc = upload(limited_gcs, limited_stack, unique_name("too-big"), b"%PDF-1.7\n" + bytes(2**21))
    wait_until_finished(limited_stack, limited_gcs, doc.name)
    assert_rejected_once(limited_stack, limited_gcs, doc, "file_too_large")


def test_a_page_that_renders_forever_gets_a_timeout_record(
    limited_stack: LocalStack, limited_gcs: GcsStore
) -> None:
    settings = limited_stack.settings
    doc = upload(limited_gcs, limited_stack, unique_name("slow"), make.slow_page_pdf(["x"], 1))
    status = wait_until_finished(limited_stack, limited_gcs, doc.name)
    assert status.state == "failed" and status.page_count == 1 and list(status.page_errors) == [1]
    record = json.loads(limited_gcs.read(settings.output_bucket, naming.page_error_name(doc, 1)))
    assert record["reason"] == "page_render_timeout" and record["page"] == 1
    # No image: the splitter remembered the failure in the work bucket, the worker wrote it.
    work = {o.name for o in limited_gcs.list(settings.work_bucket, f"pages/{doc.doc_id}/0")}
    assert work == {naming.render_failure_name(doc.doc_id, 1)}
    assert split_answers(limited_stack, [doc]) == {doc.name: ["ack"]}


def test_a_page_that_fails_to_render_fails_alone(stack: LocalStack, gcs: GcsStore) -> None:
    settings = stack.settings
    texts = ["Page one of three", "Page two is broken", "Page three of three"]
    doc = upload(gcs, stack, unique_name("one-bad-page"), make.missing_page_pdf(texts, 2))
    status = wait_until_finished(stack, gcs, doc.name)
    assert (status.state, status.page_count, status.done, status.failed) == ("partial", 3, 2, 1)
    record = json.loads(gcs.read(settings.output_bucket, naming.page_error_name(doc, 2)))
    assert (record["reason"], record["page"]) == ("page_render_failed", 2)
    work = {o.name for o in gcs.list(settings.work_bucket, f"pages/{doc.doc_id}/0")}
    assert work == {naming.page_image_name(doc.doc_id, n, "png") for n in (1, 3)} | {
        naming.render_failure_name(doc.doc_id, 2)
    }
    document = gcs.read(settings.output_bucket, naming.document_markdown_name(doc)).decode()
    assert "one of three" in document and "three of three" in document
    assert "page_render_failed" in document
    assert split_answers(stack, [doc]) == {doc.name: ["ack"]}


def test_a_document_whose_only_page_fails_to_render_is_finished_by_the_worker(
    stack: LocalStack, gcs: GcsStore
) -> None:
    doc = upload(gcs, stack, unique_name("all-bad"), make.missing_page_pdf(["gone"], 1))
    status = wait_until_finished(stack, gcs, doc.name)
    assert status.state == "failed" and list(status.page_errors) == [1]
    assert status.markdown_uri is not None  # assembled, so it reached a final state
    assert entries(stack, "worker", doc), "the worker wrote the record and assembled it"


@dataclass(frozen=True)
class ImageCase:
    suffix: str
    data: Callable[[], bytes]
    mime: str
    pages: int


IMAGES = {
    "png": ImageCase(
        ".png", lambda: make.image_bytes([make.text_image("Invoice 4711")], "PNG"), "image/png", 1
    ),
    "jpeg": ImageCase(
        ".jpg", lambda: make.image_bytes([make.text_image("Invoice 4711")], "JPEG"), "image/jpeg", 1
    ),
    "webp": ImageCase(
        ".webp",
        lambda: make.image_bytes([make.text_image("Invoice 4711")], "WEBP"),
        "image/jpeg",
        1,
    ),
    "tiff": ImageCase(
        ".tif",
        lambda: make.image_bytes(
            [make.text_image("Invoice 4711"), make.text_image("Second page")], "TIFF"
        ),
        "image/png",
        2,
    ),
    "png named .pdf": ImageCase(
        ".pdf", lambda: make.image_bytes([make.text_image("Invoice 4711")], "PNG"), "image/png", 1
    ),
}


@pytest.fixture(scope="module")
def images(stack: LocalStack, gcs: GcsStore) -> dict[str, DocumentRef]:
    docs = {
        key: upload(
            gcs, stack, unique_name(f"image-{key.replace(' ', '-')}", case.suffix), case.data()
        )
        for key, case in IMAGES.items()
    }
    for doc in docs.values():
        wait_until_finished(stack, gcs, doc.name)
    return docs


@pytest.mark.parametrize("key", list(IMAGES))
def test_an_image_file_is_a_document(
    stack: LocalStack, gcs: GcsStore, images: dict[str, DocumentRef], key: str
) -> None:
    settings, case, doc = stack.settings, IMAGES[key], images[key]
    status = document_status(gcs, settings, doc.name)
    assert (status.state, status.page_count, status.done) == ("done", case.pages, case.pages)
    extension = "png" if case.mime == "image/png" else "jpg"
    for page in range(1, case.pages + 1):
        image = gcs.read(settings.work_bucket, naming.page_image_name(doc.doc_id, page, extension))
        assert image.startswith(b"\x89PNG" if extension == "png" else b"\xff\xd8")
    document = gcs.read(settings.output_bucket, naming.document_markdown_name(doc)).decode()
    assert "4711" in document


def test_absurd_page_sizes_are_clamped_not_crashed(stack: LocalStack, gcs: GcsStore) -> None:
    settings = stack.settings
    doc = upload(
        gcs, stack, unique_name("odd-sizes"), make.sized_pages_pdf([(1, 10000), (14400, 14400)])
    )
    status = wait_until_finished(stack, gcs, doc.name)
    assert status.finished_state and status.page_count == 2
    sizes = []
    for page in (1, 2):
        data = gcs.read(settings.work_bucket, naming.page_image_name(doc.doc_id, page, "png"))
        with Image.open(io.BytesIO(data)) as image:
            sizes.append(image.size)
    assert sizes[0] == (770, 6160)  # the sliver: long side capped, padded white to 1:8
    assert sizes[1] == (1540, 1540)
    assert split_answers(stack, [doc]) == {doc.name: ["ack"]}
