"""The repetition-loop detector: it cuts a reply once it repeats one block past what a page
holds (rows, or one row's characters), so loops are cut early, blank ones included, and
never cuts a real page, not even one that really repeats itself (sign-in sheets, labels,
tables of zeros, coupons, ruled pages), nor the generated corpora."""

from __future__ import annotations

import random

import pytest

from bench.corpus import truth
from bench.loops import corpora
from ocrpipe.testing.pdfs import WORDS
from ocrpipe.worker.repetition import (
    DEFAULT_RULE,
    RepetitionDetector,
    RepetitionRule,
    find_loop,
    repeats_at_end,
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

ROWS, LINE = DEFAULT_RULE.page_rows, DEFAULT_RULE.line_chars  # 160 rows, 385 characters

LOOPS = {
    "fault server's loop": "page-sha256:" + "ab" * 32 + "\n\nthe same line again" * 600,
    "table row with figures": HEAD + "<tr><td>Total</td><td>0.00</td></tr>\n" * 400,
    "markdown row": HEAD + "| Balance carried forward | 1,204.00 |\n" * 400,
    "table row on one line": HEAD + "<tr><td>x</td><td>0</td></tr>" * 400,
    "counting rows": HEAD + "".join(f"{i}. the same line again\n" for i in range(1, 800)),
    "a ledger longer than a page": "".join(
        f"| 2024-{1 + d // 28:02d}-{1 + d % 28:02d} | 0.00 | 0.00 |\n" for d in range(400)
    ),
    "a sentence": HEAD + "The payment is due within thirty days of the invoice date. " * 300,
    "LaTeX": HEAD + "$$ x_{1} + x_{2} $$ " * 800,
    "newlines": HEAD + "\n" * 5000,
    "spaces": HEAD + " " * 5000,
    "dots": HEAD + "." * 5000,
    "non-breaking spaces": HEAD + "&nbsp;" * 2000,
    "empty table rows": HEAD + "<tr><td></td><td></td><td></td></tr>\n" * 1000,
    "markdown separators": HEAD + "| --- | --- | --- |\n" * 1000,
}


def loop_start(text: str) -> int:
    """Where the loop starts to repeat (a counter repeats, digits aside, once it has three)."""
    if "100. the same" in text:
        return text.index("100. the same")
    if text.startswith(HEAD):
        return len(HEAD)
    return 0 if text.startswith("|") else text.index("\n")


@pytest.mark.parametrize("text", LOOPS.values(), ids=LOOPS.keys())
def test_a_loop_is_cut_once_it_runs_past_what_a_page_holds(text: str) -> None:
    read = streamed(text)
    assert read is not None, "the loop was not cut"
    loop = find_loop(text[:read])
    assert loop is not None
    if loop.rows:  # more rows than a page holds, and not many more
        assert loop.copies * loop.rows > ROWS
        assert (loop.copies - 1) * loop.rows <= ROWS
    else:  # longer than one row can be, and not much longer
        assert loop.covered > LINE
    assert read - loop_start(text) <= loop.covered + 2 * loop.period + DEFAULT_RULE.check_every


@pytest.mark.parametrize("block", ["\n", " ", "\t", "\n\n", " \n"])
def test_blank_loops_of_one_character_per_token_are_cut_far_below_max_tokens(block: str) -> None:
    text = HEAD + block * 4096
    read = streamed(text, piece=1)  # one character per token: the worst case
    assert read is not None
    assert read - len(HEAD) <= 4096 // 8


def test_the_rule_follows_the_page_size() -> None:
    assert RepetitionRule.for_page(1089, 1540) == DEFAULT_RULE
    assert RepetitionRule.for_page(1540, 866).page_rows == ROWS  # a slide: its longest side
    small = RepetitionRule.for_page(600, 400)  # a receipt photo not enlarged
    assert (small.page_rows, small.line_chars) == (62, 150)
    tiny = RepetitionRule.for_page(56, 84)  # never less room than the floors
    assert (tiny.page_rows, tiny.line_chars) == (32, 128)
    rows = "| Name: ______ | Signature: ______ |\n" * 50
    assert find_loop(rows, small) is None and find_loop(rows * 2, small) is not None


def test_the_loop_found_names_its_block() -> None:
    loop = find_loop(LOOPS["table row with figures"])
    assert loop is not None
    assert loop.period == len("<tr><td>Total</td><td>0.00</td></tr>\n")
    assert "Total" in loop.block and loop.rows == 1


def test_a_reply_cut_at_max_tokens_says_whether_it_ends_repeating_itself() -> None:
    wide = "<tr>" + "<td>0.00</td>" * 10 + "</tr>\n"
    assert repeats_at_end(HEAD + wide * 100)  # within a page, but repeating at its end
    assert repeats_at_end(HEAD + "".join(f"{i}. the same line again\n" for i in range(100)))
    assert not repeats_at_end(HEAD + " ".join(f"word{i}" for i in range(3000)))
    assert not repeats_at_end(html_table(100))
    assert not repeats_at_end(HEAD + wide * 5)  # too short to say


def test_numbers_within_one_row_must_repeat_verbatim() -> None:
    counting = "Items: " + " ".join(f"item{i}" for i in range(10, 99))  # one row of text
    assert find_loop(counting) is None and streamed(counting) is None


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


SIGN_IN = "| Name | Signature | Date |\n| --- | --- | --- |\n" + (
    "| Name: ______________ | Signature: ______________ | Date: __________ |\n" * 30
)
LABEL = "ACME Corporation<br>12 Main Street<br>Springfield, IL 62701"
LABELS = "<table>\n" + f"<tr><td>{LABEL}</td><td>{LABEL}</td><td>{LABEL}</td></tr>\n" * 10
ZEROS = "<table>\n" + ("<tr>" + "<td>0.00</td>" * 8 + "</tr>\n") * 120 + "</table>"
BOILERPLATE = (
    "This coupon entitles the bearer to one free coffee with any purchase of a pastry at "
    "participating stores. Not valid with other offers. Expires 31 December 2024.\n\n"
) * 8

REAL = {
    "sign-in sheet, 30 rows": SIGN_IN,
    "sheet of 30 labels in 10 rows": LABELS,
    "table of zeros, 120 rows": ZEROS,
    "the same coupon 8 times": BOILERPLATE,
    "html table, 300 rows": html_table(300),
    "ledger rows that differ in the date only, 120 rows": ledger_of_zeros(120),
    "markdown blank table, 60 rows": "| Name | Time |\n| --- | --- |\n" + "|  |  |\n" * 60,
    "numbered list of 150 identical items": numbered_list(150),
    "20 identical labelled rows": repeated_labels(20),
    "applicant blocks": applicant_blocks(6),
    "index": index_page(),
    "table of contents with dot leaders": table_of_contents(120),
    "page of dot rules": ruled_page("."),
    "page of dash rules": ruled_page("-"),
    "page of underscore rules": ruled_page("_"),
    "page of spaced dots": ruled_page(". ", width=60),
    "blank sign-in sheet, 60 rows": blank_sheet(60),
    "blank sign-in sheet, 150 rows": blank_sheet(150),
    "page of 150 ruled lines": ruled_page("_", lines=150),
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


def fed_whole(text: str, piece: int) -> RepetitionDetector:
    detector = RepetitionDetector()
    for start in range(0, len(text), piece):
        assert detector.feed(text[start : start + piece]) is None
    return detector


def test_a_reply_is_checked_once_per_check_every_characters() -> None:
    """What keeps checking cheap, counted instead of timed (the cost of a check, in
    microseconds, is a figure of ``python -m bench loops``): a check per ``check_every``
    new characters, whatever the pieces' size, and a piece longer than that once."""
    text = "\n\n".join(truth(40))
    every = DEFAULT_RULE.check_every
    for piece in (1, 4, every):
        assert fed_whole(text, piece).checks == len(text) // every, piece
    assert fed_whole(text, 10 * every).checks == -(-len(text) // (10 * every))


def test_impossible_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        RepetitionRule(page_rows=0)
    with pytest.raises(ValueError):
        RepetitionRule(min_repeats=1)
    with pytest.raises(ValueError):
        RepetitionRule(max_keep=100)
