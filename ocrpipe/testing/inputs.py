"""Awkward inputs for tests: hand-built PDFs (no pages, a missing page, a page that takes
seconds to render, thousands of pages in a few KB, extreme page sizes), encrypted PDFs and
page images in every supported format."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Sequence

_FONT = b"<< /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >>"


def _text_content(text: str, size: float = 24, x: float = 72, y: float = 700) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"BT /F1 {size:g} Tf {x:g} {y:g} Td ({escaped}) Tj ET".encode("latin-1")


def raw_pdf(
    pages: Sequence[tuple[str, bytes]],
    *,
    kids: str | None = None,
    shared_content: bool = False,
    compress: bool = False,
) -> bytes:
    """A PDF from ``(mediabox, content stream)`` pages, written object by object.

    ``kids`` overrides the page tree's /Kids (to point at objects that do not exist);
    ``shared_content`` makes every page use the first page's content stream, so a PDF of
    thousands of pages stays small; ``compress`` deflates the content streams.
    """
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets: list[int] = []

    def add(body: bytes) -> int:
        offsets.append(out.tell())
        out.write(f"{len(offsets)} 0 obj\n".encode() + body + b"\nendobj\n")
        return len(offsets)

    def stream(content: bytes) -> bytes:
        if compress:
            data = zlib.compress(content, 9)
            head = f"<< /Length {len(data)} /Filter /FlateDecode >>"
        else:
            data, head = content, f"<< /Length {len(content)} >>"
        return f"{head}\nstream\n".encode() + data + b"\nendstream"

    add(b"<< /Type /Catalog /Pages 2 0 R >>")
    count = len(pages)
    per_page = 1 if shared_content else 2
    first_page = 3 if not shared_content else 4
    page_ids = [first_page + per_page * i for i in range(count)]
    tree_kids = kids if kids is not None else " ".join(f"{i} 0 R" for i in page_ids)
    add(f"<< /Type /Pages /Kids [{tree_kids}] /Count {count} >>".encode())
    if shared_content:
        content = pages[0][1]
        add(stream(content))
    for index, (box, content) in enumerate(pages):
        content_id = 3 if shared_content else page_ids[index] + 1
        add(
            f"<< /Type /Page /Parent 2 0 R /MediaBox {box} /Contents {content_id} 0 R".encode()
            + b" /Resources "
            + _FONT
            + b" >>"
        )
        if not shared_content:
            add(stream(content))
    xref = out.tell()
    out.write(f"xref\n0 {len(offsets) + 1}\n0000000000 65535 f \n".encode())
    out.write(b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets))
    out.write(
        f"trailer << /Size {len(offsets) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


LETTER = "[0 0 612 792]"


def text_pages_pdf(texts: Sequence[str], box: str = LETTER) -> bytes:
    return raw_pdf([(box, _text_content(text)) for text in texts])


def no_pages_pdf() -> bytes:
    """A well-formed PDF whose page tree is empty."""
    return raw_pdf([])


def missing_page_pdf(texts: Sequence[str], missing: int) -> bytes:
    """A PDF whose page ``missing`` (1-based) points at an object that does not exist:
    PDFium counts it but cannot load it."""
    kids = [f"{3 + 2 * i} 0 R" for i in range(len(texts))]  # raw_pdf's page object ids
    kids[missing - 1] = "9999 0 R"
    return raw_pdf([(LETTER, _text_content(t)) for t in texts], kids=" ".join(kids))


def slow_page(strokes: int = 200_000) -> bytes:
    """A content stream that takes PDFium seconds to render (~14 s for 200k strokes here;
    4 MB, or ~150 KB deflated)."""
    return b"".join(
        b"%d %d m %d %d l S\n" % (i % 600, i % 700, (i * 7) % 600, (i * 13) % 700)
        for i in range(strokes)
    )


def slow_page_pdf(texts: Sequence[str], slow: int) -> bytes:
    pages = [(LETTER, _text_content(t)) for t in texts]
    pages[slow - 1] = (LETTER, slow_page())
    return raw_pdf(pages, compress=True)


def many_pages_pdf(count: int) -> bytes:
    """``count`` identical one-line pages sharing one content stream (~200 bytes a page)."""
    return raw_pdf([(LETTER, _text_content("A page of many"))] * count, shared_content=True)


def sized_pages_pdf(sizes: Sequence[tuple[float, float]]) -> bytes:
    """One page per ``(width, height)`` in points, each with a line of text."""
    pages = []
    for width, height in sizes:
        size = max(1.0, min(width, height) / 20)
        pages.append(
            (f"[0 0 {width:g} {height:g}]", _text_content("Hello", size, size, height / 2))
        )
    return raw_pdf(pages)


def encrypted_pdf(user_password: str, owner_password: str = "owner") -> bytes:
    """A one-page PDF encrypted by reportlab; an empty user password opens without one."""
    from reportlab.lib import pdfencrypt
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(
        buffer,
        encrypt=pdfencrypt.StandardEncryption(user_password, ownerPassword=owner_password),
        invariant=1,
    )
    pdf.setFont("Helvetica", 24)
    pdf.drawString(72, 700, "Encrypted page text")
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def docx_like() -> bytes:
    """A ZIP archive shaped like a .docx (what Word saves)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
    return buffer.getvalue()


# --- images -------------------------------------------------------------------------------


def text_image(text: str, size: tuple[int, int] = (1200, 400), mode: str = "RGB") -> object:
    """A Pillow image with ``text`` in large black letters on white."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, size[1] // 6))
    draw.text((size[0] // 20, size[1] // 3), text, fill="black", font=font)
    return image.convert(mode)


def image_bytes(images: Sequence[object], fmt: str, **options: object) -> bytes:
    """Encode Pillow images as one file (several frames for TIFF and WebP)."""
    buffer = io.BytesIO()
    first, *rest = images
    if rest:
        options = {**options, "save_all": True, "append_images": rest}
    first.save(buffer, format=fmt, **options)  # type: ignore[attr-defined]
    return buffer.getvalue()
