"""Generated benchmark documents whose text is known.

* born-digital: :func:`ocrpipe.testing.pdfs.text_pdf` (reportlab text, Helvetica);
* scanned: the same pages rendered to grey images at ~200 dpi, degraded the way a cheap
  office scanner does (a small rotation, blur, uneven exposure, sensor noise, JPEG), and
  embedded one full-page image per page in a new PDF, with no text layer.

Both are deterministic for a given seed.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ocrpipe.testing.pdfs import page_text, text_pdf

SCAN_DPI = 200
NOISE_SIGMA = 10.0  # grey levels
SPECKLE_SHARE = 0.002  # dark dust specks, share of pixels
JPEG_QUALITY = 75
CORPUS_VERSION = 2  # part of the cache file names: bump when the generator changes

# Pages per document type for the render and quality benchmarks.
QUICK_PAGES = {"text": 40, "scanned": 10}
FULL_PAGES = {"text": 200, "scanned": 50}
A4_PT = (595.2756, 841.8898)


def degrade(image: Image.Image, rng: random.Random) -> Image.Image:
    """A clean page image -> what a scanner makes of it (greyscale)."""
    grey = image.convert("L")
    angle = rng.uniform(-1.5, 1.5)
    grey = grey.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=255)
    grey = grey.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.6, 1.1)))
    pixels = np.asarray(grey, dtype=np.float32)
    height, width = pixels.shape
    # Uneven exposure: a soft gradient across the page, darker paper, lighter ink.
    ramp = np.linspace(0, rng.uniform(10, 30), width, dtype=np.float32)[None, :]
    pixels = 30 + pixels * 0.8 - ramp
    noise = np.random.default_rng(rng.randrange(2**32)).standard_normal(
        (height, width), dtype=np.float32
    )
    pixels = pixels + NOISE_SIGMA * noise
    dust = np.random.default_rng(rng.randrange(2**32)).random((height, width)) < SPECKLE_SHARE
    pixels[dust] = rng.uniform(40, 90)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


def scanned_pdf(pages: int, *, seed: int = 0) -> tuple[bytes, list[list[str]]]:
    """A PDF of ``pages`` scanned-looking pages (JPEG images, no text layer) and their lines."""
    import pypdfium2 as pdfium
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    clean, texts = text_pdf(pages, seed=seed)
    source = pdfium.PdfDocument(clean)
    rng = random.Random(seed)
    buffer = io.BytesIO()
    out = canvas.Canvas(buffer, pagesize=A4_PT, invariant=1)
    try:
        for index in range(pages):
            page = source[index]
            try:
                bitmap = page.render(scale=SCAN_DPI / 72, grayscale=True)
                image = degrade(bitmap.to_pil(), rng)
            finally:
                page.close()
            jpeg = io.BytesIO()
            image.save(jpeg, format="JPEG", quality=JPEG_QUALITY)
            jpeg.seek(0)
            out.drawImage(ImageReader(jpeg), 0, 0, width=A4_PT[0], height=A4_PT[1])
            out.showPage()
    finally:
        source.close()
    out.save()
    return buffer.getvalue(), texts


CACHE_DIR = Path(__file__).resolve().parent / "results" / "corpus"


def cached_pdf(kind: str, pages: int, *, seed: int = 0, cache_dir: Path = CACHE_DIR) -> Path:
    """A generated PDF (``kind`` "text" or "scanned"), made once and kept in ``cache_dir``."""
    path = cache_dir / f"{kind}-{pages}p-seed{seed}-v{CORPUS_VERSION}.pdf"
    if path.exists():
        return path
    if kind == "text":
        data = text_pdf(pages, seed=seed)[0]
    elif kind == "scanned":
        data = scanned_pdf(pages, seed=seed)[0]
    else:
        raise ValueError(f"unknown kind of document: {kind}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(path)
    return path


def truth(pages: int, *, seed: int = 0) -> list[str]:
    """Each page's text as the generator wrote it (one line per line)."""
    return ["\n".join(page_text(n, seed)) for n in range(1, pages + 1)]
