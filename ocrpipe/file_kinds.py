"""What an uploaded file is, decided by its first bytes (pure, no I/O).

The content decides, not the name: a PDF named ``scan.png`` is read as a PDF, and a PNG
named ``scan.pdf`` as a PNG (the user gets their text; the name was only a label). A file
named ``.pdf`` whose content is nothing ocrpipe reads is rejected as ``not_a_pdf``; any
other unreadable content as ``unsupported_type``.

==========  ===============================  =====================================
kind        magic bytes                      pages
==========  ===============================  =====================================
pdf         ``%PDF-`` in the first 1024      one per PDF page (pypdfium2)
png         ``\\x89PNG\\r\\n\\x1a\\n``           one
jpeg        ``\\xff\\xd8\\xff``                 one
tiff        ``II*\\0``, ``MM\\0*`` (BigTIFF ``+``)  one per frame
webp        ``RIFF....WEBP``                 one per frame (animated WebP)
==========  ===============================  =====================================
"""

from __future__ import annotations

from enum import StrEnum

from ocrpipe.errors import BadInput

HEAD_BYTES = 1024  # how much of a file to read before deciding; PDF allows junk before %PDF-


class InputKind(StrEnum):
    PDF = "pdf"
    PNG = "png"
    JPEG = "jpeg"
    TIFF = "tiff"
    WEBP = "webp"

    @property
    def is_image(self) -> bool:
        return self is not InputKind.PDF


_IMAGE_MAGIC: tuple[tuple[bytes, InputKind], ...] = (
    (b"\x89PNG\r\n\x1a\n", InputKind.PNG),
    (b"\xff\xd8\xff", InputKind.JPEG),
    (b"II*\x00", InputKind.TIFF),
    (b"MM\x00*", InputKind.TIFF),
    (b"II+\x00", InputKind.TIFF),
    (b"MM\x00+", InputKind.TIFF),
)

# Things people upload that ocrpipe does not read, named so the error record says what it saw.
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (for example .docx, .xlsx, .pptx or .odt)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office file (.doc, .xls, .ppt)"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"{\\rtf", "an RTF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
)

SUPPORTED = "PDF, PNG, JPEG, TIFF or WebP"


def sniff(head: bytes) -> InputKind | None:
    """The kind of a file from its first bytes, or None if ocrpipe does not read it."""
    for magic, kind in _IMAGE_MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return InputKind.WEBP
    if b"%PDF-" in head[:HEAD_BYTES]:
        return InputKind.PDF
    return None


def describe(head: bytes) -> str:
    """A few words on what an unsupported file looks like, for the error record."""
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace").strip()
        return f"an ISO media file (brand {brand!r}: HEIC/AVIF photo or video)"
    sample = head[:512]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        if text.lstrip().lower().startswith(("<!doctype html", "<html")):
            return "an HTML page"
        return "plain text"
    return "binary data of an unknown format"


def classify(name: str, head: bytes) -> InputKind:
    """The kind to process ``name`` as, or :class:`BadInput` (``not_a_pdf``,
    ``unsupported_type``)."""
    kind = sniff(head)
    if kind is not None:
        return kind
    what = describe(head)
    if name.lower().endswith(".pdf"):
        raise BadInput(
            f"the file is named .pdf but is not a PDF: its content is {what}"
            " (no %PDF- header in the first 1024 bytes)",
            reason="not_a_pdf",
        )
    raise BadInput(
        f"unsupported file type: the content is {what}; ocrpipe reads {SUPPORTED} files",
        reason="unsupported_type",
    )


def webp_is_lossy(head: bytes) -> bool:
    """True for a lossy (VP8) WebP, False for a lossless (VP8L) one."""
    offset = 12
    while offset + 8 <= len(head):
        chunk = head[offset : offset + 4]
        if chunk == b"VP8 ":
            return True
        if chunk == b"VP8L":
            return False
        size = int.from_bytes(head[offset + 4 : offset + 8], "little")
        offset += 8 + size + (size & 1)
    return True


def check_size(size: int, max_bytes: int) -> None:
    """Raise :class:`BadInput` for an empty file or one over ``max_bytes``."""
    if size == 0:
        raise BadInput("the file is empty (0 bytes)", reason="empty_file")
    if size > max_bytes:
        raise BadInput(
            f"the file is {size} bytes, over the limit of {max_bytes} bytes",
            reason="file_too_large",
        )
