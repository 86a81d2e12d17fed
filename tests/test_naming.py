from __future__ import annotations

import pytest

from ocrpipe import naming
from ocrpipe.naming import DocumentRef

DOC = DocumentRef("in", "reports/q1.pdf", 1712)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("report.pdf", "report.pdf"),
        ("a b/c.pdf", "a%20b/c.pdf"),
        ("x/../y.pdf", "x/%2E%2E/y.pdf"),
        ("./y.pdf", "%2E/y.pdf"),
        ("//a.pdf", "%00/%00/a.pdf"),
        ("ü.pdf", "%C3%BC.pdf"),
        ("a@1/b~c.pdf", "a%401/b%7Ec.pdf"),
    ],
)
def test_name_key_is_safe_and_readable(name: str, key: str) -> None:
    assert naming.name_key(name) == key
    assert naming.key_to_name(key) == name


@pytest.mark.parametrize(
    "name", ["..", "../../etc/passwd", "a/./b", "ü/ß/漢字.pdf", "with space .pdf", "x" * 1024]
)
def test_keys_never_climb_out_or_contain_markers(name: str) -> None:
    key = naming.name_key(name)
    segments = key.split("/")
    assert ".." not in segments and "." not in segments and "" not in segments
    assert "@" not in key
    assert len(key.encode()) <= naming.MAX_KEY_BYTES + 40
    assert key.isascii()


def test_long_names_stay_distinct() -> None:
    a, b = "x" * 1000 + "a", "x" * 1000 + "b"
    assert naming.name_key(a) != naming.name_key(b)
    assert "~" in naming.name_key(a)


def test_one_document_prefix_never_lists_another() -> None:
    # "a" and "a/@5" must not share a listing prefix.
    assert not naming.output_prefix(DocumentRef("in", "a/@5", 1)).startswith(
        naming.document_prefix("a")
    )


def test_output_layout() -> None:
    assert naming.output_prefix(DOC) == "reports/q1.pdf/@1712/"
    assert naming.page_markdown_name(DOC, 7) == "reports/q1.pdf/@1712/pages/00007.md"
    assert naming.page_error_name(DOC, 7) == "reports/q1.pdf/@1712/pages/00007.error.json"
    assert naming.document_markdown_name(DOC) == "reports/q1.pdf/@1712/document.md"
    assert naming.manifest_name(DOC) == "reports/q1.pdf/@1712/manifest.json"
    assert naming.page_image_name(DOC.doc_id, 3, "png") == f"pages/{DOC.doc_id}/00003.png"


def test_doc_id_depends_on_generation() -> None:
    assert DOC.doc_id != DocumentRef("in", "reports/q1.pdf", 1713).doc_id
    assert DOC.doc_id == DocumentRef("in", "reports/q1.pdf", 1712).doc_id
    assert DOC.doc_id.startswith("d") and len(DOC.doc_id) == 24


def test_page_listing_sorts_done_and_failed() -> None:
    prefix = naming.pages_prefix(DOC)
    names = [
        prefix + "00001.md",
        prefix + "00002.error.json",
        prefix + "00003.md",
        prefix + "junk.txt",
        "elsewhere/00004.md",
        prefix + "00003.error.json",
    ]
    listing = naming.parse_page_listing(names, prefix)
    assert listing.done == {1, 3}
    assert listing.failed == {2}  # a page with Markdown is done even if an error record exists


def test_generation_from_prefix() -> None:
    assert naming.generation_from_prefix("1712/pages/00001.md") == 1712
    assert naming.generation_from_prefix("x/document.md") is None
