"""Reading the local stack's JSON log lines for one document (tests only)."""

from __future__ import annotations

import json
from typing import Any

from ocrpipe.local.stack import LocalStack
from ocrpipe.naming import DocumentRef


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


def splitter_runs(stack: LocalStack, doc: DocumentRef) -> int:
    """How many times the splitter finished handling ``doc``'s finalize event (the handler
    logs one ``split gs://...`` line per event, whatever the outcome)."""
    return sum(
        1 for e in entries(stack, "splitter", doc) if str(e["message"]).startswith("split gs://")
    )
