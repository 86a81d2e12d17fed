from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from ocrpipe.errors import BadInput
from ocrpipe.file_kinds import InputKind
from ocrpipe.page_geometry import MIN_SHORT_SIDE, page_scale
from ocrpipe.splitter.rendering.page_decoders import RenderedPage
from ocrpipe.splitter.rendering.renderer import Renderer
from ocrpipe.testing import inputs
from ocrpipe.testing.pdfs import text_pdf


@pytest.mark.parametrize(
    ("size", "expected"),
    [((595, 842), (1089, 1540)), ((842, 595), (1540, 1089)), ((612, 612), (1540, 1540))],
)
def test_longest_side_is_1540_and_aspect_ratio_is_kept(
    tmp_path: Path, size: tuple[float, float], expected: tuple[int, int]
) -> None:
    data, _ = text_pdf(3, size=size)
    path = tmp_path / "in.pdf"
    path.write_bytes(data)
    with Renderer(path, InputKind.PDF, processes=2, longest_side=1540) as renderer:
        assert renderer.page_count() == 3
        pages = list(renderer.render(range(1, 4)))
    assert [p.page for p in pages] == [1, 2, 3]
    for page in pages:
        assert isinstance(page, RenderedPage), page
        image = Image.open(io.BytesIO(page.data))
        assert image.format == "PNG" and page.mime == "image/png"
        assert abs(image.width - expected[0]) <= 1 and abs(image.height - expected[1]) <= 1
        assert max(image.size) == 1540
        assert abs(image.width / image.height - size[0] / size[1]) < 0.01


def test_a_sliver_of_a_page_is_clamped() -> None:
    # So thin that its short side would need more than 4 x 1540 px on the long side: the long
    # side is capped (padding to the aspect limit happens after rendering).
    assert page_scale(10000, 1, 1540, 200) == pytest.approx(4 * 1540 / 10000)
    # Thin, but the minimum short side fits under the cap: the short side gets it.
    scale = page_scale(1000, 10, 1540, 200)
    assert 10 * scale == pytest.approx(MIN_SHORT_SIDE)
    assert 1000 * scale < 4 * 1540
    # An ordinary page larger than 1540 px at 200 dpi: scaled down to exactly longest_side.
    assert 842 * page_scale(595, 842, 1540, 200) == pytest.approx(1540)
    # A small one: 200 dpi, never enlarged.
    assert page_scale(298, 420, 1540, 200) == pytest.approx(200 / 72)


def test_a_page_without_area_is_bad_input() -> None:
    with pytest.raises(BadInput):
        page_scale(0, 100, 1540, 200)


def test_not_a_pdf_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "in.pdf"
    path.write_bytes(b"%PDF-1.7\nthis is not really a pdf")
    with (
        Renderer(path, InputKind.PDF, processes=1, longest_side=1540) as renderer,
        pytest.raises(BadInput),
    ):
        renderer.page_count()


# LightOn's own client renders a PDF page at 200 dpi (pypdfium2 scale 200/72) and only scales
# it down, so that its longest side is at most 1540 px: a small page is never enlarged.
REFERENCE = {
    "A4": ((595, 842), (1089, 1540)),  # 1653 x 2339 at 200 dpi: scaled down
    "Letter": ((612, 792), (1190, 1540)),
    "A6 receipt": ((298, 420), (828, 1167)),  # 200 dpi as it is (1540 px enlarged it 1.8x)
    "business card": ((252, 144), (700, 400)),
    "slide 10 x 5.625 in": ((720, 405), (1540, 866)),
    "small slide 5 x 2.8 in": ((360, 202.5), (1000, 563)),
}


@pytest.mark.parametrize(("size", "expected"), REFERENCE.values(), ids=REFERENCE.keys())
def test_a_pdf_page_renders_at_200_dpi_scaled_down_only_like_the_reference_client(
    tmp_path: Path, size: tuple[float, float], expected: tuple[int, int]
) -> None:
    path = tmp_path / "in.pdf"
    path.write_bytes(inputs.sized_pages_pdf([size]))
    with Renderer(path, InputKind.PDF, processes=1, longest_side=1540) as renderer:
        (page,) = renderer.render([1])
    assert isinstance(page, RenderedPage), page
    assert abs(page.width - expected[0]) <= 1 and abs(page.height - expected[1]) <= 1, (
        page.width,
        page.height,
    )
