"""Generate PDFs whose text is known, for tests, benchmarks and the sample document."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from reportlab.pdfgen.canvas import Canvas

WORDS = [
    "invoice",
    "total",
    "amount",
    "due",
    "payment",
    "account",
    "customer",
    "order",
    "number",
    "delivery",
    "address",
    "shipping",
    "date",
    "report",
    "quarter",
    "revenue",
    "growth",
    "market",
    "product",
    "service",
    "contract",
    "annual",
    "summary",
    "section",
    "table",
    "figure",
    "result",
    "analysis",
    "method",
    "data",
    "sample",
    "value",
    "average",
    "percent",
    "increase",
    "decrease",
    "budget",
    "cost",
    "estimate",
    "project",
    "team",
    "office",
    "north",
    "south",
]


def page_text(page: int, seed: int = 0, lines: int = 12) -> list[str]:
    """Deterministic lines of plain words for one page."""
    rng = random.Random(seed * 100_003 + page)
    text = [f"Page {page} of the test document"]
    for _ in range(lines):
        text.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 10))))
    return text


def text_pdf(
    pages: int, *, seed: int = 0, lines: int = 12, size: tuple[float, float] | None = None
) -> tuple[bytes, list[list[str]]]:
    """A born-digital PDF; returns its bytes and each page's lines."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    width, height = size or A4
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=(width, height), invariant=1)
    texts = []
    for number in range(1, pages + 1):
        lines_ = page_text(number, seed, lines)
        texts.append(lines_)
        y = height - 72
        pdf.setFont("Helvetica-Bold", 16)
        pdf.drawString(72, y, lines_[0])
        pdf.setFont("Helvetica", 12)
        y -= 36
        for line in lines_[1:]:
            pdf.drawString(72, y, line)
            y -= 22
        pdf.showPage()
    pdf.save()
    return buffer.getvalue(), texts


def write_sample(path: Path) -> None:
    """The README's sample: two pages of a small report."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    width, height = A4
    pages = [
        (
            "Quarterly Report",
            [
                "This sample document shows ocrpipe turning a PDF into Markdown.",
                "Each page is rendered to an image, sent through Pub/Sub to the worker,",
                "recognized by the OCR server and written to the output bucket.",
                "",
                "Revenue grew by 12 percent compared with the previous quarter.",
                "The north office opened two new sites and hired eight people.",
            ],
        ),
        (
            "Next Steps",
            [
                "Pages are processed in parallel and assembled in order.",
                "A failed page is retried with backoff before it is dead-lettered.",
                "",
                "Contact the operations team for questions about this report.",
            ],
        ),
    ]
    for title, lines in pages:
        _title(pdf, height - 90, title)
        pdf.setFont("Helvetica", 13)
        _text(pdf, height - 134, lines, leading=24)
        pdf.showPage()
    pdf.save()


def _title(pdf: Canvas, y: float, title: str) -> None:
    pdf.setFont("Helvetica-Bold", 22)
    pdf.drawString(72, y, title)


def _text(pdf: Canvas, y: float, lines: list[str], *, leading: float) -> float:
    """``lines`` from ``y`` down, in the current font; an empty line is a gap. Returns the
    y of the next line."""
    for line in lines:
        if line:
            pdf.drawString(72, y, line)
        y -= leading
    return y


FIGURES_SAMPLE_PAGES: list[tuple[str, list[str], str, str, list[str]]] = [
    (
        "Annual Report 2026",
        [
            "Revenue grew in every quarter of the year, driven by the north office.",
            "The chart below shows revenue by quarter, in millions of euros.",
        ],
        "chart",
        "Figure 1: Revenue by quarter",
        [
            "The fourth quarter was the strongest, as new contracts started.",
            "Costs stayed within the budget set at the start of the year.",
        ],
    ),
    (
        "The New Site",
        [
            "The north office moved to a new site by the lake in the spring.",
            "The photo below was taken on the opening day.",
        ],
        "photo",
        "Figure 2: The lake at the new site",
        ["Contact the operations team for questions about this report."],
    ),
]
CHART_VALUES = (("Q1", 42), ("Q2", 55), ("Q3", 61), ("Q4", 78))


def write_figures_sample(path: Path) -> None:
    """The figures sample (``examples/figures.pdf``): two pages of text, one with a bar
    chart drawn in vector graphics, one with a photo-like raster image, each with a caption.
    Deterministic: the same bytes on every run (a test checks the committed file)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    width, height = A4
    for title, before, figure, caption, after in FIGURES_SAMPLE_PAGES:
        _title(pdf, height - 90, title)
        pdf.setFont("Helvetica", 12)
        top = _text(pdf, height - 130, before, leading=20) - 10
        box_height = 260.0
        if figure == "chart":
            _bar_chart(pdf, 110, top - box_height, 380, box_height)
        else:
            pdf.drawImage(ImageReader(_photo()), 110, top - box_height, 380, box_height)
        y = top - box_height - 28
        pdf.setFont("Helvetica-Oblique", 11)
        pdf.drawString(110, y, caption)
        pdf.setFont("Helvetica", 12)
        _text(pdf, y - 40, after, leading=20)
        pdf.showPage()
    pdf.save()


def _bar_chart(pdf: Canvas, x: float, y: float, width: float, height: float) -> None:
    """Filled bars on two axes, without labels inside: the chart is all picture."""
    from reportlab.lib import colors

    pdf.setStrokeColor(colors.black)
    pdf.setLineWidth(2)
    pdf.line(x, y, x + width, y)
    pdf.line(x, y, x, y + height)
    fills = (colors.HexColor("#1f77b4"), colors.HexColor("#ff7f0e"),
             colors.HexColor("#2ca02c"), colors.HexColor("#d62728"))  # fmt: skip
    slot = width / len(CHART_VALUES)
    top = max(value for _, value in CHART_VALUES)
    for index, ((_, value), fill) in enumerate(zip(CHART_VALUES, fills, strict=True)):
        pdf.setFillColor(fill)
        bar = (height - 10) * value / top
        pdf.rect(x + index * slot + slot * 0.2, y, slot * 0.6, bar, stroke=0, fill=1)
    pdf.setFillColor(colors.black)


def _photo(size: tuple[int, int] = (480, 330)) -> Image.Image:
    """A landscape drawn with Pillow: sky, sun, hills, a lake, and a little grain."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for row in range(height):
        shade = row / height
        draw.line(
            [(0, row), (width, row)],
            fill=(int(90 + 120 * shade), int(150 + 70 * shade), int(230 - 30 * shade)),
        )
    draw.ellipse((width * 0.7, height * 0.1, width * 0.82, height * 0.28), fill=(255, 220, 120))
    draw.polygon([(0, height * 0.62), (width * 0.3, height * 0.35), (width * 0.55, height * 0.6),
                  (width * 0.8, height * 0.4), (width, height * 0.6), (width, height),
                  (0, height)], fill=(60, 110, 60))  # fmt: skip
    draw.rectangle((0, height * 0.72, width, height), fill=(40, 90, 150))
    grain = random.Random(7)
    pixels = image.load()
    assert pixels is not None
    for _ in range(width * height // 8):
        px, py = grain.randrange(width), grain.randrange(height)
        r, g, b = pixels[px, py]  # type: ignore[misc]
        delta = grain.randint(-12, 12)
        pixels[px, py] = (max(0, r + delta), max(0, g + delta), max(0, b + delta))
    return image


if __name__ == "__main__":
    write_sample(Path("examples/sample.pdf"))
    write_figures_sample(Path("examples/figures.pdf"))
