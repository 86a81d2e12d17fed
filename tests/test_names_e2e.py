"""Any legal object name works end to end: unicode, spaces, deep paths, '.' and '..'
segments, names near GCS's 1024-byte limit, control characters. Each document's output
stays inside its own prefix, nothing collides, and the logs stay one JSON line each."""

from __future__ import annotations

import uuid

import pytest

from ocrpipe import naming
from ocrpipe.local.stack import LocalStack
from ocrpipe.naming import DocumentRef
from ocrpipe.operations.status import document_status
from ocrpipe.storage import GcsStore
from ocrpipe.testing.inputs import text_pages_pdf
from tests.conftest import wait_until_finished
from tests.stack_logs import entries, split_answers

pytestmark = pytest.mark.e2e

MAX_NAME_BYTES = 1024


def long_name(base: str, tail: str) -> str:
    """``base`` + 'é'* + ``tail``, as close to 1024 UTF-8 bytes as 2-byte letters allow."""
    room = MAX_NAME_BYTES - len(base.encode()) - len(tail.encode())
    return base + "é" * (room // 2) + tail


def names() -> list[str]:
    base = f"tests/names-{uuid.uuid4().hex[:8]}/"
    return [
        base + "Ünïcødé 名前 📄 résumé.pdf",
        base + "with spaces/and  two  spaces .pdf",
        base + "/".join(f"level{n}" for n in range(1, 41)) + "/deep.pdf",
        base + "b.pdf",
        base + "a/../b.pdf",  # must not land on b.pdf's output
        base + "./b.pdf",
        base + "a/b.pdf",
        base + "percent%2Fslash%20.pdf",  # already looks encoded
        base + "tilde~and@at.pdf",
        base + "\x1b[31mred\x1b[0m\ttab.pdf",
        long_name(base, "-one.pdf"),
        long_name(base, "-two.pdf"),  # shares its first 1000 bytes with the one above
    ]


@pytest.fixture(scope="module")
def documents(stack: LocalStack, gcs: GcsStore) -> dict[str, tuple[DocumentRef, str]]:
    bucket = gcs.client.bucket(stack.settings.input_bucket)
    docs = {}
    for number, name in enumerate(names(), start=1):
        assert len(name.encode()) <= MAX_NAME_BYTES
        text = f"Document number {number}"
        blob = bucket.blob(name)
        blob.upload_from_string(text_pages_pdf([text]), content_type="application/pdf")
        docs[name] = (DocumentRef(stack.settings.input_bucket, name, int(blob.generation)), text)
    for name in docs:
        wait_until_finished(stack, gcs, name)
    return docs


def test_every_name_is_processed_into_its_own_prefix(
    stack: LocalStack, gcs: GcsStore, documents: dict[str, tuple[DocumentRef, str]]
) -> None:
    settings = stack.settings
    prefixes = {name: naming.output_prefix(doc) for name, (doc, _) in documents.items()}
    assert len(set(prefixes.values())) == len(prefixes)
    for a in prefixes.values():  # no prefix inside another: listing one never shows another
        assert [b for b in prefixes.values() if b != a and b.startswith(a)] == []
    readable = [n for n in documents if n.isprintable() and "%" not in n and "/." not in n]
    assert len(readable) >= 4
    for name in readable:  # output folders keep the name as typed, when nothing needs escaping
        if len(name.encode()) <= naming.MAX_KEY_BYTES:
            assert prefixes[name] == f"{name}/@{documents[name][0].generation}/", name
    for name, (doc, text) in documents.items():
        status = document_status(gcs, settings, name)
        assert (status.state, status.page_count, status.done) == ("done", 1, 1), name
        found = {o.name for o in gcs.list(settings.output_bucket, prefixes[name])}
        assert found == {
            naming.manifest_name(doc),
            naming.page_markdown_name(doc, 1),
            naming.document_markdown_name(doc),
            naming.document_index_name(doc),
        }
        assert all(len(n.encode()) <= MAX_NAME_BYTES for n in found)
        document = gcs.read(settings.output_bucket, naming.document_markdown_name(doc)).decode()
        assert text in document, (name, document)
        assert split_answers(stack, [doc]) == {doc.name: ["ack"]}


def test_long_names_are_shortened_without_colliding(
    documents: dict[str, tuple[DocumentRef, str]],
) -> None:
    long_ones = [name for name in documents if len(name.encode()) > 1000]
    keys = [naming.name_key(name) for name in long_ones]
    assert len(long_ones) == 2 and all("%~" in key for key in keys) and keys[0] != keys[1]


def test_control_characters_in_a_name_are_escaped_in_the_logs(
    stack: LocalStack, documents: dict[str, tuple[DocumentRef, str]]
) -> None:
    (name,) = [n for n in documents if "\x1b" in n]
    doc, _ = documents[name]
    assert stack.log_dir is not None
    raw = (stack.log_dir / "splitter.log").read_bytes()
    assert b"\x1b" not in raw
    logged = [e["message"] for e in entries(stack, "splitter", doc)]  # each line parsed as JSON
    assert any(name in message for message in logged)
