"""Recognized boxes to Markdown: reading order, lines, paragraphs."""

from __future__ import annotations

import pytest

from ocrpipe.local.boxes_to_markdown import TextBox, boxes_to_markdown, group_lines, rect


def line(top: float, *words: tuple[float, str], height: float = 30) -> list[TextBox]:
    """Boxes of one line of text: (left, text) pairs, 150 px wide each."""
    return [rect(left, top, left + 150, top + height, text) for left, text in words]


CASES = [
    pytest.param([], "", id="empty page"),
    pytest.param(
        [rect(400, 100, 700, 130, "right column"), rect(10, 102, 300, 131, "left column")],
        "left column right column",
        id="two boxes on one line are joined left to right",
    ),
    pytest.param(
        [*line(160, (10, "third")), *line(100, (10, "first")), *line(130, (10, "second"))],
        "first\nsecond\nthird",
        id="lines are read top to bottom",
    ),
    pytest.param(
        [
            *line(100, (10, "one"), (200, "two")),
            *line(131, (10, "three")),
            *line(162, (10, "four")),
            *line(250, (10, "five")),
            *line(281, (10, "six")),
        ],
        "one two\nthree\nfour\n\nfive\nsix",
        id="a large gap starts a paragraph",
    ),
    pytest.param(
        [*line(100, (10, "Title")), *line(175, (10, "Intro")), *line(250, (10, "Body"))],
        "Title\n\nIntro\n\nBody",
        id="one-line paragraphs stay apart",
    ),
    pytest.param(
        [
            rect(10, 100, 160, 130, "kept"),
            rect(200, 100, 350, 130, "noise", score=0.3),
            rect(400, 100, 550, 130, "edge", score=0.5),
        ],
        "kept edge",
        id="boxes scoring below 0.5 are dropped",
    ),
    pytest.param([rect(10, 10, 90, 40, "x", score=0.1)], "", id="only noise gives an empty page"),
    pytest.param(
        [rect(10, 100, 160, 130, "  padded  "), rect(200, 100, 350, 130, "   ")],
        "padded",
        id="blank boxes are dropped and text is stripped",
    ),
    pytest.param(
        [
            TextBox(((10, 100), (300, 92), (301, 122), (11, 130)), "slightly", 0.9),
            TextBox(((320, 91), (600, 84), (601, 114), (321, 121)), "tilted", 0.9),
            *line(140, (10, "next")),
        ],
        "slightly tilted\nnext",
        id="a slightly tilted line stays one line",
    ),
]


@pytest.mark.parametrize(("boxes", "markdown"), CASES)
def test_boxes_to_markdown(boxes: list[TextBox], markdown: str) -> None:
    assert boxes_to_markdown(boxes) == markdown


def test_output_does_not_depend_on_input_order() -> None:
    boxes = [
        *line(100, (10, "a"), (200, "b"), (400, "c")),
        *line(131, (10, "d")),
        *line(220, (10, "e"), (200, "f")),
    ]
    assert boxes_to_markdown(boxes) == boxes_to_markdown(list(reversed(boxes)))
    assert boxes_to_markdown(boxes) == "a b c\nd\n\ne f"


def test_group_lines_orders_boxes() -> None:
    boxes = [*line(131, (200, "d"), (10, "c")), *line(100, (200, "b"), (10, "a"))]
    assert [[box.text for box in row] for row in group_lines(boxes)] == [["a", "b"], ["c", "d"]]
