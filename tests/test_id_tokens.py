"""ID tokens to the GPU service: one token reused until shortly before it expires, none for
an OCR server on loopback."""

from __future__ import annotations

import base64

import httpx
import pytest

from ocrpipe.id_tokens import REFRESH_BEFORE_EXPIRY_S, IdTokenAuth, auth_for
from ocrpipe.ocr_client import OcrClient, OcrParams
from ocrpipe.settings import Settings
from tests.fakes import ScriptedOcrServer, completion
from tests.tokens import SigningKey

KEY = SigningKey("gpu-key")
GPU_URL = "https://ocr-gpu-abc-ew.a.run.app"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Metadata:
    """The metadata server: a fresh one-hour token for the asked audience on each fetch."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.audiences: list[str] = []

    def __call__(self, audience: str) -> str:
        self.audiences.append(audience)
        now = int(self.clock.now)
        return KEY.token(aud=audience, iat=now, exp=now + 3600, n=len(self.audiences))


def test_the_token_is_reused_until_shortly_before_it_expires() -> None:
    clock = Clock()
    metadata = Metadata(clock)
    auth = IdTokenAuth(GPU_URL, fetch=metadata, clock=clock)
    first = auth.headers()
    assert first["Authorization"].startswith("Bearer ")
    clock.now += 3600 - REFRESH_BEFORE_EXPIRY_S - 1
    assert auth.headers() == first
    assert (auth.fetches, metadata.audiences) == (1, [GPU_URL])
    clock.now += 2
    assert auth.headers() != first
    assert auth.fetches == 2


async def test_the_ocr_client_sends_the_token_and_fetches_it_once() -> None:
    clock = Clock()
    metadata = Metadata(clock)
    server = ScriptedOcrServer([completion("text")])
    http = httpx.AsyncClient(transport=httpx.MockTransport(server), base_url=GPU_URL)
    auth = IdTokenAuth(GPU_URL, fetch=metadata, clock=clock)
    client = OcrClient(http, OcrParams(model="m"), auth=auth)
    image = base64.b64decode("iVBORw0KGgo=")
    for _ in range(3):
        await client.ocr_page(image, "image/png", deadline=float("inf"))
    await client.aclose()
    tokens = {headers["authorization"] for headers in server.headers}
    assert len(tokens) == 1 and tokens.pop().startswith("Bearer ey")
    assert metadata.audiences == [GPU_URL]


@pytest.mark.parametrize(
    ("url", "mode", "expected_audience"),
    [
        ("http://127.0.0.1:8000", "auto", None),
        ("http://localhost:8000/", "auto", None),
        (GPU_URL + "/", "auto", GPU_URL),
        (GPU_URL, "none", None),
        ("http://127.0.0.1:8000", "id-token", "http://127.0.0.1:8000"),
    ],
)
def test_auth_for(url: str, mode: str, expected_audience: str | None) -> None:
    auth = auth_for(Settings(ocr_url=url, ocr_auth=mode))  # type: ignore[arg-type]
    if expected_audience is None:
        assert auth is None
    else:
        assert auth is not None and auth.audience == expected_audience
