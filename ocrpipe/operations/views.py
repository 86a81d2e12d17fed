"""How the CLI shows things: rich tables and panels for people, plain JSON for scripts.
No I/O beyond the console it is given.

Names and ``gs://`` URIs are never cut at the end, where their extension is: table cells
fold them onto more lines, and a label that must fit one line (a progress bar's) loses its
middle instead (:func:`elide`). So everything reads at 80 columns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.highlighter import JSONHighlighter
from rich.table import Table
from rich.text import Text

from ocrpipe import naming
from ocrpipe.operations.dead_letters import DeadLetter, ReplayReport
from ocrpipe.operations.status import (
    STALL_AFTER_S,
    DocumentStatus,
    InvalidMessages,
    PageTrouble,
)

ELLIPSIS = "…"

STATE_STYLE = {
    "done": "green",
    "partial": "yellow",
    "failed": "red",
    "rejected": "red",
    "running": "cyan",
    "splitting": "cyan",
    "stale_assembly": "yellow",
    "unknown": "dim",
}


# What a terminal could take as a command, or that hides or reorders the text around it:
# C0 and C1 controls and DEL (ESC, the 8-bit CSI), the Unicode line and paragraph
# separators, the bidirectional overrides and isolates, and lone surrogates (a file name
# that is not UTF-8). Each is shown as a Python-style escape.
_CONTROLS = (
    *range(0x20),
    *range(0x7F, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    *range(0xD800, 0xE000),
)
_SHOWN = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _CONTROLS}
# In JSON only inside strings, and json.dumps already escapes C0: \uXXXX keeps it exact.
_IN_JSON = {c: f"\\u{c:04x}" for c in _CONTROLS if c >= 0x20}


def printable(text: object) -> str:
    """``text`` for a person's terminal: every control character (see ``_CONTROLS``)
    written as an escape (``\\x1b``, ``\\u202e``), so a name shows what it holds and
    never acts on the terminal. The one helper for every name, message and path shown."""
    return str(text).translate(_SHOWN)


def print_json(console: Console, value: Any) -> None:
    """One JSON document on stdout; no markup, no wrapping. Exact: parsing it gives every
    name as stored, but no character that acts on a terminal is written raw."""
    text = json.dumps(value, ensure_ascii=False, default=str, indent=2)
    console.print(json_text(text), soft_wrap=True)


def json_text(text: str) -> Text:
    """JSON text (from ``json.dumps``) to print: what would act on a terminal becomes a
    ``\\u`` escape, which parses back to the same string."""
    return JSONHighlighter()(text.translate(_IN_JSON))


def duration(seconds: float | None) -> str:
    """62.4 -> '1m 02s'."""
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def timestamp(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def elide(text: str, width: int) -> str:
    """``text`` in at most ``width`` terminal cells: its middle replaced by an ellipsis, so
    both the folder it starts with and the file name's end (its extension) stay."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    keep = width - 1
    extension = text[text.rfind(".") :] if "." in text.rsplit("/", 1)[-1] else ""
    tail_cells = min(keep, max(keep // 2, cell_len(extension) + 4))
    tail = _cells_from_end(text, tail_cells)
    head = _cells_from_start(text, keep - cell_len(tail))
    return f"{head}{ELLIPSIS}{tail}"


def _cells_from_start(text: str, cells: int) -> str:
    used = 0
    for index, char in enumerate(text):
        used += cell_len(char)
        if used > cells:
            return text[:index]
    return text


def _cells_from_end(text: str, cells: int) -> str:
    return _cells_from_start(text[::-1], cells)[::-1]


def wrapped(text: str, style: str = "") -> Text:
    """A table cell that folds onto more lines instead of being cut (names, URIs), shown
    through :func:`printable`."""
    return Text(printable(text), style=style, overflow="fold")


def troubles_note(retrying: int, dead_lettered: int) -> str:
    """'2 retrying, 7 dead-lettered', or '' when no page is in trouble."""
    parts = [f"{retrying} retrying"] if retrying else []
    return ", ".join(parts + ([f"{dead_lettered} dead-lettered"] if dead_lettered else []))


def stall_note(quiet_s: float | None) -> Text | None:
    """A warning when nothing was written for longer than a page can take, else None."""
    if quiet_s is None or quiet_s < STALL_AFTER_S:
        return None
    return Text(
        f"nothing has moved for {duration(quiet_s)}: no page finished, failed or was retried."
        " Is the pipeline running (the worker, the OCR server; for the local stack"
        " `ocrpipe up`)? See the worker's log.",
        style="yellow",
    )


def status_table(statuses: Sequence[DocumentStatus], now: float | None = None) -> Table:
    table = Table("name", "state", "pages", "done", "failed", "pending", "elapsed", "result")
    for s in statuses:
        detail = s.markdown_uri or (f"{s.error.reason}: {s.error.message}" if s.error else "")
        state = state_text(s.state)
        if note := troubles_note(s.retrying, s.dead_lettered):
            state.append(f" ({note})", style="yellow")
        table.add_row(
            wrapped(s.name),
            state,
            str(s.page_count or "-"),
            str(s.done),
            str(s.failed),
            str(s.pending),
            duration(s.elapsed(now)),
            wrapped(detail),
        )
    return table


def pages_summary(s: DocumentStatus) -> str:
    if s.error is not None:
        return "none: the input was rejected as a whole"
    if s.page_count is None:
        return "not split yet"
    pending = f"{s.pending} pending"
    if note := troubles_note(s.retrying, s.dead_lettered):
        pending += f" ({note})"
    return f"{s.done} done, {s.failed} failed, {pending}, of {s.page_count}"


def print_status_detail(console: Console, s: DocumentStatus, now: float | None = None) -> None:
    now = time.time() if now is None else now
    console.print(Text.assemble((printable(s.name), "bold"), "  ", state_text(s.state)))
    if s.state == "unknown":
        console.print("  no such document in the input bucket, and no output for it")
        return
    rows = [
        ("generation", str(s.generation)),
        ("doc_id", s.doc_id),
        ("pages", pages_summary(s)),
        ("started", timestamp(s.started)),
        ("finished", timestamp(s.finished) if s.finished_state else "-"),
        ("elapsed", duration(s.elapsed(now)) + ("" if s.finished_state else " so far")),
        ("markdown", s.markdown_uri or "-"),
    ]
    if s.assembly_stale:
        rows.append(
            (
                "assembly",
                "out of date: document.md was built from other page results"
                + (" (`ocrpipe retry --failed-only` rebuilds it)" if s.pending == 0 else ""),
            )
        )
    if s.error:
        rows.append(("rejected", f"{s.error.reason}: {s.error.message}"))
    grid = Table.grid(padding=(0, 2))
    for label, value in rows:
        grid.add_row(Text(f"  {label}", style="dim", no_wrap=True), wrapped(value))
    console.print(grid)
    if s.page_errors:
        table = Table("page", "reason", "message", title="failed pages", title_justify="left")
        for number, error in sorted(s.page_errors.items()):
            table.add_row(str(number), wrapped(error.reason), wrapped(error.message))
        console.print(table)
    if s.troubles:
        console.print(troubles_table([(None, t) for t in s.troubles.values()], now))
    if note := stall_note(s.quiet_for(now)):
        console.print(note)


def troubles_table(
    troubles: Sequence[tuple[str | None, PageTrouble]], now: float, title: str = ""
) -> Table:
    """Pages whose last delivery failed: retrying, or in the dead-letter topic."""
    named = any(name is not None for name, _ in troubles)
    table = Table(
        *(["name"] if named else []),
        "page",
        "state",
        "delivery",
        "last failure",
        title=title or "pages whose last delivery failed",
        title_justify="left",
    )
    for name, t in troubles:
        of = f" of {t.max_deliveries}" if t.max_deliveries else ""
        state = Text("dead-lettered" if t.state == "dead_lettered" else "retrying")
        state.stylize("red" if t.state == "dead_lettered" else "yellow")
        table.add_row(
            *([wrapped(name or "")] if named else []),
            str(t.page),
            state,
            f"{t.delivery or '?'}{of}",
            wrapped(f"{duration(now - t.since)} ago: {t.reason}: {t.message}"),
        )
    return table


def invalid_message_note(count: int, bucket: str) -> Text:
    return Text(
        f"{count} deliveries refused or unreadable, kept under"
        f" {naming.object_uri(bucket, naming.INVALID_MESSAGES_PREFIX)}:"
        " see `ocrpipe status --invalid` and docs/OPERATIONS.md",
        style="yellow",
    )


def invalid_message_table(found: InvalidMessages) -> Table:
    table = Table(
        "time (UTC)",
        "reason",
        "doc_id",
        "page",
        "message",
        "record",
        title=f"{found.count} refused or unreadable deliveries",
        title_justify="left",
    )
    for m in found.newest:
        table.add_row(
            timestamp(m.created),
            wrapped(m.reason),
            wrapped(m.doc_id or "-"),
            str(m.page or "-"),
            wrapped(m.message),
            wrapped(m.uri),
        )
    return table


def dead_letter_table(letters: Sequence[DeadLetter]) -> Table:
    """Name, page, doc_id and times; ``--json`` has every attribute."""
    table = Table(
        "name", "page", "doc_id", "deliveries", "published (UTC)", "dead-lettered", "replays"
    )
    for letter in letters:
        table.add_row(
            wrapped(letter.name or "(not a page message)"),
            str(letter.page or "-"),
            wrapped(letter.doc_id or "-"),
            str(letter.delivery_count or "-"),
            _short_time(_parse_time(letter.first_published)),
            _short_time(letter.dead_lettered),
            str(letter.replay_count),
        )
    return table


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _short_time(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%m-%d %H:%M:%S") if when else "-"


def sort_letters(letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    return sorted(letters, key=lambda d: (d.name, d.doc_id, d.page or 0, d.message_id))


def replay_summary(report: ReplayReport) -> str:
    verb = "would replay" if report.dry_run else "replayed"
    return (
        f"{verb} {len(report.replayed)}, skipped {report.skipped} (not matching --doc),"
        f" failed {len(report.failed)}"
    )
