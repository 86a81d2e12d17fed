from __future__ import annotations

import pytest

from ocrpipe import naming
from ocrpipe.naming import DocumentRef

DOC = DocumentRef("in", "reports/q1.pdf", 1712)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("report.pdf", "report.pdf"),
        ("a b/ü.pdf", "a b/ü.pdf"),
        ("日本語/資料 1.pdf", "日本語/資料 1.pdf"),
        ("Ελληνικά/έγγραφο.pdf", "Ελληνικά/έγγραφο.pdf"),
        ("a@1/b~c #[x]?.pdf", "a@1/b~c #[x]?.pdf"),
        ("100%.pdf", "100%25.pdf"),
        ("%20.pdf", "%2520.pdf"),
        ("x/../y.pdf", "x/%2E%2E/y.pdf"),
        ("./y.pdf", "%2E/y.pdf"),
        ("//a.pdf", "%/%/a.pdf"),
        ("a/@5/b.pdf", "a/%405/b.pdf"),
        ("\x1b[31mred\ttab\r\n.pdf", "%1B[31mred%09tab%0D%0A.pdf"),
        ("a/\x00/b", "a/%00/b"),
        ("c1\x85\ufffe.pdf", "c1%C2%85%EF%BF%BE.pdf"),
    ],
)
def test_name_key_escapes_only_what_it_must(name: str, key: str) -> None:
    assert naming.name_key(name) == key
    assert naming.key_to_name(key) == name


@pytest.mark.parametrize(
    "name", ["..", "../../etc/passwd", "a/./b", "ü/ß/漢字.pdf", "with space .pdf", "x" * 1024]
)
def test_keys_never_climb_out_or_contain_markers(name: str) -> None:
    key = naming.name_key(name)
    segments = key.split("/")
    assert ".." not in segments and "." not in segments and "" not in segments
    assert not any(segment.startswith("@") for segment in segments)
    assert len(key.encode()) <= naming.MAX_KEY_BYTES + 40
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in key)


@pytest.mark.parametrize(
    ("a", "b"),
    [("a//b", "a/\x00/b"), ("a//b", "a/%/b"), ("%25", "%"), ("@x", "%40x"), ("a~b", "a%~b")],
)
def test_names_that_look_alike_get_different_keys(a: str, b: str) -> None:
    assert naming.name_key(a) != naming.name_key(b)
    assert naming.key_to_name(naming.name_key(a)) == a
    assert naming.key_to_name(naming.name_key(b)) == b


def test_long_names_stay_distinct() -> None:
    a, b = "x" * 1000 + "a", "x" * 1000 + "b"
    assert naming.name_key(a) != naming.name_key(b)
    assert "%~" in naming.name_key(a)
    assert naming.key_to_name(naming.name_key(a)) is None
    assert len(naming.name_key("é" * 600).encode()) <= naming.MAX_KEY_BYTES


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
