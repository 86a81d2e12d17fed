"""What the CLI prints, at 80 columns: names and gs:// URIs whole (folded onto more lines,
or elided in the middle where one line is all there is, never cut at their extension), and
a batch's bar with its rate and ETA."""

from __future__ import annotations

import re

import pytest
from rich.console import Console
from rich.text import Text

from ocrpipe.operations import batch_views, views
from ocrpipe.operations.batch_status import (
    BatchStatus,
    DocumentSummary,
    Failure,
    PageInTrouble,
)
from ocrpipe.operations.status import DocumentStatus, PageError, PageTrouble

LONG_NAME = "batch1/Grüße aus Köln/2024/Quartalsbericht über die Umsätze im Rheinland.pdf"
LONG_URI = (
    "gs://ocrpipe-output-a1b2c3/batch1/Grüße aus Köln/2024/Quartalsbericht über die"
    " Umsätze im Rheinland.pdf/@1712345678901234/document.md"
)


def rendered(*renderables: object, width: int = 80) -> str:
    console = Console(record=True, width=width, color_system=None)
    for renderable in renderables:
        console.print(renderable)
    return console.export_text()


def unfolded(text: str) -> str:
    """``text`` with white space taken out (where a cell folds a name onto more lines)."""
    return re.sub(r"\s+", "", text)


def column(table: str, index: int) -> str:
    """Everything in column ``index`` of a rendered table's body, lines joined."""
    cells = [line.split("│")[index + 1] for line in table.splitlines() if line.startswith("│")]
    return unfolded("".join(cells))


@pytest.mark.parametrize(
    ("text", "width", "expected"),
    [
        ("short.pdf", 20, "short.pdf"),
        ("collide/scan.pdf", 16, "collide/scan.pdf"),
        ("batch1/a-very-long-file-name-indeed.pdf", 18, "batch1/a-…deed.pdf"),
        ("batch1/sub/folder/report.tar.gz", 12, "batc….tar.gz"),
        ("Grüße/日本語の文書ファイル.pdf", 16, "Grüße/…イル.pdf"),
    ],
)
def test_elide_keeps_the_start_and_the_extension(text: str, width: int, expected: str) -> None:
    assert views.elide(text, width) == expected
    assert Text(views.elide(text, width)).cell_len <= width


def test_a_status_table_at_80_columns_keeps_every_name_and_uri_whole() -> None:
    statuses = [
        DocumentStatus(LONG_NAME, 1, "done", page_count=12, done=12, markdown_uri=LONG_URI),
        DocumentStatus("x.pdf", 2, "rejected", error=PageError("not_a_pdf", "text, not a PDF")),
    ]
    text = rendered(views.status_table(statuses, now=0.0))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert column(text, 0) == unfolded(LONG_NAME + "x.pdf")
    assert column(text, 7).startswith(unfolded(LONG_URI))
    assert "…" not in text


def test_the_failures_and_troubles_tables_fold_at_80_columns() -> None:
    status = BatchStatus(
        prefix="batch1/",
        now=1000.0,
        documents=(DocumentSummary(LONG_NAME, 1, "running", 3, 1, 1, retrying=1),),
        failures=(Failure(LONG_NAME, 2, "ocr_repetition_loop", "looped at every temperature"),),
        recent_pages=2,
        window_s=300.0,
        started=900.0,
        states={"running": 1},
        troubles=(
            PageInTrouble(
                LONG_NAME,
                PageTrouble(3, "retrying", 4, 10, "ocr_unavailable:503", "HTTP 503", 970.0),
            ),
        ),
        last_change=990.0,
    )
    console = Console(record=True, width=80, color_system=None)
    batch_views.print_batch(console, status, replay_command="ocrpipe dlq replay")
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    failures, troubles = text.split("pages whose last delivery failed")
    assert column(failures, 0) == unfolded(LONG_NAME)
    assert column(troubles, 0) == unfolded(LONG_NAME)
    assert column(troubles, 3) == "4of10"
    assert column(troubles, 4) == "30sago:ocr_unavailable:503:HTTP503"


def batch(*, split: bool, done: int, rate_pages: int) -> BatchStatus:
    documents = [DocumentSummary("b/a.pdf", 1, "running", 40, done, 0)]
    if not split:
        documents.append(DocumentSummary("b/b.pdf", 1, "splitting", None, 0, 0))
    return BatchStatus(
        prefix="b/",
        now=1000.0,
        documents=tuple(documents),
        failures=(),
        recent_pages=rate_pages,
        window_s=300.0,
        started=700.0,
        states={"running": 1} | ({} if split else {"splitting": 1}),
        last_change=995.0,
    )


def test_the_batch_bar_fits_80_columns_with_rate_and_eta_and_no_total_while_splitting() -> None:
    bar = batch_views.BatchBar(Console(), "batch1/" + "x" * 60 + ".pdf")
    bar.show(batch(split=False, done=10, rate_pages=30))
    splitting = rendered(bar)
    bar.show(batch(split=True, done=20, rate_pages=60))
    split = rendered(bar)
    for text in (splitting, split):
        assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "10/? pages" in splitting  # no total while a document is not split: no jumps
    assert "1 splitting" in splitting
    first = split.splitlines()[0]
    assert "20/40 pages" in first and "12.0/min" in first and "ETA 1m 40s" in first
    assert first.startswith("batch1/xx…") and "xx.pdf " in first  # the label keeps its ends


def test_a_batch_is_labelled_by_the_folder_its_names_share() -> None:
    assert batch_views.batch_label("collide/scan.p") == "collide/"
    assert batch_views.batch_label("batch1/") == "batch1/"
    assert batch_views.batch_label("scan") == "batch"
