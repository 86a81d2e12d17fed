"""Figure references in a bbox model's reply, and figure links moved between files (pure)."""

from __future__ import annotations

import pytest

from ocrpipe import figure_links
from ocrpipe.worker.figure_crops import to_pixels
from ocrpipe.worker.figure_refs import MAX_FIGURES, Box, find_figures, numbered, rewrite


def cropped_all(markdown: str) -> tuple[str, list[tuple[int, str, str]]]:
    plan = find_figures(markdown)
    numbers = numbered(plan, lambda _: True)
    links = {c: f"f{n}.png" for c, n in numbers.items()}
    text, left = rewrite(markdown, plan, links)
    return text, [(n.ordinal, n.target, n.reason) for n in left]


CASES = [
    pytest.param("no figure here", "no figure here", [], id="plain text"),
    pytest.param(
        "a ![image](image_1.png)1,2,3,4 b", "a ![image](f1.png) b", [], id="no space before box"
    ),
    pytest.param(
        "![image](image_1.png) 1, 2 ,3,4\n", "![image](f1.png)\n", [], id="spaces around numbers"
    ),
    pytest.param("![image](image_1.png)\t10.5,20,30.25,40", "![image](f1.png)", [], id="decimals"),
    pytest.param(
        "![a chart](image_1.png)0,0,1000,1000", "![a chart](f1.png)", [], id="alt text kept"
    ),
    pytest.param(
        "![image](image_1.png)\n1,2,3,4",
        "![image](image_1.png)\n1,2,3,4",
        [(1, "image_1.png", "no_box")],
        id="a box on the next line is not its box",
    ),
    pytest.param(
        "![image](image_1.png)1,2,3,4,5",
        "![image](image_1.png)1,2,3,4,5",
        [(1, "image_1.png", "box_malformed")],
        id="five numbers",
    ),
    pytest.param(
        "![image](image_1.png)1,2,3,4 ![image](image_2.png)0,0,0,9",
        "![image](f1.png) ![image](image_2.png)0,0,0,9",
        [(2, "image_2.png", "box_empty")],
        id="a bad one beside a good one",
    ),
    pytest.param(
        "![image](image_2.png)5,5,9,9 ![image](image_1.png)1,1,2,2 ![image](image_9.png)5,5,9,9",
        "![image](f1.png) ![image](f2.png) ![image](f1.png)",
        [],
        id="numbered by first appearance, a repeated box is one figure",
    ),
    pytest.param(
        "[link](x.png)1,2,3,4", "[link](x.png)1,2,3,4", [], id="a link that is no image is text"
    ),
    pytest.param(
        '![image](image_1.png "title")1,2,3,4',
        '![image](image_1.png "title")1,2,3,4',
        [],
        id="an image with a title is not the model's reference",
    ),
]


@pytest.mark.parametrize(("markdown", "expected", "left"), CASES)
def test_find_and_rewrite(markdown: str, expected: str, left: list[tuple[int, str, str]]) -> None:
    assert cropped_all(markdown) == (expected, left)


def test_a_failed_crop_leaves_its_references_as_text() -> None:
    markdown = "![image](image_1.png)1,2,3,4 and ![image](image_1.png)1,2,3,4"
    plan = find_figures(markdown)
    text, left = rewrite(markdown, plan, {}, {0: "page_image_unreadable"})
    assert text == markdown
    assert [n.reason for n in left] == ["page_image_unreadable"] * 2


def test_the_figure_limit_counts_distinct_boxes() -> None:
    refs = " ".join(f"![image](i.png){n},0,{n + 1},1" for n in range(MAX_FIGURES + 5))
    plan = find_figures(refs + " ![image](i.png)0,0,1,1")
    assert len(plan.candidates) == MAX_FIGURES
    assert [r.reason for r in plan.references].count("too_many_figures") == 5
    assert plan.references[-1].candidate == 0  # the first box again: still linked


def test_a_reply_full_of_openings_has_no_reference() -> None:
    # Alt text and target are bounded in the pattern: without that, this reply (one line of
    # 800 KB) is a quadratic scan that outlives the delivery (the suite's timeout catches it).
    assert find_figures("![" * 200_000 + "](" * 200_000).references == ()


@pytest.mark.parametrize(
    ("box", "size", "pixels"),
    [
        (Box(0, 0, 1000, 1000), (1540, 1089), (0, 0, 1540, 1089)),
        (Box(100, 100, 500, 400), (1000, 1400), (100, 140, 500, 560)),
        (Box(333, 333, 334, 334), (100, 100), (33, 33, 34, 34)),  # rounded outwards
        (Box(999.9, 0, 1000, 0.1), (50, 50), (49, 0, 50, 1)),  # under a pixel: one pixel
    ],
)
def test_boxes_to_pixels(
    box: Box, size: tuple[int, int], pixels: tuple[int, int, int, int]
) -> None:
    assert to_pixels(box, *size) == pixels


def test_relink_moves_only_the_links_named() -> None:
    text = "![image](00001.figure-1.png) [x](00001.figure-1.png.bak) 00001.figure-1.png"
    assert figure_links.relink(text, {"00001.figure-1.png": "pages/00001.figure-1.png"}) == (
        "![image](pages/00001.figure-1.png) [x](00001.figure-1.png.bak) 00001.figure-1.png"
    )


def test_relink_bytes_reports_where_lengths_changed() -> None:
    data = "é ![a](p/1.png) mid ![b](p/2.png) end".encode()
    moved, edits = figure_links.relink_bytes(data, {"p/1.png": "doc/p/1.png", "p/2.png": "x"})
    assert moved == "é ![a](doc/p/1.png) mid ![b](x) end".encode()
    assert edits == [(data.index(b"p/1.png"), 4), (data.index(b"p/2.png"), -6)]
    assert figure_links.shift(0, edits) == 0
    end_of_mid = data.index(b" end")
    assert moved[figure_links.shift(end_of_mid, edits) :] == b" end"
