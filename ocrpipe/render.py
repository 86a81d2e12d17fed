"""Render PDF pages to images with pypdfium2, in worker processes.

pypdfium2 is not thread-safe (two threads rendering text pages crashed Python 10 of 10
times here) and functions-framework serves events from threads, so every PDFium call,
counting pages included, happens in a child process. Each child opens the document once;
pages are rendered in order through a bounded window, so memory stays flat for long PDFs.
"""

from __future__ import annotations

import io
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocrpipe.errors import BadInput

# Pages whose longer side would need more than this many pixels on the shorter side are
# clamped: an absurd page size never turns into an absurd image.
MIN_SHORT_SIDE = 16
PNG_COMPRESS_LEVEL = 1  # 1.5-4x faster than Pillow's default for ~10% larger files


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


def page_scale(width_pt: float, height_pt: float, longest_side: int) -> float:
    """Scale factor (pixels per PDF unit) so that the longer side is ``longest_side`` px.

    A page so thin that its short side would fall under :data:`MIN_SHORT_SIDE` px is
    rendered at the scale that gives that minimum, with the long side capped at
    ``4 * longest_side`` pixels so that a sliver of a page cannot explode in memory.
    """
    if width_pt <= 0 or height_pt <= 0:
        raise BadInput(
            f"page has no area ({width_pt:g} x {height_pt:g} pt)", reason="page_size_invalid"
        )
    long_pt, short_pt = max(width_pt, height_pt), min(width_pt, height_pt)
    scale = longest_side / long_pt
    if short_pt * scale < MIN_SHORT_SIDE:
        scale = min(MIN_SHORT_SIDE / short_pt, 4 * longest_side / long_pt)
    return scale


# --- child process side -------------------------------------------------------------------

_child_path: str = ""
_child_pdf: Any = None


def _child_init(path: str) -> None:
    global _child_path
    _child_path = path


def _child_doc() -> Any:
    global _child_pdf
    if _child_pdf is None:
        import pypdfium2 as pdfium

        _child_pdf = pdfium.PdfDocument(Path(_child_path))
    return _child_pdf


def _child_count() -> tuple[int, str]:
    """(page count, "") or (-1, PDFium's complaint): exceptions do not pickle well."""
    import pypdfium2 as pdfium

    try:
        return len(_child_doc()), ""
    except pdfium.PdfiumError as exc:
        return -1, str(exc)


def _child_render(index: int, longest_side: int) -> RenderedPage:
    page = _child_doc()[index]
    try:
        width, height = page.get_size()
        bitmap = page.render(scale=page_scale(width, height, longest_side))
        image = bitmap.to_pil()
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return RenderedPage(index + 1, buffer.getvalue(), "image/png", image.width, image.height)
    finally:
        page.close()


# --- parent side --------------------------------------------------------------------------


class PdfRenderer:
    """A pool of processes that hold one open PDF. Use as a context manager."""

    def __init__(self, path: Path, *, processes: int, longest_side: int) -> None:
        self._longest_side = longest_side
        self._processes = processes
        self._pool = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_child_init,
            initargs=(str(path),),
        )

    def __enter__(self) -> PdfRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def page_count(self) -> int:
        count, complaint = self._pool.submit(_child_count).result()
        if count < 0:
            raise BadInput(f"not a readable PDF: {complaint}", reason="pdf_unreadable")
        return count

    def render(self, pages: Iterable[int]) -> Iterator[RenderedPage]:
        """Render 1-based ``pages`` and yield them in the order given.

        At most ``2 * processes`` pages are in flight, so a long PDF never sits in memory.
        """
        window: deque[Future[RenderedPage]] = deque()
        for page in pages:
            window.append(self._pool.submit(_child_render, page - 1, self._longest_side))
            if len(window) >= 2 * self._processes:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
