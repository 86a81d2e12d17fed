"""Documents as sequences of page images: a PDF (pypdfium2) or an image file (Pillow).

These classes run inside a render process (see :mod:`ocrpipe.splitter.rendering.renderer`), never
in the splitter's own process: pypdfium2 is not thread-safe, and a hostile file must not be able
to take the splitter down with it.

Pages come out as LightOn's own client renders them for LightOnOCR: a PDF page at
``dpi`` (200), an image as it is, each scaled down so that its longer side is at most
``longest_side`` pixels (1540), never enlarged (an A6 receipt is 828 x 1167 px, not
1093 x 1540; an 800 x 600 screenshot stays 800 x 600). What the model sees, and what it
costs (a Pixtral encoder's tokens are ceil(w/28) x ceil(h/28)), is then what the model was
trained and evaluated on. Absurd page sizes are clamped so that they never become absurd
images (a page too thin is rendered at a minimum short side, a sliver padded with white
margin). The sizes are :mod:`ocrpipe.page_geometry`'s, which ``ocrpipe plan`` uses to count
a page's prompt tokens without rendering it.

Encoding: PDF renders and lossless images (PNG, TIFF without JPEG compression, lossless
WebP) become PNG at ``compress_level=1``; photos and scans that were already lossy (JPEG,
JPEG-compressed TIFF, lossy WebP) become JPEG at quality 90: ~16x faster to encode and ~3x
smaller than PNG, with no measurable OCR loss on scans (measured), and a source that was
already JPEG has no sharp edges left for JPEG to blur. Sharp synthetic text (PDF renders,
screenshots) stays PNG, where JPEG would ring around the glyphs.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ocrpipe.errors import BadInput
from ocrpipe.file_kinds import HEAD_BYTES, InputKind, webp_is_lossy
from ocrpipe.page_geometry import image_scale, padded_size, page_scale

PNG_COMPRESS_LEVEL = 1  # 1.5-4x faster than Pillow's default for ~10% larger files
JPEG_QUALITY = 90
REDUCING_GAP = 3.0  # Pillow's box reduction before LANCZOS: fast, and as sharp at 1540 px
STRIP_PIXELS = 4_000_000  # pixels of a frame converted to RGB/L at once (see _flatten_to)
FPDF_ERR_SUCCESS = 0
FPDF_ERR_PASSWORD = 4
FPDF_ERR_SECURITY = 5
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class RenderedPage:
    page: int  # 1-based
    data: bytes
    mime: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return "png" if self.mime == "image/png" else "jpg"


def _orientations() -> dict[int, Any]:
    from PIL import Image

    t = Image.Transpose
    return {
        2: t.FLIP_LEFT_RIGHT,
        3: t.ROTATE_180,
        4: t.FLIP_TOP_BOTTOM,
        5: t.TRANSPOSE,
        6: t.ROTATE_270,
        7: t.TRANSVERSE,
        8: t.ROTATE_90,
    }


class PageSource(Protocol):
    def page_count(self) -> int: ...

    def render(self, page: int, longest_side: int, dpi: float) -> RenderedPage: ...


def open_source(kind: InputKind, path: Path, *, max_image_pixels: int) -> PageSource:
    if kind is InputKind.PDF:
        return PdfSource(path)
    return ImageSource(path, kind, max_pixels=max_image_pixels)


# --- PDF ----------------------------------------------------------------------------------


class PdfSource:
    def __init__(self, path: Path) -> None:
        import pypdfium2 as pdfium

        try:
            # password=None also opens PDFs whose user password is empty (only an owner
            # password restricts printing or copying): those are processed normally.
            self._pdf = pdfium.PdfDocument(path, password=None)
        except pdfium.PdfiumError as exc:
            raise _load_error(exc) from None

    def page_count(self) -> int:
        return len(self._pdf)

    def render(self, page: int, longest_side: int, dpi: float) -> RenderedPage:
        pdf_page = self._pdf[page - 1]
        try:
            width, height = pdf_page.get_size()
            bitmap = pdf_page.render(scale=page_scale(width, height, longest_side, dpi))
            image = _grey_if_neutral(bitmap.to_pil())
            return encode(page, image, lossy=_is_scanned(pdf_page))
        finally:
            pdf_page.close()


def _grey_if_neutral(image: Any) -> Any:
    """An RGB render whose pixels are all grey (most text pages) becomes one channel: its
    PNG encodes about 3x faster and is about half the size, with the same pixels."""
    from PIL import ImageChops

    if image.mode == "L":
        return image
    if image.mode != "RGB":
        image = image.convert("RGB")
    red, green, blue = image.split()
    if ImageChops.difference(red, green).getbbox() or ImageChops.difference(green, blue).getbbox():
        return image
    return red


def _is_scanned(pdf_page: Any) -> bool:
    """A page that is one embedded image and nothing else: a scan. Such pages are sent as
    JPEG, like image inputs that were lossy already (see the module docstring)."""
    import pypdfium2.raw as pdfium_c

    objects = list(pdf_page.get_objects(max_depth=2))
    return len(objects) == 1 and objects[0].type == pdfium_c.FPDF_PAGEOBJ_IMAGE


def _load_error(exc: Any) -> BadInput:
    code = getattr(exc, "err_code", None)
    if code == FPDF_ERR_PASSWORD:
        return BadInput(
            "the PDF is encrypted and needs a password to open; upload it without a password",
            reason="pdf_encrypted",
        )
    if code == FPDF_ERR_SECURITY:
        return BadInput(
            "the PDF uses an encryption scheme that cannot be opened", reason="pdf_encrypted"
        )
    if code == FPDF_ERR_SUCCESS:
        # pypdfium2 raises on a page count below 1 even when loading succeeded.
        return BadInput("the PDF has no pages", reason="pdf_no_pages")
    return BadInput(
        f"the PDF is damaged or truncated and cannot be read ({exc})", reason="pdf_corrupt"
    )


# --- images -------------------------------------------------------------------------------


class ImageSource:
    """A PNG, JPEG, WebP or (multi-page) TIFF. Each frame is a page."""

    def __init__(self, path: Path, kind: InputKind, *, max_pixels: int) -> None:
        from PIL import Image, UnidentifiedImageError

        self._max_pixels = max_pixels
        # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; we refuse at it.
        Image.MAX_IMAGE_PIXELS = max_pixels
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        self._kind = kind
        with path.open("rb") as handle:
            self._head = handle.read(HEAD_BYTES)
        try:
            self._image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadInput(f"the image is too large: {exc}", reason="image_too_large") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise BadInput(
                f"the {kind.value.upper()} image is damaged and cannot be read ({exc})",
                reason="image_corrupt",
            ) from None

    def page_count(self) -> int:
        """Frames, each checked against the pixel limit before anything is decoded."""
        count = int(getattr(self._image, "n_frames", 1))
        for index in range(count):
            self._seek(index)
            width, height = self._image.size
            if width * height > self._max_pixels:
                where = f"frame {index + 1} of the image" if count > 1 else "the image"
                raise BadInput(
                    f"{where} is {width} x {height} pixels, over the limit of"
                    f" {self._max_pixels} pixels",
                    reason="image_too_large",
                )
        self._seek(0)
        return count

    def render(self, page: int, longest_side: int, dpi: float) -> RenderedPage:
        """``dpi`` is for PDF pages: an image has its own pixels."""
        from PIL import Image

        self._seek(page - 1)
        frame = self._image
        width, height = frame.size
        if width * height > self._max_pixels:
            raise BadInput(f"page {page} is {width} x {height} pixels", reason="image_too_large")
        scale = image_scale(width, height, longest_side)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        lossy = self._lossy()
        if self._kind is InputKind.JPEG:
            frame.draft(frame.mode, size)  # let libjpeg decode at 1/2, 1/4 or 1/8 size
        orientation = _orientations().get(int(frame.getexif().get(_EXIF_ORIENTATION, 1)))
        frame.load()
        image: Image.Image = _flatten_to(frame, size)
        if orientation is not None:  # a phone photo taken sideways
            image = image.transpose(orientation)
        return encode(page, image, lossy=lossy)

    def _seek(self, index: int) -> None:
        from PIL import Image

        try:
            self._image.seek(index)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadInput(f"the image is too large: {exc}", reason="image_too_large") from None
        except (EOFError, OSError, SyntaxError, ValueError) as exc:
            raise BadInput(
                f"frame {index + 1} of the image cannot be read ({exc})", reason="image_corrupt"
            ) from None

    def _lossy(self) -> bool:
        if self._kind is InputKind.JPEG:
            return True
        if self._kind is InputKind.WEBP:
            return webp_is_lossy(self._head)
        if self._kind is InputKind.TIFF:
            return str(self._image.info.get("compression", "")) in ("jpeg", "tiff_jpeg")
        return False


def _flatten_to(image: Any, size: tuple[int, int]) -> Any:
    """``image`` (any mode) as RGB or L of ``size``, converted a strip at a time.

    Converting a whole decoded frame at once would hold it two or three times over (an
    RGBA frame, its RGBA copy and an RGB canvas: 1.2 GB for 98 MP, over the render
    process's 1 GiB). Instead each strip of :data:`STRIP_PIXELS` is flattened and shrunk by
    the same whole-number box reduction that ``resize(..., reducing_gap=REDUCING_GAP)``
    applies first, so the frame is held once plus a few megabytes, and the result is the
    same as flattening first and resizing after. Strips start at multiples of the
    reduction factor, so no box straddles two strips.
    """
    from PIL import Image

    flat: Image.Image
    if image.mode in ("RGB", "L"):
        flat = image
    else:
        width, height = image.size
        factor = max(1, int(min(width / size[0], height / size[1]) / REDUCING_GAP))
        rows = max(factor, STRIP_PIXELS // width // factor * factor)
        extrema = image.getextrema() if image.mode in ("I", "F") else None
        canvas: Image.Image | None = None
        for top in range(0, height, rows):
            piece = _flatten(image.crop((0, top, width, min(height, top + rows))), extrema)
            if factor > 1:
                piece = piece.reduce(factor)
            if canvas is None:
                canvas = Image.new(piece.mode, (-(-width // factor), -(-height // factor)))
            canvas.paste(piece, (0, top // factor))
        assert canvas is not None
        flat = canvas
    if flat.size != size:
        flat = flat.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    return flat


def _flatten(image: Any, extrema: tuple[float, float] | None = None) -> Any:
    """Any Pillow mode -> RGB or L, transparency composited on white. ``extrema``: the
    whole frame's (low, high) when ``image`` is a strip of a 32-bit frame."""
    from PIL import Image

    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16"):
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if mode in ("I", "F"):
        low, high = extrema or image.getextrema()
        span = (high - low) or 1
        return image.point(lambda v: (v - low) * (255 / span)).convert("L")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def encode(page: int, image: Any, *, lossy: bool) -> RenderedPage:
    image = _pad_sliver(image)
    buffer = io.BytesIO()
    if lossy:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        mime = "image/jpeg"
    else:
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        mime = "image/png"
    return RenderedPage(page, buffer.getvalue(), mime, image.width, image.height)


def _pad_sliver(image: Any) -> Any:
    """A sliver (a 1 x 10000 pt page renders 1 px wide) is padded with white to
    :func:`ocrpipe.page_geometry.padded_size`.

    Padding adds only margin, never loses content, and keeps OCR servers working: engines
    that shrink an image by its long side would otherwise get a side of 0 px (rapidocr
    fails the request), and vision encoders refuse extreme aspect ratios.
    """
    size = padded_size(*image.size)
    if size == image.size:
        return image
    from PIL import Image

    canvas = Image.new(image.mode, size, 255 if image.mode == "L" else (255, 255, 255))
    canvas.paste(image, (0, 0))
    return canvas
