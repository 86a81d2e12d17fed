"""Recognized text boxes to Markdown, in reading order. Pure functions, no I/O.

The local OCR engine (:mod:`ocrpipe.local.engine`) gets one box per detected run of text: a
four-point quadrilateral in image pixels, the recognized text and a confidence score. This
module turns them into plain Markdown the way a reader would go through a single-column page:

1. boxes scoring below ``min_score`` (or with blank text) are dropped;
2. boxes are grouped into lines: sorted by vertical centre, a box joins the current line when
   it overlaps the line vertically by at least half of the smaller of the two heights;
3. lines are read top to bottom, boxes left to right, joined with one space;
4. a blank line (a new paragraph) starts where the distance between two consecutive line
   centres is clearly larger than the page's typical line spacing.

The typical line spacing is the median distance between consecutive line centres, counting
only distances of at most ``1.5 x`` the median line height (the distances within paragraphs);
when there are none, the median line height itself. A gap of more than ``1.4 x`` that spacing
starts a paragraph. No attempt is made at columns, tables or headings: the production model
(LightOnOCR) does that, this is a stand-in for local runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

Point = tuple[float, float]

MIN_SCORE = 0.5
SAME_LINE_OVERLAP = 0.5
WITHIN_PARAGRAPH_PITCH = 1.5
PARAGRAPH_GAP_RATIO = 1.4


@dataclass(frozen=True)
class TextBox:
    """One recognized run of text: ``quad`` is four (x, y) corners in image pixels."""

    quad: tuple[Point, Point, Point, Point]
    text: str
    score: float

    @property
    def top(self) -> float:
        return min(y for _, y in self.quad)

    @property
    def bottom(self) -> float:
        return max(y for _, y in self.quad)

    @property
    def left(self) -> float:
        return min(x for x, _ in self.quad)

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def centre_y(self) -> float:
        return (self.top + self.bottom) / 2


def rect(
    left: float, top: float, right: float, bottom: float, text: str, score: float = 1.0
) -> TextBox:
    """An axis-aligned box, clockwise from the top-left corner (as rapidocr returns them)."""
    return TextBox(((left, top), (right, top), (right, bottom), (left, bottom)), text, score)


@dataclass
class _Line:
    boxes: list[TextBox]
    top: float
    bottom: float

    @property
    def centre_y(self) -> float:
        return (self.top + self.bottom) / 2

    @property
    def height(self) -> float:
        return median(box.height for box in self.boxes)

    def overlaps(self, box: TextBox) -> bool:
        overlap = min(self.bottom, box.bottom) - max(self.top, box.top)
        smaller = min(self.bottom - self.top, box.height)
        return overlap > 0 and overlap >= SAME_LINE_OVERLAP * smaller

    def add(self, box: TextBox) -> None:
        # The band is the running mean of the members' bands: a slightly skewed page does not
        # make it grow until it swallows the next line.
        n = len(self.boxes)
        self.top = (self.top * n + box.top) / (n + 1)
        self.bottom = (self.bottom * n + box.bottom) / (n + 1)
        self.boxes.append(box)

    def text(self) -> str:
        ordered = sorted(self.boxes, key=lambda box: (box.left, box.top))
        return " ".join(box.text.strip() for box in ordered)


def group_lines(boxes: Sequence[TextBox], *, min_score: float = MIN_SCORE) -> list[list[TextBox]]:
    """Kept boxes grouped into lines, top to bottom, each line left to right."""
    return [
        sorted(line.boxes, key=lambda box: (box.left, box.top)) for line in _group(boxes, min_score)
    ]


def _group(boxes: Sequence[TextBox], min_score: float) -> list[_Line]:
    kept = [box for box in boxes if box.score >= min_score and box.text.strip()]
    kept.sort(key=lambda box: (box.centre_y, box.left))
    lines: list[_Line] = []
    for box in kept:
        if lines and lines[-1].overlaps(box):
            lines[-1].add(box)
        else:
            lines.append(_Line([box], box.top, box.bottom))
    return lines


def _paragraph_breaks(lines: Sequence[_Line]) -> list[bool]:
    """For each pair of consecutive lines, whether a new paragraph starts between them."""
    if len(lines) < 2:
        return []
    pitches = [b.centre_y - a.centre_y for a, b in zip(lines, lines[1:], strict=False)]
    line_height = median(line.height for line in lines)
    within = [p for p in pitches if p <= WITHIN_PARAGRAPH_PITCH * line_height]
    spacing = median(within) if within else line_height
    return [p > PARAGRAPH_GAP_RATIO * spacing for p in pitches]


def boxes_to_markdown(boxes: Sequence[TextBox], *, min_score: float = MIN_SCORE) -> str:
    """Markdown for one page: lines joined by newlines, paragraphs by a blank line.

    An empty page (or one where every box was dropped) gives the empty string.
    """
    lines = _group(boxes, min_score)
    if not lines:
        return ""
    parts = [lines[0].text()]
    for line, new_paragraph in zip(lines[1:], _paragraph_breaks(lines), strict=True):
        parts.append("\n\n" if new_paragraph else "\n")
        parts.append(line.text())
    return "".join(parts)
