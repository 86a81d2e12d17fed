from __future__ import annotations

import json

import pytest

from ocrpipe import naming, notifications
from ocrpipe.naming import DocumentRef

DOC = DocumentRef("in", "reports/ü q1.pdf", 1712)


@pytest.mark.parametrize(
    ("failed", "state"),
    [({}, "done"), ({2: "page_render_failed"}, "partial"), ({1: "x", 2: "x", 3: "y"}, "failed")],
)
def test_assembled_document_state_follows_its_pages(failed: dict[int, str], state: str) -> None:
    note = notifications.assembled(DOC, "out", page_count=3, failed_reasons=failed)
    assert (note.state, note.pages_done, note.pages_failed) == (state, 3 - len(failed), len(failed))
    assert note.reason == (", ".join(sorted(set(failed.values()))) or None)
    assert note.outputs.document_md == f"gs://out/{naming.document_markdown_name(DOC)}"
    assert note.outputs.document_json == f"gs://out/{naming.document_index_name(DOC)}"


def test_rejected_input_points_to_its_error_record() -> None:
    note = notifications.rejected(DOC, "out", reason="not_a_pdf")
    assert (note.state, note.reason, note.page_count) == ("failed", "not_a_pdf", 0)
    assert note.outputs.error == f"gs://out/{naming.document_error_name(DOC)}"
    assert note.outputs.document_md is None


def test_message_carries_doc_id_as_an_attribute_and_round_trips() -> None:
    note = notifications.assembled(DOC, "out", page_count=1, failed_reasons={})
    assert note.attributes()["doc_id"] == DOC.doc_id
    assert note.attributes()["state"] == "done"
    body = json.loads(note.encode())
    assert body["source_name"] == DOC.name and body["source_generation"] == DOC.generation
    assert notifications.DocumentNotification.model_validate_json(note.encode()) == note
