"""Generate PDFs whose text is known, for tests, benchmarks and the sample document."""

from __future__ import annotations

import io
import random
from pathlib import Path

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
        y = height - 90
        pdf.setFont("Helvetica-Bold", 22)
        pdf.drawString(72, y, title)
        pdf.setFont("Helvetica", 13)
        y -= 44
        for line in lines:
            if line:
                pdf.drawString(72, y, line)
            y -= 24
        pdf.showPage()
    pdf.save()


if __name__ == "__main__":
    write_sample(Path("examples/sample.pdf"))
