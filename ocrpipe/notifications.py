"""The message on the documents topic: one per document each time it reaches a terminal
state (done, partial, failed), so downstream systems index results as they land instead of
polling the output bucket. Pure: build and encode only (:mod:`ocrpipe.announce` publishes).

Delivery is at least once, and a document reassembled after a retry notifies again with its
new state: subscribers drop duplicates by the ``doc_id`` attribute plus ``state`` (and keep
the newest ``source_generation`` per input name).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ocrpipe import naming
from ocrpipe.naming import DocumentRef

SCHEMA_VERSION = 1

TerminalState = Literal["done", "partial", "failed"]


class DocumentOutputs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    folder: str
    document_md: str | None = None
    document_json: str | None = None
    error: str | None = None


class DocumentNotification(BaseModel):
    """A document reached a terminal state."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    doc_id: str
    source_bucket: str
    source_name: str
    source_generation: int
    state: TerminalState
    page_count: int = Field(ge=0)
    pages_done: int = Field(ge=0)
    pages_failed: int = Field(ge=0)
    outputs: DocumentOutputs
    reason: str | None = Field(None, description="Why the input or its pages failed.")

    def attributes(self) -> dict[str, str]:
        return {
            "doc_id": self.doc_id,
            "state": self.state,
            "source_generation": str(self.source_generation),
            "schema_version": str(self.schema_version),
        }

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


def terminal_state(page_count: int, failed: int) -> TerminalState:
    """The state of an assembled document with ``failed`` of ``page_count`` pages failed."""
    return "done" if not failed else "failed" if failed >= page_count else "partial"


def assembled(
    doc: DocumentRef, output_bucket: str, *, page_count: int, failed_reasons: dict[int, str]
) -> DocumentNotification:
    """The notification for a document whose every page has a result."""
    failed = len(failed_reasons)
    state = terminal_state(page_count, failed)
    return DocumentNotification(
        **doc.source_fields(),
        state=state,
        page_count=page_count,
        pages_done=page_count - failed,
        pages_failed=failed,
        outputs=DocumentOutputs(
            folder=naming.object_uri(output_bucket, naming.output_prefix(doc)),
            document_md=naming.object_uri(output_bucket, naming.document_markdown_name(doc)),
            document_json=naming.object_uri(output_bucket, naming.document_index_name(doc)),
        ),
        reason=", ".join(sorted(set(failed_reasons.values()))) or None,
    )


def rejected(doc: DocumentRef, output_bucket: str, *, reason: str) -> DocumentNotification:
    """The notification for an input that was rejected as a whole (bad input)."""
    return DocumentNotification(
        **doc.source_fields(),
        state="failed",
        page_count=0,
        pages_done=0,
        pages_failed=0,
        outputs=DocumentOutputs(
            folder=naming.object_uri(output_bucket, naming.output_prefix(doc)),
            error=naming.object_uri(output_bucket, naming.document_error_name(doc)),
        ),
        reason=reason,
    )
