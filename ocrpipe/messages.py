"""Pydantic models for what crosses a trust boundary: the page message on the pages topic,
the Pub/Sub push envelope the worker receives, and the GCS object data inside a finalize
CloudEvent. Inside the services these become frozen dataclasses (:class:`DocumentRef`).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ocrpipe.errors import BadMessage
from ocrpipe.naming import DocumentRef

SCHEMA_VERSION = 1


class PageMessage(BaseModel):
    """One page to OCR. Published by the splitter, consumed by the worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    doc_id: str = Field(min_length=1, max_length=64)
    source_bucket: str = Field(min_length=1)
    source_name: str = Field(min_length=1)
    source_generation: int = Field(ge=0)
    page: int = Field(ge=1, description="1-based page number.")
    page_count: int = Field(ge=1)
    image_uri: str = Field(pattern=r"^gs://[^/]+/.+")
    image_mime: Literal["image/png", "image/jpeg"]

    @model_validator(mode="after")
    def _consistent(self) -> PageMessage:
        if self.page > self.page_count:
            raise ValueError(f"page {self.page} is beyond page_count {self.page_count}")
        if self.doc_id != self.document.doc_id:
            raise ValueError("doc_id does not match source bucket, name and generation")
        return self

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
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, data: bytes) -> PageMessage:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise BadMessage(f"page message is not valid: {_summary(exc)}") from exc


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
