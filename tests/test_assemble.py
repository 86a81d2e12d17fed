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
from ocrpipe.status import derive_state


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
        ({"has_error": True, "input_exists": True}, "failed"),
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
