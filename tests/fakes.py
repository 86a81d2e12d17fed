"""Test doubles that implement the same interfaces as the real adapters."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectInfo
from ocrpipe.testing.clock import FakeClock
from ocrpipe.testing.memory import MemoryStore
from ocrpipe.worker.ocr_client import OcrClient, OcrParams


def completion(
    content: str, finish_reason: str = "stop", *, prompt_tokens: int | None = None
) -> httpx.Response:
    """A non-streamed chat completion; with ``prompt_tokens``, its usage too."""
    body: dict[str, object] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
    }
    if prompt_tokens is not None:
        tokens = len(content.split())
        body["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": prompt_tokens + tokens,
        }
    return httpx.Response(200, json=body)


def request_image(body: Mapping[str, Any]) -> bytes:
    """The page image an OCR request carries (its ``data:`` URL decoded)."""
    url = str(body["messages"][0]["content"][0]["image_url"]["url"])
    return base64.b64decode(url.split(",", 1)[1])


def echo_image(body: Mapping[str, Any]) -> httpx.Response:
    """Answers an OCR request with its image's bytes as the page's text (the images of
    :func:`~ocrpipe.testing.pushes.ready_document` read ``image 1``, ``image 2``, ...)."""
    return completion(request_image(body).decode())


@dataclass
class ScriptedOcrServer:
    """Answers requests from a script of responses (or exceptions), then repeats the last.

    Records every request body, so tests can check what was sent.
    """

    script: list[httpx.Response | Exception | Callable[[dict[str, object]], httpx.Response]]
    requests: list[dict[str, object]] = field(default_factory=list)
    headers: list[httpx.Headers] = field(default_factory=list)
    # GET /v1/models answers the model with this max_model_len (None: the connection is
    # refused, as a server that is not up yet).
    max_model_len: int | None = 16384
    gets: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.gets.append(request.url.path)
            if self.max_model_len is None:
                raise httpx.ConnectError("[Errno 111] Connection refused")
            card = {"id": "lightonai/LightOnOCR-2-1B", "object": "model"}
            card["max_model_len"] = self.max_model_len  # type: ignore[assignment]
            return httpx.Response(200, json={"object": "list", "data": [card]})
        body = json.loads(request.content)
        self.requests.append(body)
        self.headers.append(request.headers)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(step, Exception):
            raise step
        if callable(step) and not isinstance(step, httpx.Response):
            return step(body)
        return step

    def client(self, clock: FakeClock | None = None, **params: object) -> OcrClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self), base_url="http://ocr")
        ocr_params = OcrParams.from_settings(
            Settings(), **{"model": "lightonai/LightOnOCR-2-1B", **params}
        )
        if clock is None:
            return OcrClient(http, ocr_params)
        return OcrClient(http, ocr_params, clock=clock, sleep=clock.sleep)


# The splitter's contract test puts its fakes here; tests/splitter_source.py reads them.
SPLITTER_SERVICES: list[tuple[object, ...]] = []


class RecordingStore(MemoryStore):
    """A :class:`MemoryStore` that also records every listing and every read (bucket, name),
    so tests can check what a service looked at, not only what it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.listings: list[tuple[str, str]] = []
        self.reads: list[tuple[str, str]] = []

    def list(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        self.listings.append((bucket, prefix))
        return super().list(bucket, prefix)

    def read(self, bucket: str, name: str) -> bytes:
        self.reads.append((bucket, name))
        return super().read(bucket, name)
