"""Cut figures out of a page image: the boxes a bbox model wrote, in pixels of the image it saw.

The crop is taken from the page image the worker already holds, not re-rendered from the
source: the model's coordinates are relative to exactly that image, whatever size the
splitter rendered it (at most ``render_longest_side`` on its longest side: an A4 page at
1540 px is about 186 DPI, sharp on a screen), while a re-render would read the whole input
(up to 512 MiB) into the worker and run pypdfium2, which is not thread-safe, beside the OCR
of other pages.

A normalised box becomes pixels with its left and top edges rounded down and its right and
bottom edges rounded up, so that a crop never loses a sliver of its figure. A figure keeps
the page image's format: PNG stays PNG, JPEG stays JPEG at quality 90 (the splitter's).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from ocrpipe.naming import IMAGE_EXTENSIONS
from ocrpipe.worker.figure_refs import NORMALISED, Box

JPEG_QUALITY = 90
# What Pillow raises on an image it cannot decode.
_UNDECODABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Crop:
    data: bytes
    content_type: str
    extension: str
    box: tuple[int, int, int, int]  # pixels of the page image: left, top, right, bottom
    image_size: tuple[int, int]  # the page image's width and height


def to_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` in pixels of a ``width`` x ``height`` image. Rounded outwards, a box with any
    area (x1 < x2, y1 < y2, all within 0-1000) covers at least one pixel each way."""
    left = math.floor(box.x1 * width / NORMALISED)
    top = math.floor(box.y1 * height / NORMALISED)
    right = math.ceil(box.x2 * width / NORMALISED)
    bottom = math.ceil(box.y2 * height / NORMALISED)
    return left, top, right, bottom


def crop_figures(image: bytes, mime: str, boxes: Sequence[Box]) -> list[Crop | str]:
    """One crop per box, or the reason it could not be cropped (see
    :data:`ocrpipe.worker.figure_refs.REASONS`)."""
    if not boxes:
        return []
    try:
        page = Image.open(io.BytesIO(image))
        page.load()
    except _UNDECODABLE:
        return ["page_image_unreadable"] * len(boxes)
    extension = IMAGE_EXTENSIONS[mime]
    results: list[Crop | str] = []
    for box in boxes:
        pixels = to_pixels(box, page.width, page.height)
        buffer = io.BytesIO()
        figure = page.crop(pixels)
        if mime == "image/jpeg":
            figure.save(buffer, "JPEG", quality=JPEG_QUALITY)
        else:
            figure.save(buffer, "PNG")
        results.append(Crop(buffer.getvalue(), mime, extension, pixels, (page.width, page.height)))
    return results
