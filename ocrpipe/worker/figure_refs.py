"""Figure references in a bbox model's reply: find them, check their boxes, and rewrite the
page's Markdown to link the cropped files. Pure functions, no I/O.

LightOnOCR's bbox variants write, where a page has a figure, an image reference followed by
its box: ``![image](image_1.png)x1,y1,x2,y2`` (the model card shows a space before the box),
with coordinates normalised to 0-1000 on the page image the model saw, top left then bottom
right. :func:`find_figures` reads every reference and decides what becomes a figure:

* the reference's target is never used as a name: whatever the model wrote there (``../x``,
  an absolute path, a URL), the file is named by the page and the figure's number
  (:func:`ocrpipe.naming.figure_basename`), so nothing can be written outside the page's
  folder;
* figures are numbered 1, 2, ... in the order their boxes first appear; a box seen again (a
  reference the model repeats) links the same figure instead of cropping it twice;
* at most :data:`MAX_FIGURES` figures per page: a looping model can write thousands of
  references, and each figure is one object write;
* a reference that cannot become a figure is left exactly as the model wrote it and is
  reported with a reason (:data:`REASONS`); so is a figure whose crop fails later (the page
  image cannot be decoded).

:func:`rewrite` then replaces each cropped reference and its box by a link to the figure,
keeping the model's alt text: ``![image](00001.figure-1.png)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_FIGURES = 50  # figures cropped per page; more references are left as text
NORMALISED = 1000  # the model's coordinates run from 0 to this
_MAX_NUMBER_CHARS = 12  # a longer number is out of range whatever it says

# Why a reference was left as text.
REASONS = {
    "no_box": "the reference has no box after it",
    "box_malformed": "the box is not four numbers x1,y1,x2,y2",
    "box_out_of_range": "a coordinate is outside 0-1000",
    "box_inverted": "x1 > x2 or y1 > y2",
    "box_empty": "the box has no area (x1 == x2 or y1 == y2)",
    "too_many_figures": f"the page already has {MAX_FIGURES} figures",
    "page_image_unreadable": "the page image could not be decoded to crop it",
}

_NUMBER = r"-?\d+(?:\.\d+)?"
# Alt text and target are bounded so that a reply full of "![" stays linear to scan.
_REFERENCE = re.compile(
    r"!\[(?P<alt>[^\]\n]{0,200})\]\((?P<target>[^)\s]{0,500})\)"
    rf"(?P<box>[ \t]*{_NUMBER}(?:[ \t]*,[ \t]*{_NUMBER})*)?"
)


@dataclass(frozen=True)
class Box:
    """A box as the model wrote it: normalised 0-1000, (x1, y1) top left."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Reference:
    """One ``![alt](target)`` and its box, at ``[start, end)`` of the reply."""

    ordinal: int  # 1, 2, ... in the order of the reply
    start: int
    end: int
    alt: str
    target: str
    candidate: int | None  # index into FigurePlan.candidates; None: left as text
    reason: str | None  # why it is left as text


@dataclass(frozen=True)
class FigurePlan:
    references: tuple[Reference, ...]
    candidates: tuple[Box, ...]  # distinct boxes to crop, in order of first appearance


@dataclass(frozen=True)
class NotCropped:
    """A reference left as text, for the page's provenance."""

    ordinal: int
    target: str  # as the model wrote it, cut to 100 characters
    reason: str


def find_figures(markdown: str) -> FigurePlan:
    references: list[Reference] = []
    candidates: list[Box] = []
    index: dict[Box, int] = {}
    for ordinal, match in enumerate(_REFERENCE.finditer(markdown), start=1):
        box, reason = _read_box(match.group("box"))
        candidate = None
        if box is not None:
            if box in index:
                candidate = index[box]
            elif len(candidates) < MAX_FIGURES:
                candidate = index[box] = len(candidates)
                candidates.append(box)
            else:
                reason = "too_many_figures"
        references.append(
            Reference(
                ordinal,
                match.start(),
                match.end(),
                match.group("alt"),
                match.group("target"),
                candidate,
                reason,
            )
        )
    return FigurePlan(tuple(references), tuple(candidates))


def _read_box(text: str | None) -> tuple[Box | None, str | None]:
    if text is None:
        return None, "no_box"
    numbers = [part.strip() for part in text.split(",")]
    if len(numbers) != 4:
        return None, "box_malformed"
    if any(len(n) > _MAX_NUMBER_CHARS or n.startswith("-") for n in numbers):
        return None, "box_out_of_range"
    x1, y1, x2, y2 = (float(n) for n in numbers)
    if max(x1, y1, x2, y2) > NORMALISED:
        return None, "box_out_of_range"
    if x1 > x2 or y1 > y2:
        return None, "box_inverted"
    if x1 == x2 or y1 == y2:
        return None, "box_empty"
    return Box(x1, y1, x2, y2), None


def rewrite(
    markdown: str,
    plan: FigurePlan,
    links: Mapping[int, str],
    failed: Mapping[int, str] | None = None,
) -> tuple[str, tuple[NotCropped, ...]]:
    """``markdown`` with each reference whose candidate was cropped replaced by a link to it
    (``links``: candidate index -> link), and what was left as text. ``failed`` maps a
    candidate whose crop failed to the reason."""
    failed = failed or {}
    out: list[str] = []
    left: list[NotCropped] = []
    position = 0
    for ref in plan.references:
        reason = ref.reason
        if ref.candidate is not None:
            reason = failed.get(ref.candidate)
            if reason is None:
                out.append(markdown[position : ref.start])
                out.append(f"![{ref.alt}]({links[ref.candidate]})")
                position = ref.end
                continue
        assert reason is not None
        left.append(NotCropped(ref.ordinal, ref.target[:100], reason))
    out.append(markdown[position:])
    return "".join(out), tuple(left)


def numbered(plan: FigurePlan, cropped: Callable[[int], bool]) -> dict[int, int]:
    """Candidate index -> figure number, 1, 2, ... over the candidates that were cropped."""
    numbers: dict[int, int] = {}
    for candidate in range(len(plan.candidates)):
        if cropped(candidate):
            numbers[candidate] = len(numbers) + 1
    return numbers
