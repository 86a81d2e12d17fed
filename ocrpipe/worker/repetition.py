"""Spot a repetition loop in a reply while it is being generated, so it can be cut early,
without ever cutting a page that really repeats itself.

A looping model (LightOnOCR, like most OCR VLMs, now and then) repeats one chunk of text
until ``max_tokens``: 4096 tokens of GPU time for a reply that is thrown away and asked
again at a higher temperature. Reading the reply as a stream and stopping it as soon as it
is *certainly* looping saves most of that time.

But pages repeat text too: a sign-in sheet is 30 identical "Name ___ Signature ___ Date ___"
rows, a sheet of address labels is the same address 30 times, a ledger can be rows of zeros,
a form the same block per applicant. Cut at the first few copies, such a page is cut at
every temperature and fails although the model read it right. Locally a faithful
repetition and a loop look the same; what tells them apart is how far they run. A page
holds only so many rows, and a row only so many characters; a loop does not stop there.

The rule: the reply is cut when its end repeats one block (at most ``max_period``
characters, at least ``min_repeats`` copies) over more than one page could hold:

* a block with line breaks (newlines, ``<tr>``, ``<br>``, LaTeX ``\\\\``; the most of
  newlines and tags per copy) is cut once its copies make more rows than ``page_rows``;
* a block without (a word, a cell, a run of dots, spaces or ``&nbsp;``) once its copies
  are longer than one row can be (``line_chars`` visible characters, a tag counting as
  one).

``page_rows`` and ``line_chars`` come from the page image (:meth:`RepetitionRule.for_page`):
its longest side (so a page turned sideways is covered) divided by the height of a row and
the width of a character of the smallest type a page at that size can carry legibly,
:data:`MIN_EM_PX` = 8 px per em (4.4 pt type on an A4 page at 1540 px, 2.9 pt at 200 dpi),
with rows of 1.2 em and characters of 0.5 em: 160 rows and 385 characters at 1540 px.
Real pages set type two to three times larger, so a faithful repetition stays well inside.

Between rows, digits are compared as if equal (each reads as ``0``), so a loop that counts
as it goes ("41. the same line", "42. the same line", ...) is cut like a verbatim one; a
ledger whose rows differ only in their figures is held to the same bound, which no page
reaches. Within a row the repetition must be verbatim: "Item 10 Item 11 ... Item 60" on one
line is text, not a loop.

Blank loops (newlines, spaces, one character per token on some tokenizers) are cut like any
other: after ``page_rows`` newlines or ``line_chars`` spaces, far below ``max_tokens``.

What it costs a loop: a block of one short row is cut after about ``page_rows`` copies,
about 8% of an uncut 4096-token loop for the fault server's loop (see
``bench/results/loops.json``). The longer a copy's rows, the later the cut: a loop whose
rows hold more than about 100 characters reaches ``max_tokens`` first and ends ``length``,
like a long page; the OCR client then asks for more tokens (see
:mod:`ocrpipe.worker.ocr_client`), where it is cut or reaches the model's context.

Why this and not the alternatives the issue weighed (issue 17):

* vLLM's ``repetition_detection`` request field (vLLM >= 0.17; ``finish_reason``
  ``repetition``) counts token patterns with no notion of a page: ``min_count`` must exceed
  the copies of the longest faithful repetition (30 rows of a sign-in sheet, more in a
  table of zeros), and ``max_pattern_size 64, min_count 3`` stopped a reply after 4 tokens.
  It only exists on vLLM, so the client would still have to judge every other server. Its
  ``repetition`` finish is still honoured as a loop if a deployment turns it on.
* Never cutting the last attempt keeps faithful pages, but only at the highest temperature
  and after three cut attempts, and a page that loops at every temperature then pays one
  whole uncut attempt.
* The page-capacity rule keeps a faithful page at the first temperature in one request,
  and cuts the common loops (a row, a line, blank runs) early.

Cost: :class:`RepetitionDetector` keeps only the tail it needs (at most ``max_keep``
characters, as written and with digits masked) and checks every ``check_every`` (128) new
characters. A check looks for the tail's last 32 characters within the previous
``max_period`` characters (one ``str.rfind`` per candidate, usually none in ordinary text)
and compares two slices for each candidate: microseconds per check.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_MARKUP = re.compile(r"<[^<>]*>|&(?:[A-Za-z]+|#[0-9]+|#[xX][0-9A-Fa-f]+);")
_ROW_TAG = re.compile(r"<tr\b|<br\s*/?>|\\\\", re.IGNORECASE)
_DIGITS = str.maketrans("123456789", "000000000")

MIN_EM_PX = 8.0  # the smallest type a page image carries legibly, in pixels per em
ROW_EM = 1.2  # a row of type: its line height
CHAR_EM = 0.5  # a character: the average advance
MIN_PAGE_ROWS = 32  # floors for tiny images, whose own size would give too little room
MIN_LINE_CHARS = 128
DEFAULT_LONGEST_SIDE = 1540  # LightOnOCR's page size, when the image's is unknown


@dataclass(frozen=True)
class RepetitionRule:
    """When a tail counts as a loop; see the module docstring for why these numbers."""

    page_rows: int = math.floor(DEFAULT_LONGEST_SIDE / (ROW_EM * MIN_EM_PX))  # 160
    line_chars: int = math.floor(DEFAULT_LONGEST_SIDE / (CHAR_EM * MIN_EM_PX))  # 385
    max_period: int = 500
    min_repeats: int = 3
    check_every: int = 128
    probe: int = 32
    max_keep: int = 65536

    def __post_init__(self) -> None:
        if min(self.max_period, self.check_every, self.probe, self.page_rows) < 1:
            raise ValueError(f"impossible repetition rule: {self}")
        if self.min_repeats < 2 or self.line_chars < self.probe:
            raise ValueError(f"impossible repetition rule: {self}")
        if self.max_keep < self.min_repeats * self.max_period:
            raise ValueError("max_keep must hold min_repeats copies of the longest block")

    @classmethod
    def for_page(cls, width: int, height: int, *, min_em_px: float = MIN_EM_PX) -> RepetitionRule:
        """The rule for a page image of ``width`` x ``height`` pixels."""
        side = max(width, height, 1)
        return cls(
            page_rows=max(MIN_PAGE_ROWS, math.floor(side / (ROW_EM * min_em_px))),
            line_chars=max(MIN_LINE_CHARS, math.floor(side / (CHAR_EM * min_em_px))),
        )

    @property
    def keep(self) -> int:
        """Characters of tail a check needs: the longest span a cut can need, capped."""
        longest = (self.page_rows + 1) * self.max_period
        return min(self.max_keep, max(longest, self.line_chars + self.max_period))


DEFAULT_RULE = RepetitionRule()


@dataclass(frozen=True)
class Loop:
    """A repetition at the end of a text that runs past what a page holds."""

    period: int  # characters per copy
    block: str  # the last copy, digits read as 0
    covered: int  # characters at the end of the text known to repeat
    copies: int  # covered // period
    rows: int  # line breaks per copy (0: the block is part of one row)


def mask_digits(text: str) -> str:
    """``text`` with every digit read as ``0``, so counters compare equal."""
    return text.translate(_DIGITS)


def _periodic(text: str, period: int, span: int) -> bool:
    """The last ``span`` characters equal themselves shifted by ``period``."""
    n = len(text)
    return span <= n and text[n - span + period :] == text[n - span : n - period]


def _copies_past_a_page(window: str, period: int, rule: RepetitionRule) -> tuple[int, int]:
    """(copies of the block that no page holds, line breaks per copy), from ``window``:
    the last three copies (three, so that tags cut by the block's edges are whole)."""
    breaks = max(window.count("\n"), len(_ROW_TAG.findall(window)))
    rows = math.ceil(breaks / 3)
    if rows:
        return rule.page_rows // rows + 1, rows
    visible = max(1, math.ceil(len(_MARKUP.sub("x", window)) / 3))
    return rule.line_chars // visible + 1, 0


def find_masked_loop(
    text: str, rule: RepetitionRule = DEFAULT_RULE, *, raw: str | None = None
) -> Loop | None:
    """:func:`find_loop` for a text whose digits are masked already; ``raw``, the same text
    unmasked, for the verbatim check of a block without line breaks (``text`` itself if
    None)."""
    n = len(text)
    if n < rule.probe:
        return None
    probe = text[n - rule.probe :]
    lowest = max(0, n - rule.probe - rule.max_period)
    end = n - 1  # excludes the probe itself
    while (start := text.rfind(probe, lowest, end)) >= 0:
        end = start + rule.probe - 1
        period = n - rule.probe - start
        if rule.min_repeats * period > n:
            continue
        copies, rows = _copies_past_a_page(text[n - 3 * period :], period, rule)
        copies = max(copies, rule.min_repeats)
        span = copies * period
        if span > min(n, rule.keep) or not _periodic(text, period, span):
            continue
        if rows or raw is None or _periodic(raw, period, span):
            return Loop(period, text[n - period :], span, copies, rows)
    return None


def find_loop(text: str, rule: RepetitionRule = DEFAULT_RULE) -> Loop | None:
    """The loop at the end of ``text``, if it runs past a page by ``rule``; smallest
    period first."""
    return find_masked_loop(mask_digits(text), rule, raw=text)


def repeats_at_end(
    text: str, *, min_chars: int = 1500, max_period: int = 500, min_repeats: int = 3
) -> bool:
    """Whether ``text`` ends in one block (at most ``max_period`` characters, digits equal
    between rows) repeated over its last ``min_chars`` characters, at least ``min_repeats``
    times: what a reply cut at ``max_tokens`` shows when the model looped there, or when
    the page itself repeats on past ``max_tokens``; the caller cannot tell which. (The rule
    the detector used before it knew how much a page holds.)"""
    probe = 32
    keep = max(min_chars, min_repeats * max_period) + probe
    raw = text[-keep:]
    masked = mask_digits(raw)
    n = len(masked)
    if n < max(min_chars, probe):
        return False
    tail = masked[n - probe :]
    lowest, end = max(0, n - probe - max_period), n - 1
    while (start := masked.rfind(tail, lowest, end)) >= 0:
        end = start + probe - 1
        period = n - probe - start
        span = max(min_chars, min_repeats * period)
        rows = "\n" in masked[n - period :] or bool(_ROW_TAG.search(masked[n - 2 * period :]))
        if _periodic(masked, period, span) and (rows or _periodic(raw, period, span)):
            return True
    return False


class RepetitionDetector:
    """Fed a reply piece by piece; says when the text so far ends in a loop."""

    STEP = 32  # characters per piece when a whole text is fed as if it were streamed

    def __init__(self, rule: RepetitionRule = DEFAULT_RULE) -> None:
        self._rule = rule
        self._tail = ""
        self._masked = ""  # the tail, digits masked
        self._pending: list[str] = []  # pieces since the last check
        self._since_check = 0
        self.checks = 0  # how many times the tail was searched for a loop
        self.loop: Loop | None = None

    def feed(self, piece: str) -> Loop | None:
        """Add ``piece``; the loop found, if this piece completes one (checked every
        ``check_every`` characters, and never again once a loop is found)."""
        if self.loop is not None or not piece:
            return self.loop
        self._pending.append(piece)
        self._since_check += len(piece)
        if self._since_check >= self._rule.check_every:
            fresh = "".join(self._pending)
            self._tail = (self._tail + fresh)[-self._rule.keep :]
            self._masked = (self._masked + mask_digits(fresh))[-self._rule.keep :]
            self._pending.clear()
            self._since_check = 0
            self.checks += 1
            self.loop = find_masked_loop(self._masked, self._rule, raw=self._tail)
        return self.loop
