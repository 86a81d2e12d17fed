"""What a file is: decided by its content, with the name only to explain a mismatch."""

from __future__ import annotations

import pytest

from ocrpipe.errors import BadInput
from ocrpipe.file_kinds import InputKind, classify, sniff, webp_is_lossy
from ocrpipe.testing.inputs import docx_like, image_bytes, text_image
from ocrpipe.testing.pdfs import text_pdf

PDF, _ = text_pdf(1, lines=1)


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (PDF, InputKind.PDF),
        (b"\xef\xbb\xbfjunk before the header %PDF-1.7\n", InputKind.PDF),
        (image_bytes([text_image("x")], "PNG"), InputKind.PNG),
        (image_bytes([text_image("x")], "JPEG"), InputKind.JPEG),
        (image_bytes([text_image("x")], "TIFF"), InputKind.TIFF),
        (image_bytes([text_image("x")], "TIFF")[:2] + b"\x00*", None),  # II with MM's magic
        (b"MM\x00*\x00\x00\x00\x08", InputKind.TIFF),
        (image_bytes([text_image("x")], "WEBP"), InputKind.WEBP),
        (docx_like(), None),
        (b"GIF89a....", None),
        (b"hello", None),
        (b"", None),
    ],
)
def test_kind_comes_from_the_first_bytes(head: bytes, kind: InputKind | None) -> None:
    assert sniff(head[:1024]) == kind


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("report.pdf", PDF, InputKind.PDF),
        ("report.PDF", PDF, InputKind.PDF),
        ("scan.png", PDF, InputKind.PDF),  # content wins
        ("scan.pdf", image_bytes([text_image("x")], "PNG"), InputKind.PNG),  # content wins
        ("no-extension", image_bytes([text_image("x")], "JPEG"), InputKind.JPEG),
        ("notes.pdf", b"just some text", "not_a_pdf"),
        ("letter.pdf", docx_like(), "not_a_pdf"),
        ("letter.docx", docx_like(), "unsupported_type"),
        ("page.html", b"<!DOCTYPE html><html>", "unsupported_type"),
        ("anim.gif", b"GIF89a\x01\x00", "unsupported_type"),
        ("photo.heic", b"\x00\x00\x00\x18ftypheic", "unsupported_type"),
    ],
)
def test_classify(name: str, head: bytes, expected: InputKind | str) -> None:
    if isinstance(expected, InputKind):
        assert classify(name, head) is expected
        return
    with pytest.raises(BadInput) as caught:
        classify(name, head)
    assert caught.value.reason == expected


def test_the_error_says_what_the_file_looks_like() -> None:
    with pytest.raises(BadInput) as caught:
        classify("letter.docx", docx_like())
    assert "ZIP archive" in caught.value.message and ".docx" in caught.value.message
    with pytest.raises(BadInput) as caught:
        classify("notes.pdf", b"just some text")
    assert "plain text" in caught.value.message and "%PDF-" in caught.value.message


def test_lossy_and_lossless_webp_are_told_apart() -> None:
    image = text_image("x")
    assert webp_is_lossy(image_bytes([image], "WEBP", quality=80))
    assert not webp_is_lossy(image_bytes([image], "WEBP", lossless=True))
