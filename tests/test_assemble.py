from __future__ import annotations

import pytest

from ocrpipe.assemble import assemble_document
from ocrpipe.errors import (
    BadInput,
    BadMessage,
    OcrpipeError,
    OcrRejected,
    OcrUnavailable,
    StorageUnavailable,
    push_status_for,
)
from ocrpipe.operations.status import derive_state


def test_pages_in_order_with_numbered_separators() -> None:
    text = assemble_document(3, {2: "two", 1: "one\n", 3: "three"})
    assert text == "<!-- page 1 -->\n\none\n\n<!-- page 2 -->\n\ntwo\n\n<!-- page 3 -->\n\nthree\n"


def test_failed_pages_keep_their_place() -> None:
    text = assemble_document(2, {1: "one"}, {2: "ocr_repetition_loop"})
    assert text.index("<!-- page 2 -->") > text.index("one")
    assert "Page 2 failed** (ocr_repetition_loop)" in text


def test_a_missing_page_is_an_error_not_a_gap() -> None:
    with pytest.raises(ValueError, match="page 2"):
        assemble_document(2, {1: "one"})


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (None, 204),
        (BadInput("x"), 204),
        (BadMessage("x"), 204),
        (OcrRejected("x"), 204),
        (OcrUnavailable("x"), 503),
        (StorageUnavailable("x"), 503),
        (OcrpipeError("x"), 500),
        (KeyError("x"), 500),
    ],
)
def test_error_to_push_response(outcome: BaseException | None, status: int) -> None:
    assert push_status_for(outcome) == status


@pytest.mark.parametrize(
    ("facts", "state"),
    [
        ({"input_exists": True}, "splitting"),
        ({"input_exists": False}, "unknown"),
        ({"has_manifest": True}, "running"),
        ({"has_manifest": True, "has_document": True, "done": 3}, "done"),
        ({"has_manifest": True, "has_document": True, "done": 2, "failed": 1}, "partial"),
        ({"has_manifest": True, "has_document": True, "failed": 3}, "failed"),
        ({"has_error": True, "input_exists": True}, "rejected"),
    ],
)
def test_state_from_what_is_in_the_buckets(facts: dict[str, object], state: str) -> None:
    base: dict[str, object] = {
        "input_exists": True,
        "has_error": False,
        "has_manifest": False,
        "has_document": False,
        "done": 0,
        "failed": 0,
    }
    assert derive_state(**{**base, **facts}) == state  # type: ignore[arg-type]


def test_document_json_slices_document_md_back_into_each_page_byte_exactly() -> None:
    """Programs split document.md with document.json's byte ranges, never on the markers: a
    page whose own text contains a marker, or spaces at its ends, comes back unchanged."""
    import json

    from ocrpipe import naming, records
    from ocrpipe.settings import Settings
    from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
    from ocrpipe.worker.page_work import complete_document

    settings = Settings(input_bucket="in", work_bucket="work", output_bucket="out")
    store = MemoryStore()
    doc = naming.DocumentRef("in", "a.pdf", store.put("in", "a.pdf", b"%PDF-1.7"))
    texts = {
        1: "  indented first line\n",
        2: "see the note <!-- page 7 -->\n\n<!-- page 3 -->\nstill page 2, café\n\n\n",
        4: "",
    }
    for page, text in texts.items():
        store.put("out", naming.page_markdown_name(doc, page), text.encode())
    record = records.error_record(doc, "ocr_repetition_loop", "looped", page=3)
    store.put("out", naming.page_error_name(doc, 3), record)
    assert complete_document(doc, 4, store, settings, MemoryPublisher())

    markdown = store.read("out", naming.document_markdown_name(doc))
    index = json.loads(store.read("out", naming.document_index_name(doc)))
    info = store.stat("out", naming.document_markdown_name(doc))
    assert info is not None and index["document"]["generation"] == info.generation
    entries = {entry["page"]: entry for entry in index["pages"]}
    assert sorted(entries) == [1, 2, 3, 4]
    for page, text in texts.items():
        entry = entries[page]
        assert entry["state"] == "done"
        assert markdown[entry["start"] : entry["end"]] == text.encode()
    failed = entries[3]
    assert (failed["state"], failed["reason"]) == ("failed", "ocr_repetition_loop")
    assert b"Page 3 failed" in markdown[failed["start"] : failed["end"]]
    # The markers are still there, for people.
    assert markdown.decode().startswith("<!-- page 1 -->\n\n  indented first line\n")


def test_one_assembly_per_document_at_a_time_and_no_lock_left_behind() -> None:
    import threading
    import time as clock

    from ocrpipe.worker.page_work import KeyedLocks

    locks = KeyedLocks()
    inside: list[str] = []
    overlaps: list[tuple[str, str]] = []

    def work(key: str) -> None:
        with locks.hold(key):
            overlaps.extend((key, other) for other in inside if other == key)
            inside.append(key)
            clock.sleep(0.02)
            inside.remove(key)

    threads = [threading.Thread(target=work, args=(k,)) for k in ["a"] * 5 + ["b"] * 5]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []  # never two holders of one document's lock
    assert len(locks) == 0
