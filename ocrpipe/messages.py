"""Pydantic models for what crosses a trust boundary: the page message on the pages topic,
the Pub/Sub push envelope the worker receives, and the GCS object data inside a finalize
CloudEvent. Inside the services these become frozen dataclasses (:class:`DocumentRef`).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ocrpipe import naming
from ocrpipe.errors import BadMessage, NewerSchema
from ocrpipe.naming import DocumentRef

# Version 2 added ``render_failure``. A message without it is still published as version 1,
# so workers of either version read every ordinary page message.
SCHEMA_VERSION = 2
RENDER_FAILURE_VERSION = 2


class RenderFailure(BaseModel):
    """Why the splitter could not render a page (its record is in the work bucket)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str = Field(min_length=1, max_length=100)
    message: str = Field(max_length=2000)


class PageMessage(BaseModel):
    """One page to OCR, or, with ``render_failure``, a page the splitter could not render:
    the worker records its failure and checks the document's completion. Published by the
    splitter, consumed by the worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(1, ge=1, le=SCHEMA_VERSION)
    doc_id: str = Field(min_length=1, max_length=64)
    source_bucket: str = Field(min_length=1)
    source_name: str = Field(min_length=1)
    source_generation: int = Field(ge=0)
    page: int = Field(ge=1, description="1-based page number.")
    page_count: int = Field(ge=1)
    image_uri: str | None = Field(None, pattern=naming.GS_URI_PATTERN)
    image_mime: Literal["image/png", "image/jpeg"] | None = None
    render_failure: RenderFailure | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PageMessage:
        if self.page > self.page_count:
            raise ValueError(f"page {self.page} is beyond page_count {self.page_count}")
        if self.doc_id != self.document.doc_id:
            raise ValueError("doc_id does not match source bucket, name and generation")
        if self.render_failure is None:
            if self.image_uri is None or self.image_mime is None:
                raise ValueError("a page message needs image_uri and image_mime")
        else:
            if self.image_uri is not None or self.image_mime is not None:
                raise ValueError("a page that failed to render has no image")
            if self.schema_version < RENDER_FAILURE_VERSION:
                raise ValueError(f"render_failure needs schema_version {RENDER_FAILURE_VERSION}")
        return self

    @classmethod
    def for_image(
        cls, doc: DocumentRef, page: int, page_count: int, work_bucket: str, image_name: str
    ) -> PageMessage:
        """The message for a rendered page whose image is ``image_name`` in the work bucket:
        the one constructor the splitter and ``ocrpipe retry`` share."""
        return cls(
            **doc.source_fields(),
            page=page,
            page_count=page_count,
            image_uri=naming.object_uri(work_bucket, image_name),
            image_mime=naming.image_mime(image_name),
        )

    @classmethod
    def failed_render(
        cls, doc: DocumentRef, page: int, page_count: int, reason: str, message: str
    ) -> PageMessage:
        """The message for a page the splitter could not render."""
        return cls(
            **doc.source_fields(),
            schema_version=RENDER_FAILURE_VERSION,
            page=page,
            page_count=page_count,
            render_failure=RenderFailure(reason=reason, message=message[:2000]),
        )

    @property
    def document(self) -> DocumentRef:
        return DocumentRef(self.source_bucket, self.source_name, self.source_generation)

    def attributes(self) -> dict[str, str]:
        return {
            "doc_id": self.doc_id,
            "page": str(self.page),
            "source_generation": str(self.source_generation),
            "schema_version": str(self.schema_version),
        }

    def encode(self) -> bytes:
        # Unset optional fields stay out: a version-1 message reads as it always did.
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> PageMessage:
        """Raises :class:`NewerSchema` (retryable) for a message of a schema this code does
        not know yet, :class:`BadMessage` for one that is malformed."""
        _check_version(data)
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise BadMessage(f"page message is not valid: {_summary(exc)}") from exc


def _check_version(data: bytes) -> None:
    """A newer ``schema_version`` comes from a splitter deployed before this worker: nack it
    so that it waits (retries, then the dead-letter topic) for a worker that reads it."""
    try:
        raw = json.loads(data)
    except ValueError:
        return  # malformed: validation says why
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise NewerSchema(
            f"page message has schema_version {version}; this worker reads up to"
            f" {SCHEMA_VERSION}: deploy the newer worker, then replay the dead letters",
        )


class PushMessage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    data: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)
    message_id: str = Field("", alias="messageId")
    publish_time: datetime | None = Field(None, alias="publishTime")


class PushEnvelope(BaseModel):
    """The body of a Pub/Sub push request (wrapped, not ``--push-no-wrapper``)."""

    message: PushMessage
    subscription: str = ""
    delivery_attempt: int | None = Field(None, alias="deliveryAttempt")

    @classmethod
    def parse(cls, body: bytes) -> PushEnvelope:
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            raise BadMessage(f"push body is not a Pub/Sub envelope: {_summary(exc)}") from exc

    def data(self) -> bytes:
        try:
            return base64.b64decode(self.message.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadMessage("push message data is not base64") from exc


class StorageObjectData(BaseModel):
    """The ``data`` of a ``google.cloud.storage.object.v1.finalized`` CloudEvent (JSON API
    object resource; only the fields we use)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    bucket: str = Field(min_length=1)
    name: str = Field(min_length=1)
    generation: int = Field(ge=0)
    size: int = Field(0, ge=0)
    content_type: str = Field("", alias="contentType")

    @property
    def document(self) -> DocumentRef:
        return DocumentRef(self.bucket, self.name, self.generation)


def _summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )
