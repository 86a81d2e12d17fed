"""The local engine as a stand-in for LightOnOCR's bbox model, on the figures sample
(examples/figures.pdf: a bar chart and a photo), with real rapidocr."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pypdfium2 as pdfium
import pytest
from PIL import Image

from ocrpipe.local.engine import RapidOcrEngine, create_app, ocr_page
from ocrpipe.local.figure_regions import figure_regions
from ocrpipe.models import load_models
from ocrpipe.testing.pdfs import text_pdf, write_figures_sample
from ocrpipe.worker.figure_refs import Box, find_figures

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FIGURES = EXAMPLES / "figures.pdf"
BBOX_MODEL = "lightonai/LightOnOCR-2-1B-bbox"
# Where write_figures_sample draws each page's figure: points from the top left of A4.
A4 = (595.2755905511812, 841.8897637795277)
DRAWN = (110.0, 180.0, 490.0, 440.0)


def rendered(pdf: bytes | Path, longest_side: int = 1540) -> list[Image.Image]:
    document = pdfium.PdfDocument(pdf)
    try:
        pages = []
        for index in range(len(document)):
            page = document[index]
            scale = longest_side / max(page.get_size())
            pages.append(page.render(scale=scale).to_pil().convert("RGB"))
        return pages
    finally:
        document.close()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


@pytest.fixture(scope="module")
def engine() -> RapidOcrEngine:
    return RapidOcrEngine()


def test_the_figures_sample_is_generated_by_code_in_the_repository(tmp_path: Path) -> None:
    write_figures_sample(tmp_path / "figures.pdf")
    assert (tmp_path / "figures.pdf").read_bytes() == FIGURES.read_bytes()


@pytest.mark.parametrize("longest_side", [1540, 1100])
def test_each_figure_of_the_sample_is_found_where_it_was_drawn(
    engine: RapidOcrEngine, longest_side: int
) -> None:
    for image in rendered(FIGURES, longest_side):
        (region,) = figure_regions(image, engine.recognize(image))
        drawn = tuple(v * 1000 / A4[i % 2] for i, v in enumerate(DRAWN))
        found = region.normalised(image.width, image.height)
        assert overlap(found, drawn) > 0.9, (found, drawn)


def test_pages_of_text_have_no_figure(engine: RapidOcrEngine) -> None:
    pages = rendered(EXAMPLES / "sample.pdf") + rendered(text_pdf(2)[0])
    for image in pages:
        assert figure_regions(image, engine.recognize(image)) == []


def test_the_reply_references_each_figure_in_reading_order_as_the_bbox_model_does(
    engine: RapidOcrEngine,
) -> None:
    chart, photo = rendered(FIGURES)
    markdown, _, _ = ocr_page(engine, png(chart), figure_boxes=True)
    before, reference, after = markdown.split("\n\n")[1:4]
    assert before.startswith("Revenue grew") and after == "Figure 1: Revenue by quarter"
    plan = find_figures(markdown)
    assert [r.target for r in plan.references] == ["image_1.png"] and plan.candidates
    box: Box = plan.candidates[0]
    assert reference == f"![image](image_1.png){box.x1:.0f},{box.y1:.0f},{box.x2:.0f},{box.y2:.0f}"
    plain, _, _ = ocr_page(engine, png(photo))
    assert "![image]" not in plain and "Figure 2: The lake at the new site" in plain


async def test_the_engine_serving_the_bbox_model_answers_with_figures(
    engine: RapidOcrEngine,
) -> None:
    spec = load_models().models[BBOX_MODEL]
    app = create_app(
        engine,
        model_name=BBOX_MODEL,
        max_model_len=spec.max_model_len,
        figure_boxes=spec.figure_boxes,
    )
    page = rendered(FIGURES)[1]
    url = f"data:image/png;base64,{base64.b64encode(png(page)).decode()}"
    request = {
        "model": BBOX_MODEL,
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
        ],
    }
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            reply = (await client.post("/v1/chat/completions", json=request)).json()
            models = (await client.get("/v1/models")).json()
    content = reply["choices"][0]["message"]["content"]
    assert "![image](image_1.png)" in content and "The lake at the new site" in content
    assert models["data"][0]["max_model_len"] == 8192
