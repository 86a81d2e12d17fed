"""A folder in, a folder out, on the real emulators and through the real CLI: ``submit
DIR``, ``wait --prefix``, ``status --prefix``, ``get --prefix -o``. The output tree mirrors
the input tree, holds what the OCR engine wrote, and running submit and get again moves
nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from typer.testing import CliRunner

from ocrpipe import cli, naming
from ocrpipe.local.stack import LocalStack, settings_env
from ocrpipe.naming import DocumentRef
from ocrpipe.operations.pull import PubSubPullSubscription
from ocrpipe.pubsub import subscriber_client
from ocrpipe.storage import GcsStore
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.testing.waiting import stack_alive, wait_for
from tests.stack_logs import entries

pytestmark = pytest.mark.e2e

GOOD = [
    "Grüße/über uns.pdf",
    "Grüße/Straße 2.pdf",
    "日本語/資料 1.pdf",
    "日本語/資料 2.pdf",
    "Ελληνικά/έγγραφο.pdf",
    "Ελληνικά/δεύτερο έγγραφο.pdf",
    "top one.pdf",
    "top-two.pdf",
    *(f"deep/level {n // 3}/sub {n % 3}/doc {n}.pdf" for n in range(12)),
]
REJECTED = "Ελληνικά/κείμενο.pdf"  # a .pdf that is plain text


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.app, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def documents(stack: LocalStack) -> Iterator[PubSubPullSubscription]:
    """A pull subscription on the documents topic, made before anything is submitted (as a
    user's own would be), with the emulator's admin client."""
    settings = stack.admin_settings  # the test's own subscriber, set up as terraform would
    admin = subscriber_client(settings.pubsub_emulator_host)
    name = f"documents-{uuid.uuid4().hex[:8]}"
    admin.create_subscription(
        request={
            "name": admin.subscription_path(settings.project, name),
            "topic": f"projects/{settings.project}/topics/{settings.documents_topic}",
            "ack_deadline_seconds": 60,
        }
    )
    subscription = PubSubPullSubscription.connect(
        settings.project, name, settings.pubsub_emulator_host
    )
    yield subscription
    subscription.close()
    admin.delete_subscription(
        request={"subscription": admin.subscription_path(settings.project, name)}
    )
    admin.close()


def test_a_folder_in_a_folder_out(
    stack: LocalStack, gcs: GcsStore, tmp_path: Path, documents: PubSubPullSubscription
) -> None:
    settings = stack.settings
    env = settings_env(settings)
    prefix = f"tests/folder-{uuid.uuid4().hex[:8]}/"
    source = tmp_path / "scans"
    for number, relative in enumerate(GOOD):
        path = source / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text_pdf(1 + number % 2, seed=number, lines=4)[0])
    (source / REJECTED).write_bytes(b"just some notes, not a PDF at all\n")
    (source / ".DS_Store").write_bytes(b"hidden")
    assert len(GOOD) == 20

    code, stdout, stderr = run(env, "submit", str(source), "--prefix", prefix)
    assert code == 0, stderr
    assert "uploaded 21 file(s), 0 unchanged" in stdout
    generations = _generations(gcs, settings.input_bucket, prefix)
    assert sorted(generations) == sorted(prefix + r for r in [*GOOD, REJECTED])

    code, stdout, stderr = run(env, "wait", "--prefix", prefix, "--timeout", "600")
    assert code == 1, stdout + stderr  # the text file was rejected: a failure
    assert "20 done, 1 rejected" in stdout and "failures" in stdout

    code, stdout, _ = run(env, "status", "--prefix", prefix, "--json")
    status = json.loads(stdout)
    assert code == 0 and status["finished"] and status["states"] == {"done": 20, "rejected": 1}
    assert [(f["name"], f["page"]) for f in status["failures"]] == [(prefix + REJECTED, None)]
    assert status["pages"]["done"] == sum(1 + n % 2 for n in range(len(GOOD)))

    out = tmp_path / "out"
    code, stdout, stderr = run(env, "get", "--prefix", prefix, "-o", str(out), "--pages")
    assert code == 1 and prefix + REJECTED in stderr  # no Markdown for it, said so
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.md"))
    expected_md = [str(PurePosixPath(prefix + r).with_suffix(".md")) for r in GOOD]
    assert [f for f in files if "/pages/" not in f] == sorted(expected_md)
    for number, relative in enumerate(GOOD):
        doc = DocumentRef(settings.input_bucket, prefix + relative, generations[prefix + relative])
        stem = out / PurePosixPath(prefix + relative).with_suffix("")
        document = gcs.read(settings.output_bucket, naming.document_markdown_name(doc))
        assert stem.with_name(stem.name + ".md").read_bytes() == document
        for page in range(1, 2 + number % 2):
            expected = gcs.read(settings.output_bucket, naming.page_markdown_name(doc, page))
            assert (stem / "pages" / f"{page:05d}.md").read_bytes() == expected
            assert expected.decode().strip() and expected in document
    downloaded = len(files)

    code, stdout, _ = run(env, "submit", str(source), "--prefix", prefix)
    assert code == 0 and "uploaded 0 file(s), 21 unchanged" in stdout
    assert _generations(gcs, settings.input_bucket, prefix) == generations

    code, stdout, _ = run(env, "get", "--prefix", prefix, "-o", str(out), "--pages")
    assert f"0 file(s) downloaded, {downloaded} unchanged" in stdout

    # Told when done: one terminal notification per document once duplicates are dropped
    # by doc_id, the rejected one included; each latest.json points at its generation.
    refs = [DocumentRef(settings.input_bucket, n, g) for n, g in generations.items()]
    states = _notifications(documents, stack, refs)
    for name, generation in generations.items():
        doc = DocumentRef(settings.input_bucket, name, generation)
        assert states[doc.doc_id] == {"failed" if name == prefix + REJECTED else "done"}, name
        latest = json.loads(gcs.read(settings.output_bucket, naming.latest_name(name)))
        assert latest["source"]["generation"] == generation
        if name == prefix + REJECTED:
            assert (
                latest["error"]
                == f"gs://{settings.output_bucket}/{naming.document_error_name(doc)}"
            )
        else:
            markdown = naming.document_markdown_name(doc)
            assert latest["document_md"] == f"gs://{settings.output_bucket}/{markdown}"
            # Each page's provenance came back through fake-gcs-server's listing metadata.
            index = json.loads(gcs.read(settings.output_bucket, naming.document_index_name(doc)))
            models = {p["provenance"]["model"] for p in index["pages"]}
            assert models == {settings.ocr_model}, index["pages"]
    assert len(states) == len(generations)


def _announced(stack: LocalStack, docs: list[DocumentRef]) -> int:
    """How many announcements of ``docs`` the splitter and the worker logged (each logs one
    ``document announced`` line per message it published on the documents topic)."""
    return sum(
        1
        for doc in docs
        for service in ("splitter", "worker")
        for entry in entries(stack, service, doc)
        if str(entry["message"]).startswith("document announced")
    )


def _notifications(
    subscription: PubSubPullSubscription, stack: LocalStack, docs: list[DocumentRef]
) -> dict[str, set[str]]:
    """doc_id -> the states announced for it, for ``docs`` (others may share the session's
    stack). Pulls until each document was heard of and every announcement logged for them
    has arrived, a late one of another state included."""
    wanted = {doc.doc_id for doc in docs}
    states: dict[str, set[str]] = {}
    received = 0

    def pull() -> tuple[int, int, int]:
        nonlocal received
        messages = subscription.pull(100)
        for message in messages:
            body = json.loads(message.data)
            if body["doc_id"] in wanted:
                assert message.attributes["doc_id"] == body["doc_id"]
                assert message.attributes["state"] == body["state"]
                states.setdefault(body["doc_id"], set()).add(body["state"])
                received += 1
        if messages:
            subscription.ack([m.ack_id for m in messages])
        return len(states), received, _announced(stack, docs)

    wait_for(
        pull,
        lambda reading: reading[0] == len(wanted) and reading[1] >= reading[2],
        what="the documents topic to carry every announcement",
        alive=stack_alive(stack),
    )
    return states


def _generations(gcs: GcsStore, bucket: str, prefix: str) -> dict[str, int]:
    return {info.name: info.generation for info in gcs.list(bucket, prefix)}
