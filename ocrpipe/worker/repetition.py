"""Spot a repetition loop in a reply while it is being generated, so it can be cut early.

A looping model (LightOnOCR, like most OCR VLMs, now and then) repeats one chunk of text
verbatim until ``max_tokens``: 4096 tokens of GPU time for a reply that is thrown away and
asked again at a higher temperature. Reading the reply as a stream and stopping it as soon
as it is *clearly* looping saves most of that time.

What is cut, exactly: the reply's last ``min_chars`` characters (1500) are one block of at
most ``max_period`` characters (500) repeated verbatim, at least ``min_repeats`` (3) times,
ending at the end of the text (the last copy may be partial). If the block holds no letter or
digit outside HTML tags and entities (a row of dots, dashes, underscores, spaces or newlines,
an empty table row), the repeats must cover ``min_chars_blank`` characters (8000) instead.

Why that is safe for real pages:

- Real documents repeat *structure*, not text. Rows of a table, items of a numbered list,
  entries of an index or a table of contents, and dot leaders all differ from one row to the
  next in a number, a label or a page number, and a single differing character breaks the
  period: :func:`find_loop` compares every character of the span with the one a period
  earlier.
- Verbatim repeats do occur on real pages, but not for long: a form that asks for the same
  "Name: ____ Date: ____" a few times, a page of ruled blank lines, an empty table to fill
  in. With text, 1500 characters of identical rows is about 20 identical 70-character lines
  in a row; without text, 8000 characters is more blank rules or empty cells than a page
  rendered at 1540 px holds (about 60 lines of 120 characters).
- A loop goes on to ``max_tokens``, about 12-16 thousand characters of Markdown: cutting
  after 1500 (about 400 tokens, or 300 tokens of the fault server's loop) keeps about 90% of
  the saving. Blank loops are cut later, but still long before 4096 tokens.

What is not cut: loops that change as they go (a counter that goes up, "1. foo 2. foo"),
blocks longer than ``max_period``, fewer than ``min_repeats`` copies. Those still end with
``finish_reason == "length"``, as before.

Cost: :class:`RepetitionDetector` keeps only the tail it needs and checks every
``check_every`` (128) new characters. A check looks for the tail's last 32 characters within
the previous ``max_period`` characters (one ``str.rfind`` per candidate, usually none in
ordinary text) and compares two slices for each candidate: microseconds per check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MARKUP = re.compile(r"<[^<>]*>|&(?:[A-Za-z]+|#[0-9]+|#[xX][0-9A-Fa-f]+);")


@dataclass(frozen=True)
class RepetitionRule:
    """When a tail counts as a loop; see the module docstring for why these numbers."""

    max_period: int = 500
    min_repeats: int = 3
    min_chars: int = 1500
    min_chars_blank: int = 8000
    check_every: int = 128
    probe: int = 32

    def __post_init__(self) -> None:
        if min(self.max_period, self.check_every, self.probe) < 1 or self.min_repeats < 2:
            raise ValueError(f"impossible repetition rule: {self}")
        if not self.probe <= self.min_chars <= self.min_chars_blank:
            raise ValueError("need probe <= min_chars <= min_chars_blank")

    @property
    def keep(self) -> int:
        """Characters of tail a check needs."""
        return max(self.min_chars_blank, self.min_repeats * self.max_period)


DEFAULT_RULE = RepetitionRule()


@dataclass(frozen=True)
class Loop:
    """A verbatim repetition at the end of a text."""

    period: int  # characters per copy
    block: str  # the last copy
    covered: int  # characters at the end of the text known to repeat
    blank: bool  # the block has no letter or digit outside markup


def _has_content(window: str, period: int) -> bool:
    """Whether the middle copy of three copies of a block has a letter or digit outside
    tags and entities (three copies so that tags cut by the block's edges are whole)."""
    masked = _MARKUP.sub(lambda m: "\0" * len(m.group()), window)
    return any(c.isalnum() for c in masked[period : 2 * period])


def _periodic(text: str, period: int, span: int) -> bool:
    """The last ``span`` characters equal themselves shifted by ``period``."""
    n = len(text)
    return span <= n and text[n - span + period :] == text[n - span : n - period]


def find_loop(text: str, rule: RepetitionRule = DEFAULT_RULE) -> Loop | None:
    """The loop at the end of ``text``, if there is one by ``rule``; smallest period first."""
    n = len(text)
    if n < rule.min_chars:
        return None
    probe = text[n - rule.probe :]
    lowest = max(0, n - rule.probe - rule.max_period)
    end = n - 1  # excludes the probe itself
    while (start := text.rfind(probe, lowest, end)) >= 0:
        end = start + rule.probe - 1
        period = n - rule.probe - start
        span = max(rule.min_chars, rule.min_repeats * period)
        if not _periodic(text, period, span):
            continue
        block = text[n - period :]
        if _has_content(text[n - 3 * period :], period):
            return Loop(period, block, span, blank=False)
        blank_span = max(rule.min_chars_blank, rule.min_repeats * period)
        if _periodic(text, period, blank_span):
            return Loop(period, block, blank_span, blank=True)
    return None


class RepetitionDetector:
    """Fed a reply piece by piece; says when the text so far ends in a loop."""

    def __init__(self, rule: RepetitionRule = DEFAULT_RULE) -> None:
        self._rule = rule
        self._tail = ""
        self._pending: list[str] = []  # pieces since the last check
        self._since_check = 0
        self.loop: Loop | None = None

    def feed(self, piece: str) -> Loop | None:
        """Add ``piece``; the loop found, if this piece completes one (checked every
        ``check_every`` characters, and never again once a loop is found)."""
        if self.loop is not None or not piece:
            return self.loop
        self._pending.append(piece)
        self._since_check += len(piece)
        if self._since_check >= self._rule.check_every:
            self._tail = (self._tail + "".join(self._pending))[-self._rule.keep :]
            self._pending.clear()
            self._since_check = 0
            self.loop = find_loop(self._tail, self._rule)
        return self.loop
