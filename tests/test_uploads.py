"""Submitting folders on the in-memory store: the walk (nested, hidden skipped, names
relative to the folder, prefix), skipping files already uploaded by checksum, --force and
--dry-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    found = uploads.collect([root], "batch1/").files
    assert [f.name for f in found] == sorted(f"batch1/{n}" for n in VISIBLE)
    assert {f.name: f.path for f in found}["batch1/a/b/c/deep.png"] == root / "a/b/c/deep.png"
    assert {f.name: f.size for f in found}["batch1/top.pdf"] == len(b"%PDF-top")


def test_files_keep_their_own_name_beside_folders(tmp_path: Path) -> None:
    root = tree(tmp_path / "scans", {"x/one.pdf": b"1"})
    single = tree(tmp_path / "loose", {"two.pdf": b"2"}) / "two.pdf"
    found = uploads.collect([root, single], "p/").files
    assert [f.name for f in found] == ["p/two.pdf", "p/x/one.pdf"]
    assert [f.name for f in uploads.collect([single]).files] == ["two.pdf"]


def test_two_files_with_one_name_are_refused(tmp_path: Path) -> None:
    first = tree(tmp_path / "a", {"same.pdf": b"1"})
    second = tree(tmp_path / "b", {"same.pdf": b"2"})
    with pytest.raises(uploads.DuplicateName, match="same.pdf"):
        uploads.collect([first, second])


def test_submitting_a_folder_twice_uploads_nothing_the_second_time(tmp_path: Path) -> None:
    store = MemoryStore()
    files = uploads.collect([tree(tmp_path / "scans", FOLDER)], "batch1/").files

    first = uploads.submit(store, "in", files)
    assert sorted(store.names("in")) == sorted(f"batch1/{n}" for n in VISIBLE)
    assert all(s.generation for s in first.uploaded) and not first.unchanged
    assert store.read("in", "batch1/日本語/資料 1.pdf") == b"%PDF-nihongo"
    writes = len(store.writes)

    again = uploads.submit(store, "in", uploads.collect([tmp_path / "scans"], "batch1/").files)
    assert len(store.writes) == writes
    assert len(again.unchanged) == len(VISIBLE) and not again.uploaded


def test_a_changed_file_is_uploaded_again_and_force_uploads_everything(tmp_path: Path) -> None:
    store = MemoryStore()
    root = tree(tmp_path / "scans", FOLDER)
    uploads.submit(store, "in", uploads.collect([root]).files)
    before = store.stat("in", "top.pdf")
    (root / "top.pdf").write_bytes(b"%PDF-top, second edition")

    changed = uploads.submit(store, "in", uploads.collect([root]).files)
    assert [s.file.name for s in changed.uploaded] == ["top.pdf"]
    after = store.stat("in", "top.pdf")
    assert before and after and after.generation > before.generation

    forced = uploads.submit(store, "in", uploads.collect([root]).files, force=True)
    assert len(forced.uploaded) == len(VISIBLE)


def test_same_size_but_different_bytes_is_not_unchanged(tmp_path: Path) -> None:
    store = MemoryStore()
    root = tree(tmp_path / "s", {"f.pdf": b"AAAA"})
    uploads.submit(store, "in", uploads.collect([root]).files)
    (root / "f.pdf").write_bytes(b"BBBB")
    report = uploads.submit(store, "in", uploads.collect([root]).files)
    assert [s.file.name for s in report.uploaded] == ["f.pdf"]
    assert store.read("in", "f.pdf") == b"BBBB"


def test_dry_run_lists_what_would_be_uploaded_and_uploads_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    root = tree(tmp_path / "scans", FOLDER)
    uploads.submit(store, "in", uploads.collect([root / "a"], "a/").files)  # one file already there

    report = uploads.submit(store, "in", uploads.collect([root]).files, dry_run=True)
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
    uploads.submit(store, "in", uploads.collect([one, two]).files)
    report = uploads.submit(store, "in", uploads.collect([one, two]).files)
    assert len(report.unchanged) == 2 and len(store.writes) == 2


def test_progress_is_reported_for_every_file(tmp_path: Path) -> None:
    store = MemoryStore()
    files = uploads.collect([tree(tmp_path / "scans", FOLDER)]).files
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


def _submit(store: MemoryStore, *args: str) -> tuple[int, str, str]:
    """``ocrpipe submit ARGS`` with ``store`` as the input bucket's store."""
    from typer.testing import CliRunner

    from ocrpipe import cli

    def no_client(settings: object) -> Any:
        raise AssertionError("submit needs no Pub/Sub client")

    memory = cli.Clients(store=lambda _: store, publisher=no_client, dead_letters=no_client)
    env = {**OFFLINE_ENV, "OCRPIPE_INPUT_BUCKET": "in", "COLUMNS": "300"}
    result = CliRunner().invoke(cli.app, ["submit", *args], obj=memory, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, result.stdout, result.stderr


def test_symbolic_links_are_not_followed_out_of_the_tree_unless_asked(tmp_path: Path) -> None:
    secret = tree(tmp_path / "home/.ssh", {"id_rsa": b"-----BEGIN OPENSSH PRIVATE KEY-----"})
    other = tree(tmp_path / "elsewhere", {"far.pdf": b"%PDF-far"})
    root = tree(tmp_path / "scans", {"real.pdf": b"%PDF-real"})
    (root / "key.pdf").symlink_to(secret / "id_rsa")
    (root / "linked").symlink_to(other, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    store = MemoryStore()

    code, stdout, stderr = _submit(store, str(root), "--prefix", "p/")

    assert code == 0, stderr
    assert sorted(store.names("in")) == ["p/real.pdf"]
    assert "key.pdf" in stderr and "linked" in stderr and "--follow-symlinks" in stderr

    code, stdout, stderr = _submit(store, str(root), "--prefix", "q/", "--follow-symlinks")
    assert code == 0, stderr
    assert sorted(n for n in store.names("in") if n.startswith("q/")) == [
        "q/key.pdf",
        "q/linked/far.pdf",
        "q/real.pdf",
    ]


def test_every_file_is_checked_before_the_first_upload(tmp_path: Path) -> None:
    import os

    root = tree(tmp_path / "scans", {"good.pdf": b"%PDF-good", "line\nfeed.pdf": b"%PDF-lf"})
    (root / os.fsdecode(b"latin-\xe9.pdf")).write_bytes(b"%PDF-latin1")  # not UTF-8
    os.mkfifo(root / "pipe.pdf")  # not a file: opening it would hang
    store = MemoryStore()

    code, stdout, stderr = _submit(store, str(root), "--prefix", "p/")

    assert sorted(store.names("in")) == ["p/good.pdf"]
    assert code == 1, stdout + stderr  # something was not submitted: said so, exit 1
    assert "submitted gs://in/p/good.pdf" in stdout
    assert "line\\x0afeed.pdf" in stderr and "line feed" in stderr
    assert "latin-\\udce9.pdf" in stderr and "UTF-8" in stderr
    assert "pipe.pdf" in stderr and "not a regular file" in stderr
    assert "Traceback" not in stdout + stderr


def test_a_file_that_vanishes_before_its_upload_is_reported_and_the_rest_are_uploaded(
    tmp_path: Path,
) -> None:
    root = tree(tmp_path / "scans", {f"doc{n}.pdf": b"%PDF-" + bytes([n]) for n in range(5)})
    store = MemoryStore()
    files = uploads.collect([root]).files
    (root / "doc2.pdf").unlink()

    report = uploads.submit(store, "in", files)

    assert sorted(store.names("in")) == ["doc0.pdf", "doc1.pdf", "doc3.pdf", "doc4.pdf"]
    assert [(f.file.name, "doc2.pdf" in f.why) for f in report.failed] == [("doc2.pdf", True)]
    assert "doc2.pdf" not in report.names  # --wait follows only what was uploaded
