"""Following the documents topic on the local stack as a user would, through the IAM
proxies: ``ocrpipe follow`` as the project's owner (identity ``owner``) makes its own
subscription, prints each document's notification as it lands, and removes the
subscription when it stops. The operator, who holds no right to create subscriptions,
is refused with a hint, as in production."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ocrpipe import cli
from ocrpipe.local.stack import LocalStack, settings_env
from ocrpipe.pubsub import subscriber_client
from ocrpipe.testing.pdfs import text_pdf

pytestmark = pytest.mark.e2e

OCRPIPE = str(Path(sys.executable).with_name("ocrpipe"))


def read_lines(stream: object, into: list[str], seen: threading.Event, marker: str) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.append(line)
        if marker in line:
            seen.set()


def test_the_owner_follows_each_document_to_its_end(stack: LocalStack, tmp_path: Path) -> None:
    prefix = f"tests/follow-{uuid.uuid4().hex[:8]}/"
    (tmp_path / "good.pdf").write_bytes(text_pdf(1, seed=3, lines=3)[0])
    (tmp_path / "notes.pdf").write_bytes(b"not a PDF, just notes\n")
    owner = {**os.environ, **settings_env(stack.settings_for("owner"))}
    follower = subprocess.Popen(
        [OCRPIPE, "follow", "--prefix", prefix, "--count", "2", "--timeout", "300", "--json"],
        env=owner, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    errors: list[str] = []
    ready = threading.Event()
    reader = threading.Thread(target=read_lines, args=(follower.stderr, errors, ready, "follow"))
    reader.start()
    try:
        while not ready.wait(0.5):  # its subscription exists before anything is published
            assert follower.poll() is None, "".join(errors)
        operator = settings_env(stack.settings)
        submitted = CliRunner().invoke(
            cli.app, ["submit", str(tmp_path), "--prefix", prefix], env=operator
        )
        assert submitted.exit_code == 0, submitted.output
        stdout, _ = follower.communicate(timeout=360)
    finally:
        if follower.poll() is None:
            follower.kill()
        reader.join(10)
    assert follower.returncode == 0, stdout + "".join(errors)
    notes = [json.loads(line) for line in stdout.splitlines()]
    assert sorted((n["source_name"], n["state"]) for n in notes) == [
        (prefix + "good.pdf", "done"),
        (prefix + "notes.pdf", "failed"),
    ]
    good = next(n for n in notes if n["state"] == "done")
    assert good["outputs"]["document_md"].endswith("/document.md")
    # It made its own subscription through the proxy, and removed it.
    used = stack.iam_usage()["owner"]["used"]
    assert any(u.startswith("pubsub.subscriptions.create on ") for u in used), used
    assert any(u.startswith("pubsub.subscriptions.delete on ") for u in used), used
    admin = subscriber_client(stack.admin_settings.pubsub_emulator_host)
    project = f"projects/{stack.project}"
    left = [s.name for s in admin.list_subscriptions(project=project) if "follow" in s.name]
    admin.close()
    assert left == []


def test_the_operator_may_not_create_a_subscription_and_is_told_what_to_do(
    stack: LocalStack,
) -> None:
    result = CliRunner().invoke(
        cli.app, ["follow", "--count", "1", "--timeout", "5"], env=settings_env(stack.settings)
    )
    assert result.exit_code == cli.Exit.FAILED, result.output
    assert "--subscription" in result.stderr and "owner" in result.stderr
