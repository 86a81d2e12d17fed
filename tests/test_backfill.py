"""``ocrpipe submit gs://BUCKET/PREFIX``: objects already in a bucket enter the input bucket
by a server-side copy, named as a folder would be, skipped when unchanged; on the in-memory
store and through typer's runner. (On fake-gcs-server through the whole pipeline:
tests/test_backfill_e2e.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from ocrpipe import cli
from ocrpipe.operations import backfill
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryStore

ENV = {"OCRPIPE_INPUT_BUCKET": "in", "OCRPIPE_WORK_BUCKET": "work",
       "OCRPIPE_OUTPUT_BUCKET": "out"}  # fmt: skip


def corpus() -> MemoryStore:
    store = MemoryStore()
    for name, data in {
        "scans/2024/a.pdf": b"%PDF-a",
        "scans/2024/b.pdf": b"%PDF-b",
        "scans/c.png": b"\x89PNG-c",
        "scans/.cache/x.pdf": b"hidden",
        "scans/2024/": b"",  # a folder placeholder, as the console makes
        "scansX/d.pdf": b"%PDF-d",
    }.items():
        store.put("corpus", name, data)
    return store


def test_objects_are_named_as_a_folder_would_be() -> None:
    store = corpus()
    found = backfill.find(store, ["gs://corpus/scans/"], "batch1/")
    assert [(f.name, f.uri) for f in found] == [
        ("batch1/2024/a.pdf", "gs://corpus/scans/2024/a.pdf"),
        ("batch1/2024/b.pdf", "gs://corpus/scans/2024/b.pdf"),
        ("batch1/c.png", "gs://corpus/scans/c.png"),
    ]
    # Without the trailing slash the prefix matches names, as a GCS listing does.
    loose = backfill.find(store, ["gs://corpus/scans"])
    assert "scansX/d.pdf" in [f.name for f in loose]
    single = backfill.find(store, ["gs://corpus/scans/c.png"])
    assert [f.name for f in single] == ["c.png"]


def test_copies_are_made_by_the_store_and_unchanged_objects_skipped() -> None:
    store = corpus()
    files = backfill.find(store, ["gs://corpus/scans/"], "batch1/")
    first = backfill.copy(store, "in", files)
    assert len(first.copied) == 3 and store.read("in", "batch1/2024/a.pdf") == b"%PDF-a"
    assert store.reads_opened == []  # nothing went through this machine
    again = backfill.copy(store, "in", backfill.find(store, ["gs://corpus/scans/"], "batch1/"))
    assert (len(again.copied), len(again.unchanged)) == (0, 3)
    store.put("corpus", "scans/c.png", b"\x89PNG-changed")
    changed = backfill.copy(store, "in", backfill.find(store, ["gs://corpus/scans/"], "batch1/"))
    assert [c.file.name for c in changed.copied] == ["batch1/c.png"]
    forced = backfill.copy(store, "in", files, force=True)
    assert len(forced.copied) == 2  # c.png changed since this listing: reported, not copied
    assert [c.file.name for c in forced.failed] == ["batch1/c.png"]
    assert "changed or was deleted" in forced.failed[0].failed


def test_a_dry_run_copies_nothing() -> None:
    store = corpus()
    report = backfill.copy(store, "in", backfill.find(store, ["gs://corpus/scans/"]), dry_run=True)
    assert len(report.copied) == 3 and list(store.names("in")) == []


@pytest.mark.parametrize("uri", ["gs://", "gs:///x", "s3://bucket/x"])
def test_a_source_that_is_not_a_bucket_path_is_refused(uri: str) -> None:
    with pytest.raises(backfill.NotABucketPath):
        backfill.find(MemoryStore(), [uri])


def test_two_sources_that_would_share_a_name_are_refused() -> None:
    store = corpus()
    store.put("other", "c.png", b"another c")
    with pytest.raises(ValueError, match="would both be 'c.png'"):
        backfill.find(store, ["gs://corpus/scans/c.png", "gs://other/c.png"])


def _no_client(settings: Settings) -> Any:
    raise AssertionError("submit needs no Pub/Sub client")


def invoke(store: MemoryStore, *args: str) -> Any:
    clients = cli.Clients(store=lambda _: store, publisher=_no_client, dead_letters=_no_client)
    return CliRunner().invoke(cli.app, ["submit", *args], obj=clients, env=ENV)


def test_the_command_copies_says_so_and_skips_on_the_second_run() -> None:
    store = corpus()
    result = invoke(store, "gs://corpus/scans/", "--prefix", "batch1/")
    assert result.exit_code == 0, result.output
    assert "submitted gs://in/batch1/2024/a.pdf from gs://corpus/scans/2024/a.pdf" in result.output
    assert "copied 3 object(s) by GCS, none downloaded; 0 unchanged" in result.output
    again = invoke(store, "gs://corpus/scans/", "--prefix", "batch1/")
    assert "copied 0 object(s) by GCS, none downloaded; 3 unchanged" in again.output
    dry = invoke(store, "gs://corpus/scans/", "--prefix", "batch2/", "--dry-run")
    assert "would copy 3 object(s)" in dry.output
    assert not [n for n in store.names("in") if n.startswith("batch2/")]


def test_the_command_refuses_an_empty_source_and_a_missing_path() -> None:
    store = corpus()
    empty = invoke(store, "gs://corpus/nothing-here/")
    assert empty.exit_code == 2 and "Nothing to submit under gs://corpus/nothing-here/" in (
        empty.output
    )
    missing = invoke(store, "/no/such/folder")
    assert missing.exit_code == 2 and "No such file or folder" in missing.output
