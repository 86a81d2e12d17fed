"""Submitting folders on the in-memory store: the walk (nested, hidden skipped, names
relative to the folder, prefix), skipping files already uploaded by checksum, --force and
--dry-run."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocrpipe.operations import submit as uploads
from ocrpipe.storage import crc32c_of, md5_of
from ocrpipe.testing.memory import MemoryStore


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


FOLDER = {
    "top.pdf": b"%PDF-top",
    "Grüße/über uns.pdf": b"%PDF-gruesse",
    "日本語/資料 1.pdf": b"%PDF-nihongo",
    "a/b/c/deep.png": b"\x89PNG-deep",
    ".hidden.pdf": b"secret",
    ".git/objects/x.pdf": b"git",
    "a/.cache/y.pdf": b"cache",
}
VISIBLE = ["Grüße/über uns.pdf", "a/b/c/deep.png", "top.pdf", "日本語/資料 1.pdf"]


def test_a_folder_is_walked_with_names_relative_to_it_and_hidden_files_skipped(
    tmp_path: Path,
) -> None:
    root = tree(tmp_path / "scans", FOLDER)
    found = uploads.collect([root], "batch1/")
    assert [f.name for f in found] == sorted(f"batch1/{n}" for n in VISIBLE)
    assert {f.name: f.path for f in found}["batch1/a/b/c/deep.png"] == root / "a/b/c/deep.png"
    assert {f.name: f.size for f in found}["batch1/top.pdf"] == len(b"%PDF-top")


def test_files_keep_their_own_name_beside_folders(tmp_path: Path) -> None:
    root = tree(tmp_path / "scans", {"x/one.pdf": b"1"})
    single = tree(tmp_path / "loose", {"two.pdf": b"2"}) / "two.pdf"
    found = uploads.collect([root, single], "p/")
    assert [f.name for f in found] == ["p/two.pdf", "p/x/one.pdf"]
    assert [f.name for f in uploads.collect([single])] == ["two.pdf"]


def test_two_files_with_one_name_are_refused(tmp_path: Path) -> None:
    first = tree(tmp_path / "a", {"same.pdf": b"1"})
    second = tree(tmp_path / "b", {"same.pdf": b"2"})
    with pytest.raises(uploads.DuplicateName, match="same.pdf"):
        uploads.collect([first, second])


def test_submitting_a_folder_twice_uploads_nothing_the_second_time(tmp_path: Path) -> None:
    store = MemoryStore()
    files = uploads.collect([tree(tmp_path / "scans", FOLDER)], "batch1/")

    first = uploads.submit(store, "in", files)
    assert sorted(store.names("in")) == sorted(f"batch1/{n}" for n in VISIBLE)
    assert all(s.generation for s in first.uploaded) and not first.unchanged
    assert store.read("in", "batch1/日本語/資料 1.pdf") == b"%PDF-nihongo"
    writes = len(store.writes)

    again = uploads.submit(store, "in", uploads.collect([tmp_path / "scans"], "batch1/"))
    assert len(store.writes) == writes
    assert len(again.unchanged) == len(VISIBLE) and not again.uploaded


def test_a_changed_file_is_uploaded_again_and_force_uploads_everything(tmp_path: Path) -> None:
    store = MemoryStore()
    root = tree(tmp_path / "scans", FOLDER)
    uploads.submit(store, "in", uploads.collect([root]))
    before = store.stat("in", "top.pdf")
    (root / "top.pdf").write_bytes(b"%PDF-top, second edition")

    changed = uploads.submit(store, "in", uploads.collect([root]))
    assert [s.file.name for s in changed.uploaded] == ["top.pdf"]
    after = store.stat("in", "top.pdf")
    assert before and after and after.generation > before.generation

    forced = uploads.submit(store, "in", uploads.collect([root]), force=True)
    assert len(forced.uploaded) == len(VISIBLE)


def test_same_size_but_different_bytes_is_not_unchanged(tmp_path: Path) -> None:
    store = MemoryStore()
    root = tree(tmp_path / "s", {"f.pdf": b"AAAA"})
    uploads.submit(store, "in", uploads.collect([root]))
    (root / "f.pdf").write_bytes(b"BBBB")
    report = uploads.submit(store, "in", uploads.collect([root]))
    assert [s.file.name for s in report.uploaded] == ["f.pdf"]
    assert store.read("in", "f.pdf") == b"BBBB"


def test_dry_run_lists_what_would_be_uploaded_and_uploads_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    root = tree(tmp_path / "scans", FOLDER)
    uploads.submit(store, "in", uploads.collect([root / "a"], "a/"))  # one file already there

    report = uploads.submit(store, "in", uploads.collect([root]), dry_run=True)
    assert store.writes == [("in", "a/b/c/deep.png")]
    assert sorted(s.file.name for s in report.uploaded) == sorted(
        n for n in VISIBLE if n != "a/b/c/deep.png"
    )
    assert [s.file.name for s in report.unchanged] == ["a/b/c/deep.png"]
    assert all(s.generation is None for s in report.files)


def test_files_without_a_shared_prefix_are_checked_one_by_one(tmp_path: Path) -> None:
    store = MemoryStore()
    one = tree(tmp_path / "x", {"alpha.pdf": b"1"}) / "alpha.pdf"
    two = tree(tmp_path / "y", {"beta.pdf": b"2"}) / "beta.pdf"
    uploads.submit(store, "in", uploads.collect([one, two]))
    report = uploads.submit(store, "in", uploads.collect([one, two]))
    assert len(report.unchanged) == 2 and len(store.writes) == 2


def test_progress_is_reported_for_every_file(tmp_path: Path) -> None:
    store = MemoryStore()
    files = uploads.collect([tree(tmp_path / "scans", FOLDER)])
    seen: list[str] = []
    uploads.submit(store, "in", files, on_file=lambda s: seen.append(s.file.name))
    assert sorted(seen) == sorted(VISIBLE)


def test_checksums_are_in_the_notation_gcs_uses() -> None:
    # Values fake-gcs-server (and GCS) report for b"hello": md5Hash and crc32c, base64.
    assert md5_of(b"hello") == "XUFAKrxLKna5cZ2REBfFkg=="
    assert crc32c_of(b"hello") == "mnG7TA=="
    store = MemoryStore()
    store.put("in", "h", b"hello")
    info = store.stat("in", "h")
    assert info and (info.md5, info.crc32c) == ("XUFAKrxLKna5cZ2REBfFkg==", "mnG7TA==")


OFFLINE_ENV = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9"}


def test_submit_of_nothing_or_of_clashing_names_exits_2_before_any_call(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ocrpipe import cli

    empty = tree(tmp_path / "empty", {".only-hidden": b"x"})
    result = CliRunner().invoke(cli.app, ["submit", str(empty)], env=OFFLINE_ENV)
    assert result.exit_code == cli.Exit.USAGE and "No files" in result.stderr
    first = tree(tmp_path / "a", {"same.pdf": b"1"})
    second = tree(tmp_path / "b", {"same.pdf": b"2"})
    result = CliRunner().invoke(cli.app, ["submit", str(first), str(second)], env=OFFLINE_ENV)
    assert result.exit_code == cli.Exit.USAGE and "same name" in result.stderr
