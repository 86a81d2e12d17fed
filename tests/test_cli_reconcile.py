"""`ocrpipe reconcile` through typer's runner, on the in-memory store and publisher: what
it prints, its JSON and its exit codes. (Against the real pipeline:
tests/test_reconcile_e2e.py.)"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from typer.testing import CliRunner

from ocrpipe import cli, naming, records
from ocrpipe.cli.reconcile import parse_duration
from ocrpipe.messages import PageMessage
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore

ENV = {"OCRPIPE_INPUT_BUCKET": "in", "OCRPIPE_WORK_BUCKET": "work",
       "OCRPIPE_OUTPUT_BUCKET": "out"}  # fmt: skip


def _no_client(settings: Settings) -> Any:
    raise AssertionError("reconcile needs no dead-letter subscription")


def stuck(store: MemoryStore, name: str) -> naming.DocumentRef:
    """A document whose four pages were published and never answered."""
    doc = naming.DocumentRef("in", name, store.put("in", name, b"%PDF-1.7", "application/pdf"))
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, 4))
    for page in range(1, 5):
        store.put("work", naming.page_image_name(doc.doc_id, page, "png"), b"image")
    store.put("work", naming.published_marker_name(doc.doc_id, 1, 4), b"")
    store.put("out", naming.page_markdown_name(doc, 2), b"# two")
    return doc


def invoke(store: MemoryStore, publisher: MemoryPublisher, *args: str) -> Any:
    clients = cli.Clients(store=lambda _: store, publisher=lambda _: publisher,
                          dead_letters=_no_client)  # fmt: skip
    return CliRunner().invoke(cli.app, ["reconcile", *args], obj=clients, env=ENV)


def test_by_default_a_fresh_backlog_is_left_in_pubsub() -> None:
    store, publisher = MemoryStore(clock=time.time), MemoryPublisher()
    stuck(store, "a/one.pdf")  # published just now: the messages may still come
    result = invoke(store, publisher, "--prefix", "a/")
    assert result.exit_code == 0, result.output
    assert "1 document(s) checked, 0 put back" in result.output
    result = invoke(store, publisher, "--prefix", "a/", "--lost-after", "0", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "a/one.pdf: publish again pages 1, 3, 4" in result.output
    assert "dry run: nothing changed" in result.output
    assert publisher.published == []


def test_lost_after_zero_publishes_the_pages_again_and_says_so() -> None:
    store, publisher = MemoryStore(), MemoryPublisher()
    stuck(store, "a/one.pdf")
    result = invoke(store, publisher, "--prefix", "a/", "--lost-after", "0", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["requeued_pages"] == 3 and report["documents"] == 1
    assert report["repairs"][0]["republish"] == [1, 3, 4]
    sent = [PageMessage.decode(m.data).page for _, m in publisher.published]
    assert sent == [1, 3, 4]


def test_nothing_under_the_prefix_exits_1() -> None:
    result = invoke(MemoryStore(), MemoryPublisher(), "--prefix", "nowhere/")
    assert result.exit_code == 1
    assert "No inputs under that prefix" in result.output


def test_a_bad_duration_is_a_usage_error() -> None:
    result = invoke(MemoryStore(), MemoryPublisher(), "--lost-after", "soon")
    assert result.exit_code == 2
    assert "is not a duration" in result.output


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("6h", 21600),
        ("31d", 2678400),
        ("1.5h", 5400),
    ],  # fmt: skip
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
