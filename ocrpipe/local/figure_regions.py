"""The local engine's stand-in for a bbox model: where a page has figures, and the Markdown
that references them the way LightOnOCR's bbox variants do.

rapidocr finds the text; what is left on the page is a figure when it is big and solid
enough (:func:`figure_regions`):

1. a small grey copy of the page (longest side :data:`WORK_SIDE` px) marks as ink every
   pixel clearly darker than the paper or clearly coloured;
2. the recognized text boxes are erased from it (with a margin), so text never counts;
   but not a box that is mostly ink itself: that is text read into a picture (a label on a
   bar, a sign in a photo, or noise the recognizer took for text), part of the figure;
3. what is left is dilated a little, so a chart's bars and axes join into one region, and
   split into connected regions (OpenCV);
4. a region is a figure when it spans at least :data:`MIN_SIDE` of the page's width and of
   its height and at least :data:`MIN_INK` of its box is ink (a photo, a bar chart, a filled
   drawing; rules and the empty grid of a table are not).

:func:`figures_markdown` then lays the page out as :func:`boxes_to_markdown` does, with
``![image](image_N.png)x1,y1,x2,y2`` (0-1000, figures numbered top to bottom) where each
figure sits in the reading order, and drops the text recognized inside a figure (the bbox
model does not transcribe a picture's pixels either).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ocrpipe.local.boxes_to_markdown import TextBox, boxes_to_markdown

WORK_SIDE = 400  # px, longest side of the copy regions are found in
INK_BELOW = 200  # grey level: darker is ink
INK_SATURATION = 60  # max - min of R, G, B: more is a colour
TEXT_MARGIN = 0.3  # of a text box's smaller side, erased around it
JOIN_PX = 3  # dilation, in px of the small copy
MIN_SIDE = 0.08  # of the page's width and of its height
MIN_INK = 0.15  # of a region's box
TEXT_MAX_INK = 0.5  # a text box with more of its area in ink is on a picture
NORMALISED = 1000


@dataclass(frozen=True)
class Region:
    """A figure's box in pixels of the page image: left, top, right, bottom."""

    left: int
    top: int
    right: int
    bottom: int

    def normalised(self, width: int, height: int) -> tuple[int, int, int, int]:
        """0-1000, rounded outwards."""
        return (
            math.floor(self.left * NORMALISED / width),
            math.floor(self.top * NORMALISED / height),
            math.ceil(self.right * NORMALISED / width),
            math.ceil(self.bottom * NORMALISED / height),
        )

    def holds(self, box: TextBox) -> bool:
        x = sum(px for px, _ in box.quad) / 4
        return self.left <= x <= self.right and self.top <= box.centre_y <= self.bottom


def figure_regions(image: Image.Image, text: Sequence[TextBox]) -> list[Region]:
    """The figures of an RGB page image, top to bottom, given its recognized text boxes."""
    scale = min(1.0, WORK_SIDE / max(image.size))
    small = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BOX,
    )
    rgb = np.asarray(small.convert("RGB"), dtype=np.int16)
    ink = (rgb.mean(axis=2) < INK_BELOW) | (rgb.max(axis=2) - rgb.min(axis=2) > INK_SATURATION)
    erase = []
    for box in text:
        xs = [px for px, _ in box.quad]
        left, right = max(0, int(min(xs) * scale)), math.ceil(max(xs) * scale)
        top, bottom = max(0, int(box.top * scale)), math.ceil(box.bottom * scale)
        inked = ink[top:bottom, left:right]
        if inked.size == 0 or inked.mean() >= TEXT_MAX_INK:
            continue
        margin = math.ceil(min(bottom - top, right - left) * TEXT_MARGIN)
        erase.append((max(0, top - margin), bottom + margin, max(0, left - margin), right + margin))
    for top, bottom, left, right in erase:
        ink[top:bottom, left:right] = False
    mask = ink.astype(np.uint8)
    joined = cv2.dilate(mask, np.ones((2 * JOIN_PX + 1, 2 * JOIN_PX + 1), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    height, width = mask.shape
    regions = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label][:4])
        if w < MIN_SIDE * width or h < MIN_SIDE * height:
            continue
        member = labels[y : y + h, x : x + w] == label
        if mask[y : y + h, x : x + w][member].mean() < MIN_INK:
            continue
        # The box of the region's own ink, not of its dilated outline.
        rows, columns = np.nonzero(mask[y : y + h, x : x + w] & member)
        regions.append(
            Region(
                max(0, math.floor((x + int(columns.min())) / scale)),
                max(0, math.floor((y + int(rows.min())) / scale)),
                min(image.width, math.ceil((x + int(columns.max()) + 1) / scale)),
                min(image.height, math.ceil((y + int(rows.max()) + 1) / scale)),
            )
        )
    return sorted(regions, key=lambda r: (r.top, r.left))


def figures_markdown(
    text: Sequence[TextBox], regions: Sequence[Region], size: tuple[int, int]
) -> str:
    """The page's Markdown with a reference to each figure where it sits."""
    outside = [box for box in text if not any(region.holds(box) for region in regions)]
    parts: list[str] = []
    rest = sorted(outside, key=lambda box: box.centre_y)
    for number, region in enumerate(regions, start=1):
        middle = (region.top + region.bottom) / 2
        above = [box for box in rest if box.centre_y < middle]
        rest = [box for box in rest if box.centre_y >= middle]
        if above:
            parts.append(boxes_to_markdown(above))
        x1, y1, x2, y2 = region.normalised(*size)
        parts.append(f"![image](image_{number}.png){x1},{y1},{x2},{y2}")
    if rest:
        parts.append(boxes_to_markdown(rest))
    return "\n\n".join(part for part in parts if part)
