"""How big a page image is: the sizes the splitter renders a page or an image to, and the
prompt tokens that image costs at vLLM (pure).

The splitter's renderer (:mod:`ocrpipe.splitter.rendering.page_decoders`) renders by these
rules and ``ocrpipe plan`` (:mod:`ocrpipe.operations.plan`) counts a page's prompt tokens
by them without rendering it. As LightOn's own client renders for LightOnOCR:

* a PDF page, in points, is rendered at ``dpi`` (200), scaled down so that its longer side
  is at most ``longest_side`` pixels (1540), never enlarged (:func:`page_scale`);
* an image is taken as it is, scaled down the same way (:func:`image_scale`);
* a page so thin that its short side would fall under :data:`MIN_SHORT_SIDE` px is
  rendered at the scale that gives that minimum, its long side capped at 4 x
  ``longest_side``, then padded with white to at most :data:`MAX_ASPECT` to 1
  (:func:`padded_size`);
* vLLM scales an image's longer side down to at most 1540 px, then counts one token per
  28 x 28 px (:func:`vllm_image_tokens`); the prompt adds the chat template's
  :data:`CHAT_TEMPLATE_TOKENS` (:func:`planned_prompt_tokens`).
"""

from __future__ import annotations

import math

from ocrpipe.errors import BadInput

MIN_SHORT_SIDE = 16
POINTS_PER_INCH = 72.0
MAX_ASPECT = 8  # longer side : shorter side, after padding
VLLM_MAX_SIDE = 1540  # vLLM scales an image's longer side to at most this for LightOnOCR
IMAGE_TOKEN_PX = 28  # one image token per 28 x 28 px (patch 14, spatial merge 2)
# The prompt's tokens besides the image's, as vLLM counts LightOnOCR's chat template (the
# empty system turn, the user and assistant turns: bench/prompt_tokens.py, docs/PERFORMANCE.md).
CHAT_TEMPLATE_TOKENS = 12


def page_scale(width_pt: float, height_pt: float, longest_side: int, dpi: float) -> float:
    """Scale factor (pixels per PDF unit): ``dpi``, or less so that the longer side is at
    most ``longest_side`` px (LightOn's client: 200 dpi, at most 1540 px).

    A page so thin that its short side would fall under :data:`MIN_SHORT_SIDE` px is
    rendered at the scale that gives that minimum, with the long side capped at
    ``4 * longest_side`` pixels so that a sliver of a page cannot explode in memory.
    """
    return _scale(width_pt, height_pt, longest_side, dpi / POINTS_PER_INCH)


def image_scale(width_px: float, height_px: float, longest_side: int) -> float:
    """Like :func:`page_scale` for an image in pixels: as it is, or scaled down."""
    return _scale(width_px, height_px, longest_side, 1.0)


def _scale(width: float, height: float, longest_side: int, natural: float) -> float:
    if width <= 0 or height <= 0:
        raise BadInput(f"page has no area ({width:g} x {height:g})", reason="page_size_invalid")
    long_side, short_side = max(width, height), min(width, height)
    scale = min(natural, longest_side / long_side)
    if short_side * scale < MIN_SHORT_SIDE:
        scale = min(MIN_SHORT_SIDE / short_side, 4 * longest_side / long_side)
    return scale


def padded_size(width: int, height: int) -> tuple[int, int]:
    """The size of a rendered page after the sliver padding: its short side at least
    :data:`MIN_SHORT_SIDE` px and at least 1/:data:`MAX_ASPECT` of its long side."""
    short = max(MIN_SHORT_SIDE, -(-max(width, height) // MAX_ASPECT))
    if min(width, height) >= short:
        return width, height
    return max(width, short), max(height, short)


def rendered_size(
    width: float, height: float, longest_side: int, dpi: float, *, image: bool
) -> tuple[int, int]:
    """The size of the page image the splitter makes of a page of ``width`` x ``height``
    (points for a PDF page, pixels for an image), padding included."""
    if image:
        scale = image_scale(width, height, longest_side)
    else:
        scale = page_scale(width, height, longest_side, dpi)
    rounded = max(1, round(width * scale)), max(1, round(height * scale))
    return padded_size(*rounded)


def vllm_image_tokens(width: int, height: int, max_side: int = VLLM_MAX_SIDE) -> int:
    """The image tokens of a ``width`` x ``height`` image at vLLM (Pixtral's resize: both
    sides divided by the same ratio, floored, when the longer one exceeds ``max_side``)."""
    ratio = max(width, height) / max_side
    if ratio > 1:
        width, height = max(1, math.floor(width / ratio)), max(1, math.floor(height / ratio))
    return math.ceil(width / IMAGE_TOKEN_PX) * math.ceil(height / IMAGE_TOKEN_PX)


def planned_image_tokens(
    width: float, height: float, longest_side: int, dpi: float, *, image: bool = False
) -> int:
    """The image tokens of a page of ``width`` x ``height``, rendered by the splitter."""
    return vllm_image_tokens(*rendered_size(width, height, longest_side, dpi, image=image))


def planned_prompt_tokens(
    width: float, height: float, longest_side: int, dpi: float, *, image: bool = False
) -> int:
    """A page's prompt tokens at vLLM: its image's and the chat template's."""
    return planned_image_tokens(width, height, longest_side, dpi, image=image) + (
        CHAT_TEMPLATE_TOKENS
    )
