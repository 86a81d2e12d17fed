"""Hostile and accidental names through the real CLI on the local stack (IAM enforced):
``submit DIR`` of a folder whose names clash on some disk, hold escape sequences, Windows
device names and path tricks, next to a symbolic link to a secret and a name GCS cannot
hold; then ``wait``, ``status`` and ``get --pages --json``. Nothing is written outside the
target folder, every document lands in a file of its own, safe on any disk, the terminal
never receives a control character, and a document that cannot be written is named while
the rest are written."""

from __future__ import annotations

import re
import unicodedata
import uuid
from pathlib import Path, PureWindowsPath

import pytest
from typer.testing import CliRunner

from ocrpipe import cli
from ocrpipe.local.stack import LocalStack, settings_env
from ocrpipe.storage import GcsStore
from ocrpipe.testing.inputs import text_pages_pdf
from tests.test_terminal_escapes import acts_on_a_terminal

pytestmark = pytest.mark.e2e

HOSTILE = [
    "rep.pdf",
    "rep/pages/00001.pdf",  # rep.pdf's first page, with --pages
    "q1.pdf",
    "q1.png",  # a PDF named .png: read by its content
    "q1.pdf.pdf",
    "Report.pdf",
    "report.pdf",  # one file with Report.pdf on macOS and Windows
    "Résumé.pdf",
    unicodedata.normalize("NFD", "Résumé.pdf"),  # one file with the NFC one on macOS
    "a",
    "a.md/b.pdf",  # needs a folder where "a" writes a.md
    "CON.pdf",
    "C:/Users/Public/evil.pdf",
    "dot at the end..pdf",
    "\x1b[2J\x1b[31mclear\u202eevil.pdf",
    "x" * 240 + ".pdf",
]
UPLOADED = "t/..\\..\\..\\escape.pdf"  # a local file so named is hidden: uploaded directly
WINDOWS_DEVICES = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"{d}{n}" for d in ("COM", "LPT") for n in range(10)),
}


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert acts_on_a_terminal(result.stdout + result.stderr) == [], (args, result.output)
    return result.exit_code, result.stdout, result.stderr


def text_of(number: int) -> str:
    return f"Hostile document {number:02d}"  # none is part of another


def windows_safe(relative: str) -> bool:
    path = PureWindowsPath(relative)
    if path.drive or path.root or len(path.parts) != relative.count("/") + 1:
        return False
    return all(
        part not in (".", "..")
        and not part.endswith((".", " "))
        and len(part.encode()) <= 255
        and not any(c in '<>:"\\|?*' or ord(c) < 32 for c in part)
        and part.split(".")[0].rstrip(" ").upper() not in WINDOWS_DEVICES
        for part in path.parts
    )


def is_page(path: Path) -> bool:
    return path.parent.name == "pages" and re.fullmatch(r"\d{5}\.md", path.name) is not None


def test_hostile_names_from_submit_to_get(stack: LocalStack, gcs: GcsStore, tmp_path: Path) -> None:
    env = settings_env(stack.settings)
    prefix = f"tests/hostile-{uuid.uuid4().hex[:8]}/"
    source = tmp_path / "scans"
    for number, relative in enumerate(HOSTILE):
        path = source / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text_pages_pdf([text_of(number)]))
    (tmp_path / "secret").write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    (source / "key.pdf").symlink_to(tmp_path / "secret")
    (source / "line\nbreak.pdf").write_bytes(text_pages_pdf(["never sent"]))

    code, stdout, stderr = run(env, "submit", str(source), "--prefix", prefix)
    assert code == 1, stdout + stderr  # the name with a line break could not go: said so
    assert "line\\x0abreak.pdf" in stderr and "key.pdf" in stderr and "--follow-symlinks" in stderr
    assert f"uploaded {len(HOSTILE)} file(s)" in stdout, stdout + stderr
    names = {info.name for info in gcs.list(stack.settings.input_bucket, prefix)}
    assert names == {prefix + relative for relative in HOSTILE}  # no key, no line break
    pdf = text_pages_pdf([text_of(len(HOSTILE))])
    gcs.create(stack.settings.input_bucket, prefix + UPLOADED, pdf, "application/pdf")

    code, stdout, stderr = run(env, "wait", "--prefix", prefix, "--timeout", "900")
    assert code == 0, stdout + stderr
    escapes = next(name for name in HOSTILE if "\x1b" in name)
    code, stdout, _ = run(env, "status", prefix + escapes)
    assert code == 0 and "\\x1b[2J" in stdout and "\\u202e" in stdout  # shown, not obeyed

    out = tmp_path / "out"
    code, stdout, stderr = run(env, "get", "--prefix", prefix, "-o", str(out), "--pages", "--json")
    assert code == 0, stdout + stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "scans", "secret"]
    files = [p for p in out.rglob("*") if p.is_file()]
    for path in files:
        relative = path.relative_to(out).as_posix()
        assert windows_safe(relative), relative
    folded = [unicodedata.normalize("NFD", p.relative_to(out).as_posix()).casefold() for p in files]
    assert len(set(folded)) == len(folded)  # distinct on a disk that ignores case and form
    documents = [p for p in files if p.suffix == ".md" and not is_page(p)]
    every = [*HOSTILE, UPLOADED]
    for number, name in enumerate(every):  # each document in one Markdown file of its own
        holding = [p for p in documents if text_of(number) in p.read_text()]
        assert len(holding) == 1, (name, holding)
    assert len(documents) == len(every)
    assert len([p for p in files if is_page(p)]) == len(every)
    assert len([p for p in files if p.suffix == ".json"]) == len(every)
    for moved in ("q1.pdf", "Report.pdf", "report.pdf", "a.md/b.pdf", "rep/pages/00001.pdf"):
        assert f"{prefix}{moved} -> " in stdout, moved  # each move is said, with its reason

    # Again: nothing changed. Then a local folder where one document's file goes.
    code, stdout, _ = run(env, "get", "--prefix", prefix, "-o", str(out), "--pages", "--json")
    assert code == 0 and f"0 file(s) downloaded, {len(files)} unchanged" in stdout
    con = text_of(HOSTILE.index("CON.pdf"))
    blocked = next(p for p in documents if con in p.read_text())
    blocked.unlink()
    blocked.mkdir()
    code, stdout, stderr = run(env, "get", "--prefix", prefix, "-o", str(out), "--pages", "--json")
    assert code == 1, stdout + stderr
    assert f"{prefix}CON.pdf: not written: cannot write" in stderr
    assert "1 document(s) not written" in stderr
    assert f"0 file(s) downloaded, {len(files) - 1} unchanged" in stdout
    assert list(blocked.iterdir()) == []
