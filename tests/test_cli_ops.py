"""The CLI's exit codes and JSON, without servers: ``wait``'s verdicts on the in-memory
store, and usage errors through typer's runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ocrpipe import cli, naming, records
from ocrpipe.operations import views
from ocrpipe.operations.status import (
    DocumentStatus,
    PageError,
    document_status,
    documents_verdict,
    wait_for_documents,
)
from ocrpipe.settings import Settings
from ocrpipe.testing.clock import FakeClock
from ocrpipe.testing.memory import MemoryStore

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out")
# Emulator hosts nobody listens on: commands that fail before any call never notice.
OFFLINE_ENV = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9"}


def document(store: MemoryStore, name: str, state: str) -> None:
    generation = store.put("in", name, b"%PDF-")
    doc = naming.DocumentRef("in", name, generation)
    if state == "rejected":
        store.put("out", naming.document_error_name(doc), records.error_record(doc, "bad", "no"))
        return
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, 2))
    if state == "running":
        return
    store.put("out", naming.page_markdown_name(doc, 1), b"one")
    if state == "partial":
        record = records.error_record(doc, "ocr_repetition_loop", "looped", page=2)
        store.put("out", naming.page_error_name(doc, 2), record)
    else:
        store.put("out", naming.page_markdown_name(doc, 2), b"two")
    store.put("out", naming.document_markdown_name(doc), b"one two")


@pytest.mark.parametrize(
    ("states", "allow_partial", "timeout", "code"),
    [
        (["done"], False, 5, cli.Exit.OK),
        (["done", "done"], False, 5, cli.Exit.OK),
        (["partial"], False, 5, cli.Exit.FAILED),
        (["partial"], True, 5, cli.Exit.OK),
        (["rejected"], True, 5, cli.Exit.FAILED),
        (["running"], False, 0.6, cli.Exit.TIMEOUT),
        (["running", "partial"], False, 0.6, cli.Exit.TIMEOUT),  # a cut-short wait says so
        (["running", "rejected"], False, 0.6, cli.Exit.TIMEOUT),
    ],
)
def test_wait_exit_codes(
    states: list[str], allow_partial: bool, timeout: float, code: cli.Exit
) -> None:
    store = MemoryStore()
    names = [f"doc-{i}.pdf" for i in range(len(states))]
    for name, state in zip(names, states, strict=True):
        document(store, name, state)
    memory = cli.Clients(store=lambda _: store, publisher=_no_client, dead_letters=_no_client)
    args = ["wait", *names, "--timeout", str(timeout)] + (
        ["--allow-partial"] if allow_partial else []
    )
    result = CliRunner().invoke(cli.app, args, obj=memory, env=SETTINGS_ENV)
    assert result.exit_code == code, result.output
    assert ("timed out" in result.output) == (code == cli.Exit.TIMEOUT), result.output


def rejected_empty_file(store: MemoryStore) -> int:
    """``empty.pdf`` (0 bytes) and the splitter's error record for it; its generation."""
    generation = store.put("in", "empty.pdf", b"")
    doc = naming.DocumentRef("in", "empty.pdf", generation)
    error = records.error_record(doc, "empty_file", "the file has 0 bytes")
    store.put("out", naming.document_error_name(doc), error)
    return generation


def test_a_rejected_file_says_so_in_status_and_get_gives_its_reason(tmp_path: Path) -> None:
    store = MemoryStore()
    rejected_empty_file(store)
    memory = cli.Clients(store=lambda _: store, publisher=_no_client, dead_letters=_no_client)
    status = CliRunner().invoke(cli.app, ["status", "empty.pdf"], obj=memory, env=SETTINGS_ENV)
    assert "rejected" in status.output and "not split yet" not in status.output, status.output
    assert "empty_file: the file has 0 bytes" in status.output
    got = CliRunner().invoke(
        cli.app, ["get", "empty.pdf", "-o", str(tmp_path)], obj=memory, env=SETTINGS_ENV
    )
    assert got.exit_code == 1
    assert "empty.pdf: no Markdown: rejected: empty_file: the file has 0 bytes" in got.output


def test_retrying_a_rejected_input_is_refused_unless_forced() -> None:
    store = MemoryStore()
    generation = rejected_empty_file(store)
    memory = cli.Clients(store=lambda _: store, publisher=_no_client, dead_letters=_no_client)
    refused = CliRunner().invoke(cli.app, ["retry", "empty.pdf"], obj=memory, env=SETTINGS_ENV)
    assert refused.exit_code == 1, refused.output
    assert "rejected as a whole (empty_file" in refused.output
    assert store.stat("in", "empty.pdf").generation == generation  # type: ignore[union-attr]
    forced = CliRunner().invoke(
        cli.app, ["retry", "empty.pdf", "--force"], obj=memory, env=SETTINGS_ENV
    )
    assert forced.exit_code == 0, forced.output
    assert store.stat("in", "empty.pdf").generation > generation  # type: ignore[union-attr]


def _no_client(settings: Settings) -> Any:
    raise AssertionError("this command needs no Pub/Sub client")


SETTINGS_ENV = {"OCRPIPE_INPUT_BUCKET": "in", "OCRPIPE_WORK_BUCKET": "work",
                "OCRPIPE_OUTPUT_BUCKET": "out"}  # fmt: skip


def test_waiting_polls_until_finished_or_the_timeout_on_its_own_clock() -> None:
    store = MemoryStore()
    document(store, "slow.pdf", "running")
    clock = FakeClock(0.0)
    polls: list[float] = []

    def poll(name: str) -> DocumentStatus:
        polls.append(clock.now)
        if clock.now >= 3:  # the last page lands after 3 s
            store.put("out", naming.page_markdown_name(doc, 1), b"one")
            store.put("out", naming.page_markdown_name(doc, 2), b"two")
            store.put("out", naming.document_markdown_name(doc), b"one two")
        return document_status(store, SETTINGS, name)

    doc = naming.DocumentRef("in", "slow.pdf", store.stat("in", "slow.pdf").generation)  # type: ignore[union-attr]
    finals = wait_for_documents(
        poll, ["slow.pdf"], timeout=10, interval=1, clock=clock, sleep=clock.sleep_sync
    )
    assert polls == [0, 1, 2, 3] and finals["slow.pdf"].state == "done"
    assert documents_verdict(["slow.pdf"], finals) == "ok"
    document(store, "stuck.pdf", "running")
    clock = FakeClock(0.0)
    assert wait_for_documents(
        lambda n: document_status(store, SETTINGS, n), ["stuck.pdf"], timeout=2.5, interval=1,
        clock=clock, sleep=clock.sleep_sync,
    ) == {}  # fmt: skip
    assert clock.now == 2.5
    assert documents_verdict(["stuck.pdf"], {}) == "timeout"


def test_status_json_has_page_errors_with_reasons_and_elapsed_time() -> None:
    store = MemoryStore()
    document(store, "p.pdf", "partial")
    status = document_status(store, SETTINGS, "p.pdf")
    data = json.loads(json.dumps(status.as_dict(now=100.0)))
    assert data["state"] == "partial"
    assert (data["page_count"], data["done"], data["failed"], data["pending"]) == (2, 1, 1, 0)
    assert data["page_errors"] == {"2": {"reason": "ocr_repetition_loop", "message": "looped"}}
    assert data["markdown"].endswith("/document.md")
    assert isinstance(data["elapsed_s"], float)


def test_elapsed_runs_until_now_while_unfinished_and_stops_when_finished() -> None:
    running = DocumentStatus("a", 1, "running", started=100.0)
    finished = DocumentStatus("a", 1, "done", started=100.0, finished=160.5)
    assert running.elapsed(now=130.0) == 30.0
    assert finished.elapsed(now=999.0) == 60.5
    assert DocumentStatus("a", None, "unknown").elapsed() is None


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (4.4, "4s"), (62.4, "1m 02s"), (3725, "1h 02m")]
)
def test_durations_read_like_a_person_would_write_them(seconds: float | None, text: str) -> None:
    assert views.duration(seconds) == text


def test_the_status_detail_shows_page_error_reasons() -> None:
    from rich.console import Console

    console = Console(record=True, width=120)
    status = DocumentStatus(
        "scan[1].pdf",
        7,
        "partial",
        page_count=3,
        done=2,
        failed=1,
        page_errors={3: PageError("ocr_repetition_loop", "the model looped")},
        started=0.0,
        finished=75.0,
    )
    views.print_status_detail(console, status)
    text = console.export_text()
    assert "scan[1].pdf" in text  # names are not read as rich markup
    assert "2 done, 1 failed, 0 pending, of 3" in text
    assert "1m 15s" in text
    assert "ocr_repetition_loop" in text and "the model looped" in text


def fail_delivery(store: MemoryStore, name: str, page: int, delivery: int, at: int) -> None:
    """The worker's record of a nacked delivery of ``page`` of ``name``."""
    info = store.stat("in", name)
    assert info is not None
    doc = naming.DocumentRef("in", name, info.generation)
    attempt = records.Attempt(
        page, records.FAILED_DELIVERY, "ocr_unavailable:timeout", "no answer", delivery, 10,
        created=at,
    )  # fmt: skip
    store.write("out", naming.attempt_record_name(doc, page, at, records.FAILED_DELIVERY), b"{}",
                "application/json", if_generation_match=0,
                metadata=records.attempt_metadata(attempt))  # fmt: skip


def test_a_document_whose_pages_are_all_dead_lettered_ends_the_wait_with_the_replay() -> None:
    store = MemoryStore()
    document(store, "night.pdf", "running")  # 2 pages, none done
    for page in (1, 2):
        fail_delivery(store, "night.pdf", page, 10, at=100)
    memory = cli.Clients(store=lambda _: store, publisher=_no_client, dead_letters=_no_client)
    result = CliRunner().invoke(
        cli.app, ["wait", "night.pdf", "--timeout", "3600"], obj=memory, env=SETTINGS_ENV
    )
    assert result.exit_code == cli.Exit.FAILED, result.output
    assert "2 page(s) in the dead-letter topic" in result.output
    assert "ocrpipe dlq replay --doc night.pdf" in result.output
    status = CliRunner().invoke(cli.app, ["status", "night.pdf"], obj=memory, env=SETTINGS_ENV)
    assert "2 pending (2 dead-lettered)" in status.output
    assert "dead-lettered" in status.output and "10 of 10" in status.output


def test_retrying_pages_show_their_last_failure_and_a_quiet_document_is_flagged() -> None:
    from rich.console import Console

    store = MemoryStore(clock=lambda: 1000.0)
    document(store, "slow.pdf", "running")
    fail_delivery(store, "slow.pdf", 2, 3, at=1000)
    status = document_status(store, SETTINGS, "slow.pdf")
    assert (status.retrying, status.dead_lettered, status.stuck) == (1, 0, False)
    console = Console(record=True, width=80)
    views.print_status_detail(console, status, now=1000.0 + 30)
    text = console.export_text()
    assert "2 pending (1 retrying), of 2" in text
    assert "3 of 10" in text and "30s ago: ocr_unavailable:timeout: no answer" in text
    assert "nothing has moved" not in text
    console = Console(record=True, width=80)
    views.print_status_detail(console, status, now=1000.0 + 700)
    assert "nothing has moved for 11m 40s" in console.export_text()


def test_a_local_stack_that_went_away_gets_one_line_at_once_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9"}
    (tmp_path / ".ocrpipe").mkdir()
    (tmp_path / ".ocrpipe" / "local.env").write_text("".join(f"{k}={v}\n" for k, v in dead.items()))
    monkeypatch.chdir(tmp_path)
    for args in (["status"], ["status", "a.pdf"], ["dlq", "list"], ["report", "a.pdf"]):
        result = CliRunner().invoke(cli.app, [*args, "--local"])
        assert result.exit_code == cli.Exit.FAILED, (args, result.output)
        assert result.output.startswith("The local stack is down: nothing answers at 127.0.0.1:9")
        assert "Traceback" not in result.output and result.output.count("\n") <= 2
    # Mid-wait: the stack stops answering while a document runs.
    store = MemoryStore()
    document(store, "late.pdf", "running")
    memory = cli.Clients(store=lambda _: store, publisher=_no_client, dead_letters=_no_client)
    result = CliRunner().invoke(
        cli.app, ["wait", "late.pdf", "--timeout", "600"], obj=memory, env=SETTINGS_ENV | dead
    )
    assert result.exit_code == cli.Exit.FAILED
    assert "The local stack is down" in result.output and "Traceback" not in result.output


runner = CliRunner()


def test_retry_without_a_name_is_a_usage_error() -> None:
    result = runner.invoke(cli.app, ["retry"], env=OFFLINE_ENV)
    assert result.exit_code == cli.Exit.USAGE, result.output


def test_invalid_settings_are_a_usage_error() -> None:
    result = runner.invoke(
        cli.app, ["status", "x.pdf"], env={**OFFLINE_ENV, "OCRPIPE_OCR_BUDGET_S": "9999"}
    )
    assert result.exit_code == cli.Exit.USAGE
    assert "ocr_budget_s" in result.output


def test_local_without_a_running_stack_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, ["wait", "--local", "x.pdf"])
    assert result.exit_code == cli.Exit.USAGE
    assert "No local stack found" in result.output


def test_the_dead_letter_table_shows_name_page_deliveries_and_times() -> None:
    from datetime import UTC, datetime

    from rich.console import Console

    from ocrpipe.operations.dead_letters import DELIVERY_COUNT, SOURCE_PUBLISH_TIME, DeadLetter

    letter = DeadLetter(
        "m1",
        b"not a page message",
        {
            "doc_id": "d0123",
            "page": "7",
            DELIVERY_COUNT: "10",
            SOURCE_PUBLISH_TIME: "2026-11-26T23:05:04.598Z",
        },  # fmt: skip
        dead_lettered=datetime(2026, 11, 26, 23, 40, 1, tzinfo=UTC),
    )
    console = Console(record=True, width=160)
    console.print(views.dead_letter_table([letter]))
    text = console.export_text()
    assert "(not a page message)" in text and "d0123" in text
    assert "11-26 23:05:04" in text and "11-26 23:40:01" in text
    assert " 7 " in text and " 10 " in text


def test_refused_deliveries_are_counted_and_listed_with_their_reason() -> None:
    from rich.console import Console

    from ocrpipe.operations.status import invalid_messages

    store = MemoryStore()
    for n, reason in enumerate(["foreign_image", "bad_message"]):
        record = {"reason": reason, "message": f"why {n}", "doc_id": "d42", "page": 3}
        store.put("out", naming.invalid_message_name("20261126", n), json.dumps(record).encode())
    found = invalid_messages(store, SETTINGS, limit=1)
    assert found.count == 2 and [m.reason for m in found.newest] == ["bad_message"]
    console = Console(record=True, width=200)
    console.print(views.invalid_message_table(invalid_messages(store, SETTINGS)))
    text = console.export_text()
    assert "2 refused or unreadable deliveries" in text
    assert "foreign_image" in text and "why 0" in text and "d42" in text
    note = views.invalid_message_note(2, "out").plain
    assert "gs://out/_invalid-messages/" in note and "ocrpipe status --invalid" in note


def test_help_keeps_the_placeholders_it_names() -> None:
    """Help is rendered as Markdown, where a bare <name> is an HTML tag and vanishes."""
    for command in ("get", "submit", "status", "wait", "report", "retry", "up"):
        shown = CliRunner().invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        assert not any(lost in shown.output for lost in ("DIR/.", "DIR//")), shown.output
    shown = CliRunner().invoke(cli.app, ["get", "--help"], env={"COLUMNS": "200"})
    assert "DIR/<name>/pages/00001.md" in shown.output
    assert "DIR/<name>.json" in shown.output


def test_python_dash_m_runs_the_cli() -> None:
    """``python -m ocrpipe.cli`` is how tests and scripts start the CLI in a process of its
    own (when cli.py became a package, the form stopped working and an end-to-end test that
    started replays that way went on killing processes that had already failed)."""
    done = subprocess.run(
        [sys.executable, "-m", "ocrpipe.cli", "dlq", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "replay" in done.stdout
