"""Names and messages reach the operator's terminal escaped, in every command: an object
name is chosen by whoever can upload, and an escape sequence in it (a screen clear, a
colour, a right-to-left override) must show as text, never act. ``--json`` stays exact.

The commands run through typer's runner on the in-memory store; the same commands run
against the local stack in tests/test_hostile_names_e2e.py."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ocrpipe import cli, naming, records
from ocrpipe.messages import PageMessage
from ocrpipe.operations import views
from ocrpipe.operations.dead_letters import DELIVERY_COUNT
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore, MemorySubscription
from tests.test_batch_status import make_document

HOSTILE = "h/\x1b[2J\x1b[31mred\x9b1m [/] [bold]\u202eevil\u2028next\tline.pdf"
REJECTED = "h/\x1b]0;title\x07rejected.pdf"
ENV = {"OCRPIPE_INPUT_BUCKET": "in", "OCRPIPE_WORK_BUCKET": "work",
       "OCRPIPE_OUTPUT_BUCKET": "out", "COLUMNS": "400"}  # fmt: skip


def acts_on_a_terminal(text: str) -> list[str]:
    """The characters of ``text`` that are controls (other than a line feed), separators
    or bidirectional formatting."""
    bidi = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)),
            *map(chr, range(0x2066, 0x206A))}  # fmt: skip
    return [
        c
        for c in text
        if c != "\n" and (unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") or c in bidi)
    ]


@pytest.fixture
def memory() -> tuple[MemoryStore, MemorySubscription, cli.Clients]:
    store = MemoryStore()
    doc = make_document(store, HOSTILE, "partial", pages=2, texts=["one", "two"])
    rejected = make_document(store, REJECTED, "splitting")
    error = records.error_record(rejected, "not_a_pdf", f"{REJECTED} is \x1b[5mnot\x1b[0m a PDF")
    store.put("out", naming.document_error_name(rejected), error)
    letters = MemorySubscription()
    message = PageMessage(
        **doc.source_fields(),
        page=2,
        page_count=2,
        image_uri=naming.object_uri("work", naming.page_image_name(doc.doc_id, 2, "png")),
        image_mime="image/png",
    )
    letters.add(message.encode(), {"doc_id": doc.doc_id, DELIVERY_COUNT: "10"})
    clients = cli.Clients(
        store=lambda _: store,
        publisher=lambda _: MemoryPublisher(),
        dead_letters=lambda _: letters,
    )
    return store, letters, clients


def run(clients: cli.Clients, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, list(args), obj=clients, env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, result.stdout + result.stderr


def commands(tmp: Path) -> list[list[str]]:
    local = tmp / "sub\x1b[2Jmitted.pdf"
    local.write_bytes(b"%PDF-1.4 not really")
    return [
        ["status"],
        ["status", HOSTILE],
        ["status", REJECTED],
        ["status", "--prefix", "h/"],
        ["wait", HOSTILE, REJECTED, "--timeout", "0"],
        ["wait", "--prefix", "h/", "--timeout", "0"],
        ["get", "--prefix", "h/", "-o", str(tmp / "out"), "--pages"],
        ["retry", HOSTILE, REJECTED, "--dry-run"],
        ["retry", HOSTILE, "--failed-only", "--dry-run"],
        ["report", "--prefix", "h/"],
        ["dlq", "list"],
        ["dlq", "replay", "--dry-run"],
        ["submit", str(local), "--prefix", "h/\x1b[1m"],
    ]


def test_every_command_shows_names_escaped(
    memory: tuple[MemoryStore, MemorySubscription, cli.Clients], tmp_path: Path
) -> None:
    _, _, clients = memory
    for args in commands(tmp_path):
        code, output = run(clients, *args)
        assert acts_on_a_terminal(output) == [], (args, code, output)
        assert code in (0, 1), (args, code, output)
    _, shown = run(clients, "status", "--prefix", "h/")
    assert views.printable(HOSTILE) in shown  # the name is shown, as escapes
    assert "\\x1b[2J" in shown and "\\u202e" in shown


def test_json_output_is_exact(memory: tuple[MemoryStore, MemorySubscription, Any]) -> None:
    _, _, clients = memory
    code, output = run(clients, "status", HOSTILE, "--json")
    assert acts_on_a_terminal(output) == []
    assert json.loads(output)["name"] == HOSTILE
    code, output = run(clients, "status", "--prefix", "h/", "--json")
    names = {f["name"] for f in json.loads(output)["failures"]}
    assert names == {HOSTILE, REJECTED}
    code, output = run(clients, "dlq", "list", "--json")
    assert json.loads(output)[0]["name"] == HOSTILE


def test_printable_escapes_controls_and_keeps_the_rest() -> None:
    assert views.printable("Grüße/日本語 📄.pdf") == "Grüße/日本語 📄.pdf"
    assert views.printable("a\x1b[2Jb\x9b\u202e\x00\t") == "a\\x1b[2Jb\\x9b\\u202e\\x00\\x09"
    assert views.printable("not \udce9 UTF-8") == "not \\udce9 UTF-8"
