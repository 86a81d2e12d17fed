"""``ocrpipe get`` with a bbox model's figures, on the in-memory store: the document is made
by the real worker app (scripted bbox replies), then downloaded; every image link of the
local tree must open a file in it, and document.json's byte ranges must still hold."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from starlette.testclient import TestClient

from ocr_worker.app import create_app
from ocrpipe import naming
from ocrpipe.naming import DocumentRef
from ocrpipe.operations import get as results
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pushes import push_envelope, ready_document
from tests.fakes import ScriptedOcrServer, completion
from tests.test_figures_worker import SETTINGS, page_image

NAME = "reports/Grüße (q1).pdf"
REPLIES = [
    "# Page one\n\n![image](image_1.png)100,100,500,400\n\nFigure 1.\n\n"
    "![image](image_2.png)600,700,900,900",
    "# Page two\n\nNo figure, but a reference left as text: ![image](image_1.png)1,2,3",
    "# Page three ![chart](image_1.png) 600,700,900,900 done",
]
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def processed(store: MemoryStore, name: str = NAME) -> DocumentRef:
    """``name`` with one page per reply, each delivered to the real worker app."""
    doc, messages = ready_document(store, len(REPLIES), name=name, image=lambda _: page_image())
    server = ScriptedOcrServer([completion(reply) for reply in REPLIES])
    app = create_app(
        SETTINGS, store=store, ocr=server.client(model=SETTINGS.ocr_model),
        publisher=MemoryPublisher(),
    )  # fmt: skip
    with TestClient(app) as client:
        for message in messages:
            assert client.post("/", json=push_envelope(message)).status_code == 204
    return doc


def get(store: MemoryStore, dest: Path, **options: bool) -> results.GetReport:
    documents = results.find_documents(store, SETTINGS, names=[NAME])
    return results.get_results(store, SETTINGS, results.plan(documents, SETTINGS, dest, **options))


def image_links(markdown: Path) -> list[Path]:
    text = markdown.read_text(encoding="utf-8")
    return [markdown.parent / unquote(link) for link in _IMAGE_LINK.findall(text)]


def test_the_downloaded_tree_opens_every_figure_offline(tmp_path: Path) -> None:
    store = MemoryStore()
    doc = processed(store)
    report = get(store, tmp_path, pages=True, record=True)
    assert not report.missing and not report.failed and not report.renamed

    document = tmp_path / "reports" / "Grüße (q1).md"
    folder = tmp_path / "reports" / "Grüße (q1)" / "pages"
    figures = sorted(p.name for p in folder.glob("*.figure-*"))
    assert figures == ["00001.figure-1.png", "00001.figure-2.png", "00003.figure-1.png"]
    for name in figures:
        assert (folder / name).read_bytes() == store.read("out", naming.pages_prefix(doc) + name)

    # Every link but the reference page 2 left as text opens a figure of the tree.
    links = [link for link in image_links(document) if link.name != "image_1.png"]
    assert [p.resolve() for p in links] == [
        (folder / f).resolve() for f in ("00001.figure-1.png", "00001.figure-2.png",
                                         "00003.figure-1.png")
    ]  # fmt: skip
    for page in sorted(folder.glob("*.md")):
        assert all(link.is_file() for link in image_links(page) if link.name != "image_1.png")
    assert "![image](image_1.png)1,2,3" in document.read_text(encoding="utf-8")

    # The local document.json's byte ranges slice the local document.md into the pages.
    index = json.loads((tmp_path / "reports" / "Grüße (q1).json").read_text(encoding="utf-8"))
    local = document.read_bytes()
    for span in index["pages"]:
        text = local[span["start"] : span["end"]].decode()
        page_file = folder / f"{span['page']:05d}.md"
        expected = page_file.read_text(encoding="utf-8").replace(
            "](0", "](" + "Gr%C3%BC%C3%9Fe%20%28q1%29/pages/0"
        )
        assert text == expected


def test_a_second_get_downloads_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    processed(store)
    first = get(store, tmp_path, pages=True, record=True)
    again = get(store, tmp_path, pages=True, record=True)
    assert again.count("downloaded") == 0
    assert again.count("unchanged") == first.count("downloaded") == len(first.fetched)


def test_no_figures_leaves_them_and_the_links(tmp_path: Path) -> None:
    store = MemoryStore()
    doc = processed(store)
    get(store, tmp_path, figures=False)
    assert not list(tmp_path.rglob("*.png"))
    local = (tmp_path / "reports" / "Grüße (q1).md").read_bytes()
    assert local == store.read("out", naming.document_markdown_name(doc))


@pytest.mark.parametrize("record", [False, True])
def test_without_a_bbox_model_get_is_unchanged(tmp_path: Path, record: bool) -> None:
    from tests.test_batch_status import make_document

    store = MemoryStore()
    make_document(store, NAME, "done", texts=["one", "two"])
    documents = results.find_documents(store, SETTINGS, names=[NAME])
    planned = results.plan(documents, SETTINGS, tmp_path, record=record)
    assert all(w.relink is None and w.markdown is None for w in planned.wanted)
    results.get_results(store, SETTINGS, planned)
    assert (tmp_path / "reports" / "Grüße (q1).md").read_text() == "one\ntwo"
