"""The Python API (``from ocrpipe import Client``): on the in-memory store for what each
call answers, and against the local stack for a folder submitted, waited for and read."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

import ocrpipe
from ocrpipe import Client, naming, records
from ocrpipe.errors import NotReady, StackDown
from ocrpipe.local.stack import LocalStack
from ocrpipe.operations.batch_status import BatchStatus
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryStore
from ocrpipe.testing.pdfs import text_pdf

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out")


def finished(store: MemoryStore, name: str, text: str) -> naming.DocumentRef:
    """A one-page document as the worker leaves it."""
    info = store.stat("in", name)
    assert info is not None
    doc = naming.DocumentRef("in", name, info.generation)
    store.put("out", naming.manifest_name(doc), records.manifest_record(doc, 1))
    store.put("out", naming.page_markdown_name(doc, 1), text.encode())
    store.put("out", naming.document_markdown_name(doc), f"<!-- page 1 -->\n\n{text}\n".encode())
    store.put("out", naming.document_index_name(doc), b'{"pages": [{"page": 1, "state": "done"}]}')
    return doc


def test_submit_a_folder_then_read_each_documents_state_markdown_and_record(
    tmp_path: Path,
) -> None:
    (tmp_path / "scans" / "sub").mkdir(parents=True)
    (tmp_path / "scans" / "a.pdf").write_bytes(b"%PDF-1.7 a")
    (tmp_path / "scans" / "sub" / "b.pdf").write_bytes(b"%PDF-1.7 b")
    (tmp_path / "scans" / ".hidden.pdf").write_bytes(b"%PDF-1.7 h")
    store = MemoryStore()
    client = Client(SETTINGS, store=store)

    submitted = client.submit([tmp_path / "scans", tmp_path / "gone.pdf"], prefix="batch1/")

    names = submitted.names
    assert names == ["batch1/a.pdf", "batch1/sub/b.pdf"]
    assert not submitted.ok and submitted.not_submitted[0][0].endswith("gone.pdf")
    assert store.read("in", "batch1/sub/b.pdf") == b"%PDF-1.7 b"
    again = client.submit([str(tmp_path / "scans")], prefix="batch1/")
    assert again.ok and again.names == names  # unchanged
    assert client.status("batch1/a.pdf").state == "splitting"
    with pytest.raises(NotReady, match="not finished") as not_yet:
        client.markdown("batch1/a.pdf")
    assert not_yet.value.reason == "not_finished"

    finished(store, "batch1/a.pdf", "Hello")
    assert client.status("batch1/a.pdf").state == "done"
    assert client.markdown("batch1/a.pdf") == "<!-- page 1 -->\n\nHello\n"
    assert client.document_json("batch1/a.pdf")["pages"][0]["state"] == "done"
    assert client.batch("batch1/").states == {"done": 1, "splitting": 1}


def test_a_rejected_or_unknown_document_has_no_markdown_and_says_why() -> None:
    store = MemoryStore()
    generation = store.put("in", "empty.pdf", b"")
    doc = naming.DocumentRef("in", "empty.pdf", generation)
    store.put("out", naming.document_error_name(doc), records.error_record(doc, "empty_file", "0"))
    client = Client(SETTINGS, store=store)
    with pytest.raises(NotReady, match="rejected: empty_file") as rejected:
        client.document_json("empty.pdf")
    assert rejected.value.reason == "rejected"
    with pytest.raises(NotReady) as unknown:
        client.markdown("nothing.pdf")
    assert unknown.value.reason == "no_such_document"


def test_wait_reports_progress_and_how_the_batch_ended() -> None:
    store = MemoryStore()
    for name in ("w/a.pdf", "w/b.pdf"):
        store.put("in", name, b"%PDF-")
    finished(store, "w/a.pdf", "A")
    client = Client(SETTINGS, store=store)
    seen: list[BatchStatus] = []

    def progress(status: BatchStatus) -> None:
        seen.append(status)
        if len(seen) == 2:
            finished(store, "w/b.pdf", "B")

    result = client.wait(["w/a.pdf", "w/b.pdf"], interval=0.01, on_progress=progress)
    assert result.ok and result.outcome == "ok"
    assert [s.pages_done for s in seen] == [1, 1, 2]
    late = client.wait(prefix="none-yet/", timeout=0.05, interval=0.01)
    assert late.outcome == "failed" and not late.status.documents  # nothing there: a typo
    store.put("in", "w/c.pdf", b"%PDF-")
    cut = client.wait(["w/c.pdf"], timeout=0.05, interval=0.01)
    assert cut.outcome == "timeout" and not cut.ok
    with pytest.raises(ValueError, match="names, or a prefix"):
        client.wait()


def test_the_local_stack_of_a_folder_and_one_that_went_away(tmp_path: Path) -> None:
    with pytest.raises(StackDown, match="no local stack in .*start one with `ocrpipe up`"):
        Client.local(tmp_path)
    (tmp_path / ".ocrpipe").mkdir()
    (tmp_path / ".ocrpipe" / "local.env").write_text(
        "STORAGE_EMULATOR_HOST=http://127.0.0.1:9\nPUBSUB_EMULATOR_HOST=127.0.0.1:9\n"
    )
    with pytest.raises(StackDown, match="nothing answers at 127.0.0.1:9"):
        Client.local(tmp_path)


def test_the_package_exports_the_api_and_one_version() -> None:
    from importlib.metadata import version

    assert ocrpipe.Client is Client
    assert ocrpipe.__version__ == version("ocrpipe")
    assert set(ocrpipe.__all__) >= {"Client", "WaitResult", "DocumentStatus", "BatchStatus"}
    with pytest.raises(AttributeError):
        ocrpipe.Clinet  # noqa: B018


@pytest.mark.e2e
def test_a_folder_submitted_waited_for_and_read_through_the_api(
    stack: LocalStack, tmp_path: Path
) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    texts = {}
    for index in range(2):
        data, lines = text_pdf(2, seed=40 + index, lines=4)
        (folder / f"r{index}.pdf").write_bytes(data)
        texts[f"r{index}.pdf"] = lines
    client = Client(stack.settings)
    prefix = f"tests/api-{uuid.uuid4().hex[:8]}/"

    names = client.submit([folder], prefix=prefix).names
    progress: list[int] = []
    result = client.wait(names, timeout=300, on_progress=lambda b: progress.append(b.pages_done))

    assert result.ok, result.status.as_dict()
    assert progress[-1] == 4 and progress == sorted(progress)
    for name in names:
        markdown = client.markdown(name)
        first_line = texts[name.removeprefix(prefix)][0][0]
        assert first_line in markdown, markdown
        record = client.document_json(name)
        assert [p["state"] for p in record["pages"]] == ["done", "done"]
        assert json.dumps(record)  # plain JSON for scripts
        assert client.status(name).state == "done"
