"""The repetition-loop detector: it cuts replies that repeat one block verbatim, early, and
never cuts real pages (tables, lists, forms, indexes, leaders, the generated corpora)."""

from __future__ import annotations

import random
import time

import pytest

from bench.corpus import truth
from bench.loops import corpora
from ocrpipe.testing.pdfs import WORDS
from ocrpipe.worker.repetition import (
    DEFAULT_RULE,
    RepetitionDetector,
    RepetitionRule,
    find_loop,
)

CORPORA = corpora()

HEAD = "# Statement of account\n\nCustomer 4471, period ending 31 March 2024.\n\n"


def streamed(text: str, piece: int = 4) -> int | None:
    """Feed ``text`` in pieces of ``piece`` characters; the length read when it was cut."""
    detector = RepetitionDetector()
    for start in range(0, len(text), piece):
        if detector.feed(text[start : start + piece]):
            return start + piece
    return None


# --------------------------------------------------------------------------- real loops


LOOPS = {
    "fault server's loop": "page-sha256:" + "ab" * 32 + "\n\nthe same line again" * 600,
    "table row with figures": HEAD + "<tr><td>Total</td><td>0.00</td></tr>\n" * 400,
    "markdown row": HEAD + "| Balance carried forward | 1,204.00 |\n" * 400,
    "a sentence": HEAD + "The payment is due within thirty days of the invoice date. " * 300,
    "a 400-character paragraph": HEAD + ("".join(random.Random(3).choices(WORDS, k=60)))[:400] * 40,
    "LaTeX": HEAD + "$$ x_{1} + x_{2} $$ " * 800,
}


@pytest.mark.parametrize("text", LOOPS.values(), ids=LOOPS.keys())
def test_verbatim_loops_are_cut_after_about_1500_characters(text: str) -> None:
    read = streamed(text)
    assert read is not None, "the loop was not cut"
    loop_starts = len(HEAD) if text.startswith(HEAD) else text.index("\n")
    assert read - loop_starts <= DEFAULT_RULE.min_chars + DEFAULT_RULE.check_every + 4


BLANK_LOOPS = {
    "dots": HEAD + "." * 20000,
    "newlines": HEAD + "\n" * 20000,
    "empty table rows": HEAD + "<tr><td></td><td></td><td></td></tr>\n" * 1000,
    "markdown separators": HEAD + "| --- | --- | --- |\n" * 1000,
    "non-breaking spaces": HEAD + "&nbsp;" * 5000,
}


@pytest.mark.parametrize("text", BLANK_LOOPS.values(), ids=BLANK_LOOPS.keys())
def test_blank_loops_are_cut_only_after_more_than_a_page_of_them(text: str) -> None:
    read = streamed(text)
    assert read is not None, "the loop was not cut"
    assert DEFAULT_RULE.min_chars_blank <= read - len(HEAD)
    assert read - len(HEAD) <= DEFAULT_RULE.min_chars_blank + DEFAULT_RULE.check_every + 4
    loop = find_loop(text[:read])
    assert loop is not None and loop.blank


def test_a_loop_that_changes_as_it_goes_is_not_cut() -> None:
    counting = HEAD + "".join(f"{i}. the same line again\n" for i in range(1, 800))
    assert streamed(counting) is None


def test_the_loop_found_names_its_block() -> None:
    loop = find_loop(LOOPS["table row with figures"])
    assert loop is not None
    assert loop.period == len("<tr><td>Total</td><td>0.00</td></tr>\n")
    assert "Total" in loop.block and not loop.blank


# --------------------------------------------------------------------- real documents


def html_table(rows: int) -> str:
    rng = random.Random(rows)
    body = "".join(
        f"<tr><td>{i}</td><td>Widget {rng.choice('ABC')}</td><td>{rng.randint(1, 9)}</td>"
        f"<td>{rng.randint(100, 999)}.00</td></tr>\n"
        for i in range(1, rows + 1)
    )
    return f"<table>\n<tr><th>No</th><th>Item</th><th>Qty</th><th>Price</th></tr>\n{body}</table>"


def ledger_of_zeros(rows: int) -> str:
    """Rows that differ only in their date: nearly, but not exactly, the same."""
    head = "| Date | Debit | Credit | Balance |\n| --- | --- | --- | --- |\n"
    return head + "".join(
        f"| 2024-{1 + d // 28:02d}-{1 + d % 28:02d} | 0.00 | 0.00 | 0.00 |\n" for d in range(rows)
    )


def numbered_list(items: int) -> str:
    return "".join(f"{i}. Check that the valve is closed.\n" for i in range(1, items + 1))


def repeated_labels(rows: int) -> str:
    return "## Attendance\n\n" + "Name: ______________________  Signature: ____________\n" * rows


def applicant_blocks(count: int) -> str:
    return "".join(
        f"### Applicant {k}\n\nName: ____________________\nDate of birth: __ / __ / ____\n"
        "Address: ____________________________________________\n"
        "Phone: ________________  Email: ____________________\n\n"
        for k in range(1, count + 1)
    )


def index_page() -> str:
    rng = random.Random(5)
    terms = sorted({f"{rng.choice(WORDS)} {rng.choice(WORDS)}" for _ in range(300)})
    return "".join(
        f"{term}, {', '.join(str(p) for p in sorted(rng.sample(range(1, 400), 3)))}\n"
        for term in terms
    )


def table_of_contents(entries: int) -> str:
    lines = []
    for i in range(1, entries + 1):
        title = f"{i}. {WORDS[i % len(WORDS)].title()} {WORDS[(3 * i) % len(WORDS)]}"
        lines.append(f"{title} {'.' * (70 - len(title))} {4 * i + 1}\n")
    return "# Contents\n\n" + "".join(lines)


def ruled_page(char: str, lines: int = 60, width: int = 120) -> str:
    return "Notes\n\n" + (char * width + "\n") * lines


def blank_sheet(rows: int) -> str:
    head = "<table>\n<tr><th>Name</th><th>Company</th><th>Time in</th><th>Time out</th></tr>\n"
    return head + "<tr><td></td><td></td><td></td><td></td></tr>\n" * rows + "</table>"


REAL = {
    "html table, 300 rows": html_table(300),
    "ledger rows that differ in the date only": ledger_of_zeros(300),
    "markdown blank table, 60 rows": "| Name | Time |\n| --- | --- |\n" + "|  |  |\n" * 60,
    "numbered list of identical items": numbered_list(400),
    "20 identical labelled rows": repeated_labels(20),
    "applicant blocks": applicant_blocks(6),
    "index": index_page(),
    "table of contents with dot leaders": table_of_contents(120),
    "page of dot rules": ruled_page("."),
    "page of dash rules": ruled_page("-"),
    "page of underscore rules": ruled_page("_"),
    "page of spaced dots": ruled_page(". ", width=60),
    "blank sign-in sheet, 60 rows": blank_sheet(60),
}


@pytest.mark.parametrize("text", REAL.values(), ids=REAL.keys())
def test_real_documents_are_never_cut(text: str) -> None:
    assert streamed(text) is None
    assert streamed(text, piece=1) is None
    assert find_loop(text) is None


@pytest.mark.parametrize("name", CORPORA)
def test_the_generated_corpora_are_never_cut(name: str) -> None:
    """The page texts of the generated corpus and of the bad-input corpus, and the whole
    200-page generated document read as one long reply of similar sentences."""
    texts = CORPORA[name]
    assert texts
    assert [t[:80] for t in texts if streamed(t)] == []


def test_checking_costs_microseconds_per_check() -> None:
    text = "\n\n".join(truth(40))
    started = time.perf_counter()
    for _ in range(5):
        assert streamed(text, piece=4) is None
    per_check = (time.perf_counter() - started) / (5 * len(text) / DEFAULT_RULE.check_every)
    assert per_check < 0.001  # well under a millisecond, even on a busy 2-core machine


def test_impossible_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        RepetitionRule(min_chars=9000, min_chars_blank=8000)
    with pytest.raises(ValueError):
        RepetitionRule(min_repeats=1)
