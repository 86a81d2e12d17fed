"""Getting results as files on the in-memory store: the output tree mirrors the input
names, unchanged files are not downloaded again, the newest finished generation wins,
pages and document.json on request, and ``-`` (standard output)."""

from __future__ import annotations

import io
import re
from pathlib import Path, PurePosixPath

import pytest

from ocrpipe import naming
from ocrpipe.operations import get as results
from ocrpipe.operations import local_paths
from ocrpipe.testing.memory import MemoryStore
from tests.test_batch_status import SETTINGS, make_document

NAMES = [
    "batch1/top.pdf",
    "batch1/Grüße/über uns.pdf",
    "batch1/日本語/資料 1.pdf",
    "batch1/a/b.png",
]


def batch(store: MemoryStore) -> None:
    for name in NAMES:
        make_document(store, name, "done", texts=[f"{name} one", f"{name} two"])


def get(
    store: MemoryStore, dest: Path, prefix: str = "batch1/", **options: bool
) -> results.GetReport:
    documents = results.find_documents(store, SETTINGS, prefix=prefix)
    return results.get_results(store, SETTINGS, results.plan(documents, SETTINGS, dest, **options))


def test_the_output_tree_mirrors_the_input_names(tmp_path: Path) -> None:
    store = MemoryStore()
    batch(store)
    make_document(store, "batch2/not-this.pdf", "done")

    report = get(store, tmp_path)

    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.md"))
    assert written == sorted(
        ["batch1/top.md", "batch1/Grüße/über uns.md", "batch1/日本語/資料 1.md", "batch1/a/b.md"]
    )
    assert (tmp_path / "batch1/Grüße/über uns.md").read_text() == (
        "batch1/Grüße/über uns.pdf one\nbatch1/Grüße/über uns.pdf two"
    )
    assert report.count("downloaded") == 4 and not report.missing
    assert not list(tmp_path.rglob("*.part"))


def test_a_second_get_downloads_nothing_and_a_changed_file_comes_back(tmp_path: Path) -> None:
    store = MemoryStore()
    batch(store)
    get(store, tmp_path)
    edited = tmp_path / "batch1/top.md"
    edited.write_text("my notes")
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.md") if p != edited}

    again = get(store, tmp_path)

    assert again.count("unchanged") == 3 and again.count("replaced") == 1
    assert edited.read_text() == "batch1/top.pdf one\nbatch1/top.pdf two"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_the_newest_finished_generation_is_fetched_while_a_new_one_runs(tmp_path: Path) -> None:
    store = MemoryStore()
    make_document(store, "r/report.pdf", "done", texts=["old one", "old two"])
    make_document(store, "r/report.pdf", "running", texts=["new one", "new two"])
    report = get(store, tmp_path, prefix="r/")
    assert (tmp_path / "r/report.md").read_text() == "old one\nold two"
    assert report.count("downloaded") == 1

    make_document(store, "r/report.pdf", "done", texts=["newest one", "newest two"])
    get(store, tmp_path, prefix="r/")
    assert (tmp_path / "r/report.md").read_text() == "newest one\nnewest two"


def test_pages_and_the_record_on_request(tmp_path: Path) -> None:
    store = MemoryStore()
    make_document(store, "p/doc.pdf", "partial", pages=3, texts=["1", "2", "3"], record=True)
    make_document(store, "p/plain.pdf", "done")

    get(store, tmp_path, prefix="p/", pages=True, record=True)

    assert sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
    ) == [
        "p/doc.json",
        "p/doc.md",
        "p/doc/pages/00001.md",
        "p/doc/pages/00002.md",
        "p/plain.md",
        "p/plain/pages/00001.md",
        "p/plain/pages/00002.md",
    ]
    assert (tmp_path / "p/doc/pages/00002.md").read_text() == "2"
    assert (tmp_path / "p/doc.json").read_text() == '{"pages": 2}'


def test_documents_without_markdown_are_reported_not_written(tmp_path: Path) -> None:
    store = MemoryStore()
    make_document(store, "m/ok.pdf", "done")
    make_document(store, "m/text.pdf", "rejected")
    make_document(store, "m/busy.pdf", "running")
    report = get(store, tmp_path, prefix="m/")
    assert [p.name for p in tmp_path.rglob("*.md")] == ["ok.md"]
    assert {m.name: m.why for m in report.missing} == {
        "m/busy.pdf": "not finished yet",
        "m/text.pdf": "rejected (see `ocrpipe status NAME`)",
    }


def test_named_documents(tmp_path: Path) -> None:
    store = MemoryStore()
    batch(store)
    documents = results.find_documents(store, SETTINGS, names=["batch1/top.pdf", "nope.pdf"])
    planned = results.plan(documents, SETTINGS, tmp_path)
    assert [w.path for w in planned.wanted] == [tmp_path / "batch1/top.md"]
    assert planned.missing == (results.Missing("nope.pdf", "no such document"),)


def test_names_that_differ_only_by_extension_keep_it(tmp_path: Path) -> None:
    store = MemoryStore()
    make_document(store, "x/q1.pdf", "done")
    make_document(store, "x/q1.png", "done")
    get(store, tmp_path, prefix="x/")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["q1.pdf.md", "q1.png.md"]


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("a/b.pdf", "a/b"),
        ("archive.tar.gz", "archive.tar"),
        ("no-extension", "no-extension"),
        ("a/../b.pdf", "a/%2E%2E/b"),
        ("./b.pdf", "%2E/b"),
        ("/abs.pdf", "%/abs"),
        ("a//b.pdf", "a/%/b"),
        ("t/..\\..\\x.pdf", "t/..%5C..%5Cx"),
        ("C:/evil.pdf", "C%3A/evil"),
        ("nul.tar.gz", "%6Eul.tar"),
        ("dots.../x .pdf", "dots%2E%2E%2E/x%20"),
    ],
)
def test_local_paths_never_leave_the_folder(name: str, stem: str) -> None:
    assert local_paths.stem(name, 0) == PurePosixPath(stem)


def test_dash_writes_the_markdown_to_standard_output() -> None:
    store = MemoryStore()
    make_document(store, "s/one.pdf", "done", texts=["first", "page"])
    make_document(store, "s/two.pdf", "done", texts=["second", "doc"])
    sink = io.BytesIO()
    documents = results.find_documents(store, SETTINGS, names=["s/one.pdf"])
    assert results.write_markdown(store, SETTINGS, documents, sink) == []
    assert sink.getvalue() == b"first\npage"
    sink = io.BytesIO()
    results.write_markdown(
        store, SETTINGS, results.find_documents(store, SETTINGS, prefix="s/"), sink
    )
    assert sink.getvalue() == b"first\npagesecond\ndoc"


def test_the_object_names_come_from_naming(tmp_path: Path) -> None:
    store = MemoryStore()
    doc = make_document(store, "n/ü.pdf", "done")
    documents = results.find_documents(store, SETTINGS, prefix="n/")
    planned = results.plan(documents, SETTINGS, tmp_path)
    assert [w.info.name for w in planned.wanted] == [naming.document_markdown_name(doc)]


OFFLINE_ENV = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9"}


@pytest.mark.parametrize(
    "args",
    [
        ["get"],
        ["get", "a.pdf", "-o", "-", "--pages"],
        ["get", "--prefix", "p/", "-o", "-", "--json"],
    ],
)
def test_get_usage_errors_exit_2_before_any_call(args: list[str]) -> None:
    from typer.testing import CliRunner

    from ocrpipe import cli

    result = CliRunner().invoke(cli.app, args, env=OFFLINE_ENV)
    assert result.exit_code == cli.Exit.USAGE, result.output


def _is_page(path: Path) -> bool:
    return path.parent.name == "pages" and re.fullmatch(r"\d{5}\.md", path.name) is not None


def _markdown_files(root: Path) -> dict[str, str]:
    """Every document's Markdown file under ``root``, relative path -> text."""
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in root.rglob("*.md")
        if p.is_file() and not _is_page(p)
    }


def _folded(path: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold())


CLASHING = [
    "c/rep.pdf",  # with --pages: c/rep/pages/00001.md ...
    "c/rep/pages/00001.pdf",  # ... which is this document's Markdown too
    "c/q1.pdf",
    "c/q1.png",
    "c/q1.pdf.pdf",  # q1.pdf keeps its extension because of q1.png: c/q1.pdf.md
    "c/Résumé.pdf",  # NFC
    "c/Re\u0301sume\u0301.pdf",  # NFD: one file on macOS
    "c/Report.pdf",
    "c/report.pdf",  # one file on macOS and Windows
    "c/a",  # c/a.md ...
    "c/a.md/b.pdf",  # ... where this one needs a folder
]


def test_no_two_documents_share_a_local_file(tmp_path: Path) -> None:
    store = MemoryStore()
    for name in CLASHING:
        make_document(store, name, "done", pages=1, texts=[f"text of {name}"])

    report = get(store, tmp_path, prefix="c/", pages=True)

    written = _markdown_files(tmp_path)
    for name in CLASHING:  # each document in exactly one file of its own
        holding = [path for path, text in written.items() if text == f"text of {name}"]
        assert len(holding) == 1, (name, holding)
    assert len(written) == len(CLASHING)
    every = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert len({_folded(p) for p in every}) == len(every)  # distinct on any disk
    pages = [p for p in every if _is_page(tmp_path / p)]
    assert sorted(tmp_path.joinpath(p).read_text() for p in pages) == sorted(
        f"text of {name}" for name in CLASHING
    )
    assert report.count("downloaded") == len(every)


def _windows_safe(relative: str) -> bool:
    from pathlib import PureWindowsPath

    reserved = {"CON", "PRN", "AUX", "NUL", *(f"{d}{n}" for d in ("COM", "LPT") for n in range(10))}
    path = PureWindowsPath(relative)
    if path.drive or path.root or len(path.parts) != relative.count("/") + 1:
        return False
    for part in path.parts:
        if part in (".", "..") or part.endswith((".", " ")) or len(part.encode()) > 255:
            return False
        if any(c in '<>:"\\|?*' or ord(c) < 32 for c in part):
            return False
        if part.split(".")[0].rstrip(" ").upper() in reserved:
            return False
    return True


HOSTILE_PATHS = [
    "w/t/..\\..\\..\\escape.pdf",
    "w/C:/Users/Public/evil.pdf",
    "w/CON.pdf",
    "w/aux/inside.pdf",
    "w/dot at the end..pdf",
    "w/space at the end .pdf",
    "w/" + "x" * 250 + ".pdf",
    "w/" + "é" * 126 + "/in a long folder.pdf",
    'w/a<b>c:d"e|f?g*.pdf',
    "w/tab\there\x1b[2J.pdf",
    "w/a/../../up.pdf",
    "w//empty.pdf",
]


def test_every_local_path_is_safe_on_posix_macos_and_windows(tmp_path: Path) -> None:
    store = MemoryStore()
    for name in HOSTILE_PATHS:
        make_document(store, name, "done", pages=1, texts=[f"text of {name}"])

    report = get(store, tmp_path / "out", prefix="w/", pages=True, record=True)

    assert not list(tmp_path.glob("*.md")) and sorted(tmp_path.iterdir()) == [tmp_path / "out"]
    written = _markdown_files(tmp_path / "out")
    for name in HOSTILE_PATHS:
        holding = [path for path, text in written.items() if text == f"text of {name}"]
        assert len(holding) == 1, (name, holding)
    for path in (tmp_path / "out").rglob("*"):
        relative = path.relative_to(tmp_path / "out").as_posix()
        assert _windows_safe(relative), relative
    assert not report.missing
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]


def test_a_document_that_cannot_be_written_is_reported_and_the_rest_are_written(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    docs = {
        name: make_document(store, name, "done", texts=[name, "two"])
        for name in ("f/first.pdf", "f/blocked.pdf", "f/rebuilt.pdf", "f/last.pdf")
    }
    (tmp_path / "f/blocked.md").mkdir(parents=True)  # a local folder where its file goes
    documents = results.find_documents(store, SETTINGS, prefix="f/")
    planned = results.plan(documents, SETTINGS, tmp_path)
    rebuilt = naming.document_markdown_name(docs["f/rebuilt.pdf"])
    store.put("out", rebuilt, b"rebuilt with a retried page")  # since the listing

    report = results.get_results(store, SETTINGS, planned)

    assert (tmp_path / "f/first.md").read_text() == "f/first.pdf\ntwo"
    assert (tmp_path / "f/last.md").read_text() == "f/last.pdf\ntwo"
    failed = {item.name: item.why for item in report.failed}
    assert sorted(failed) == ["f/blocked.pdf", "f/rebuilt.pdf"]
    assert "f/blocked.md" in failed["f/blocked.pdf"]
    assert "run `ocrpipe get` again" in failed["f/rebuilt.pdf"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]


def test_a_document_that_clashes_at_every_level_is_reported_not_written(tmp_path: Path) -> None:
    store = MemoryStore()
    taken = f"d/x.pdf~{local_paths.name_hash('d/x.pdf')}.pdf"  # what x.pdf would become
    for name in ("d/x.pdf", "d/X.pdf", taken):
        make_document(store, name, "done", texts=[name, ""])

    report = get(store, tmp_path, prefix="d/")

    assert [m.name for m in report.missing] == ["d/x.pdf"]
    assert report.missing[0].why.startswith("no local path of its own: ")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.md"))
    assert written == [
        f"d/X.pdf~{local_paths.name_hash('d/X.pdf')}.md",
        f"d/x.pdf~{local_paths.name_hash('d/x.pdf')}.pdf.md",
    ]
    assert {r.name for r in report.renamed} == {"d/X.pdf", taken}
