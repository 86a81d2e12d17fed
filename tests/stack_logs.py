"""Reading the local stack's JSON log lines for one document (tests only)."""

from __future__ import annotations

import json
from typing import Any

from ocrpipe.local.stack import LocalStack
from ocrpipe.naming import DocumentRef
from ocrpipe.testing.waiting import stack_alive, wait_for


def entries(stack: LocalStack, service: str, doc: DocumentRef) -> list[dict[str, Any]]:
    """The JSON log lines of ``service`` that carry ``doc``'s id."""
    assert stack.log_dir is not None
    path = stack.log_dir / f"{service}.log"
    if not path.exists():
        return []
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if doc.doc_id not in line or not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("logging.googleapis.com/labels", {}).get("doc_id") == doc.doc_id:
            found.append(entry)
    return found


def splitter_answers(stack: LocalStack, doc: DocumentRef) -> list[str]:
    """How the splitter answered each finalize event of ``doc``, in order: ``"ack"`` when its
    handler returned (the event is done with: Eventarc does not send it again) or ``"retry"``
    when it raised a retryable error (Eventarc sends the event again). The handler logs one
    ``split gs://...`` line per event, whatever the outcome."""
    answers = []
    for entry in entries(stack, "splitter", doc):
        message = str(entry["message"])
        if message.startswith("split gs://"):
            answers.append("retry" if " not finished, to be retried" in message else "ack")
    return answers


def split_answers(stack: LocalStack, docs: list[DocumentRef]) -> dict[str, list[str]]:
    """Each document's :func:`splitter_answers` once the splitter has acknowledged all of
    them. ``["ack"]`` means handled once: an acknowledged event is never delivered again, and
    a run before the acknowledgement would be listed, so there is nothing more to wait for."""
    return wait_for(
        lambda: {d.name: splitter_answers(stack, d) for d in docs},
        lambda answers: all("ack" in a for a in answers.values()),
        what="the splitter to acknowledge " + ", ".join(d.name for d in docs),
        alive=stack_alive(stack),
    )
