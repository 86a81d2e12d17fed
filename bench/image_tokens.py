"""Benchmark: the image tokens each kind of page costs, before and after rendering pages the
way LightOn's own client renders them for LightOnOCR (issue 17).

vLLM serves LightOnOCR's Pixtral encoder: an image, its longest side scaled to at most
1540 px, costs ceil(w / 28) x ceil(h / 28) image tokens (14 px patches merged 2 x 2; plus one
break token per row, left out here as the issue counts them). Those tokens are GPU time on
every request of the page, and the page's share of the model's context.

* **before** (until issue 17): every PDF page scaled so that its longest side is exactly
  1540 px, and images scaled to 1540 px too, enlarged by up to 4x;
* **after**: PDF pages at 200 dpi (``Settings.render_dpi``), images as they are, both only
  scaled down to 1540 px (``Settings.render_longest_side``), never enlarged.

Both are measured on a real PDF of each kind through the splitter's
:class:`~ocrpipe.splitter.rendering.renderer.Renderer`, reading the page image's size:
"before" renders at a resolution so high that every page is scaled down to exactly 1540 px,
which is the old rule. Images go through the Renderer for "after"; their "before" is the old
rule's arithmetic (the Renderer no longer enlarges). Slivers are padded to 1:8 in both.
Target: no kind costs more tokens than before.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import say, target
from ocrpipe.page_geometry import MAX_ASPECT, MIN_SHORT_SIDE
from ocrpipe.settings import Settings
from ocrpipe.splitter.rendering.page_decoders import RenderedPage
from ocrpipe.testing import inputs

TOKEN_PX = 28
OLD_MAX_IMAGE_UPSCALE = 4.0
ALWAYS_SCALED_DPI = 100_000.0  # every page is larger than 1540 px at this resolution

MM = 72 / 25.4  # points per millimetre
PDF_KINDS: dict[str, tuple[float, float]] = {  # points
    "A4": (595, 842),
    "Letter": (612, 792),
    "A5": (420, 595),
    "A6 receipt": (298, 420),
    "till receipt 80 x 200 mm": (80 * MM, 200 * MM),
    "business card": (252, 144),
    "slide 16:9 (10 x 5.625 in)": (720, 405),
    "slide 4:3 (10 x 7.5 in)": (720, 540),
    "sliver (A4-wide strip, 2 cm)": (595, 20 * MM),
}
IMAGE_KINDS: dict[str, tuple[int, int]] = {  # pixels
    "phone photo 4032 x 3024": (4032, 3024),
    "fax 1728 x 2200": (1728, 2200),
    "screenshot 800 x 600": (800, 600),
    "small scan 600 x 850": (600, 850),
}


def tokens(width: int, height: int) -> int:
    return math.ceil(width / TOKEN_PX) * math.ceil(height / TOKEN_PX)


def _padded(width: int, height: int) -> tuple[int, int]:
    """The splitter's padding of a sliver to at most 1:8 (see ``_pad_sliver``)."""
    short = max(MIN_SHORT_SIDE, -(-max(width, height) // MAX_ASPECT))
    if min(width, height) >= short:
        return width, height
    return (short, height) if width < height else (width, short)


def image_before(width: int, height: int, longest_side: int) -> tuple[int, int]:
    """The old rule for an image: its longest side scaled to ``longest_side``, enlarged 4x
    at most, the short side at least 16 px within 4 x ``longest_side``."""
    long_side, short_side = max(width, height), min(width, height)
    scale = longest_side / long_side
    if short_side * scale < MIN_SHORT_SIDE:
        scale = min(MIN_SHORT_SIDE / short_side, 4 * longest_side / long_side)
    scale = min(scale, OLD_MAX_IMAGE_UPSCALE)
    return _padded(max(1, round(width * scale)), max(1, round(height * scale)))


def rendered(data: bytes, kind: str, longest_side: int, dpi: float) -> tuple[int, int]:
    """The size of the page image the splitter's Renderer makes of ``data``."""
    from ocrpipe.file_kinds import InputKind
    from ocrpipe.splitter.rendering.renderer import Renderer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input"
        path.write_bytes(data)
        with Renderer(
            path, InputKind(kind), processes=1, longest_side=longest_side, dpi=dpi
        ) as renderer:
            (page,) = renderer.render([1])
    if not isinstance(page, RenderedPage):
        raise RuntimeError(f"the page failed to render: {page}")
    return page.width, page.height


def _row(old: tuple[int, int], new: tuple[int, int]) -> dict[str, Any]:
    return {
        "before_px": list(old),
        "after_px": list(new),
        "before_tokens": tokens(*old),
        "after_tokens": tokens(*new),
        "ratio": round(tokens(*new) / tokens(*old), 3),
    }


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    settings = Settings()
    side, dpi = settings.render_longest_side, settings.render_dpi
    kinds: dict[str, Any] = {}
    for name, (width, height) in PDF_KINDS.items():
        data = inputs.sized_pages_pdf([(width, height)])
        old = rendered(data, "pdf", side, ALWAYS_SCALED_DPI)
        kinds[name] = _row(old, rendered(data, "pdf", side, dpi))
    for name, (width, height) in IMAGE_KINDS.items():
        data = inputs.image_bytes([inputs.text_image("Invoice 42", (width, height))], "PNG")
        kinds[name] = _row(image_before(width, height, side), rendered(data, "png", side, dpi))
    for name, row in kinds.items():
        say(
            f"  {name:30} {row['before_px'][0]:>5} x {row['before_px'][1]:<5}"
            f" {row['before_tokens']:>6,} tokens -> {row['after_px'][0]:>5} x"
            f" {row['after_px'][1]:<5} {row['after_tokens']:>6,} tokens ({row['ratio']:.2f})"
        )
    worst = max(row["ratio"] for row in kinds.values())
    figures = {"render_dpi": settings.render_dpi, "longest_side": side, "kinds": kinds}
    targets = {
        "worst_tokens_ratio_after_before": target(worst, 1.0, higher_is_better=False, unit="ratio"),
    }
    method = (
        "one page of each kind, a real PDF of that size (or a PNG of that many pixels), through"
        f" the splitter's Renderer at {dpi:g} dpi, at most {side} px (after), against the old"
        f" rule on the same input: PDF pages through the Renderer scaled to exactly {side} px,"
        " images by the old arithmetic, enlarged up to 4x (before); tokens = ceil(w/28) x"
        " ceil(h/28)"
    )
    return figures, targets, method


if __name__ == "__main__":
    print(run("--quick" in sys.argv))
