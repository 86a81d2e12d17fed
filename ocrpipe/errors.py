"""The exceptions of ocrpipe, and what each means for delivery.

::

    OcrpipeError                 unknown trouble: 500, Pub/Sub retries, then dead-letters
    ├── RetryableError           transient: 503 (nack) once the in-request budget is spent
    │   ├── OcrUnavailable       GPU cold, refused connection, 429, 5xx, timeout
    │   ├── StorageUnavailable   GCS or Pub/Sub hiccup
    │   ├── NewerSchema          a page message of a schema this worker does not know yet:
    │   │                        retried, then dead-lettered and replayable, never dropped
    │   └── AccessDenied         GCS answered 403 (a missing grant, or one still
    │                            propagating right after a deploy): names the permission
    ├── StorageRejected          GCS or Pub/Sub answered 400 or another client error: a
    │                            bug in the request, not the input (500, retried, then
    │                            dead-lettered)
    ├── ObjectMissing            a GCS object does not exist: a normal answer the caller
    │                            handles; unexpected (500) only if it escapes
    ├── SubscriptionMissing      a Pub/Sub subscription does not exist (the CLI's dlq)
    ├── StackDown                the local stack is not running (which part, and what to do)
    ├── NotReady                 a document's result was asked for and it has none: not
    │                            finished yet, rejected, or no such document (``reason``)
    ├── RetryRefused             ``ocrpipe retry`` cannot retry a document that way; the
    │                            message says why and what to do instead
    └── PermanentError           an error record is written, then 204 (ack); never retried
        ├── BadInput             the uploaded file cannot be processed (reason code)
        ├── BadMessage           a push envelope or page message that does not parse
        │   └── RefusedMessage   a well-formed message the splitter did not write (foreign
        │                        image or bucket, page count not the manifest's, ...)
        └── OcrRejected          the OCR server refused this page for good (4xx, a
                                 repetition loop at every temperature, or a reply longer
                                 than the model's context at every temperature)

Every class carries ``push_status``: the one place that turns an outcome into a push
response is :func:`push_status_for`.
"""

from __future__ import annotations

from typing import ClassVar

from ocrpipe.usage import OcrUsage


class OcrpipeError(Exception):
    """Base class. Raised as such only for unexpected states."""

    push_status: ClassVar[int] = 500
    reason: str = "internal"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class RetryableError(OcrpipeError):
    push_status = 503
    reason = "retryable"


class OcrUnavailable(RetryableError):
    """``usage``: what the delivery's OCR requests cost before it gave up (billed too)."""

    reason = "ocr_unavailable"
    usage: OcrUsage | None = None


class StorageUnavailable(RetryableError):
    reason = "storage_unavailable"


class NewerSchema(RetryableError):
    reason = "newer_schema_version"


class AccessDenied(RetryableError):
    """GCS refused a call (403). Retryable: IAM changes take minutes to propagate, so right
    after a deploy a grant may not be visible yet; a grant that is really missing ends in
    the dead-letter topic with this message in the worker's log."""

    reason = "access_denied"

    def __init__(self, message: str, *, permission: str = "", resource: str = "") -> None:
        super().__init__(message)
        self.permission = permission
        self.resource = resource


class StorageRejected(OcrpipeError):
    reason = "storage_rejected"


class ObjectMissing(OcrpipeError):
    """The object does not exist (a normal answer, not a failure)."""

    reason = "object_missing"


class SubscriptionMissing(OcrpipeError):
    reason = "subscription_missing"


class StackDown(OcrpipeError):
    """The local stack is not running, or one of its emulators does not answer."""

    reason = "stack_down"


class NotReady(OcrpipeError):
    """A document has no such result: ``reason`` is ``not_finished``, ``rejected`` or
    ``no_such_document``; the message says what to do."""

    reason = "not_ready"


class RetryRefused(OcrpipeError):
    """This document cannot be retried this way; the message says why and what to do."""

    reason = "retry_refused"


def translate_google_error(exc: Exception, where: str) -> OcrpipeError:
    """One of ours for a google-api-core error of Pub/Sub (GCS has its own, with the
    permission parsed from the answer, in :mod:`ocrpipe.storage`)."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.PermissionDenied | gexc.Forbidden | gexc.Unauthenticated):
        return AccessDenied(f"Pub/Sub refused access to {where}: {exc}", resource=where)
    if isinstance(exc, gexc.ClientError) and not isinstance(exc, gexc.TooManyRequests):
        return StorageRejected(f"Pub/Sub rejected the request for {where}: {exc}")
    return StorageUnavailable(f"Pub/Sub trouble at {where}: {exc}")


class PermanentError(OcrpipeError):
    push_status = 204
    reason = "permanent"


class BadInput(PermanentError):
    reason = "bad_input"


class BadMessage(PermanentError):
    reason = "bad_message"


class RefusedMessage(BadMessage):
    reason = "refused_message"


class OcrRejected(PermanentError):
    """``usage``: what the attempts that led to the rejection cost (the bill counts it)."""

    reason = "ocr_rejected"

    def __init__(
        self, message: str, *, reason: str | None = None, usage: OcrUsage | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.usage = usage


def push_status_for(exc: BaseException | None) -> int:
    """The push response for an outcome: 204 acks, anything else nacks.

    Done (``None``) and permanent errors ack: the error record is already written and a
    retry could only burn GPU time. Retryable errors answer 503 so Pub/Sub backs off.
    Anything unknown answers 500: retried, then dead-lettered, with its traceback logged.
    """
    if exc is None:
        return 204
    if isinstance(exc, OcrpipeError):
        return exc.push_status
    return 500
