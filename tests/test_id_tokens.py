"""ID tokens to the GPU service: one token reused until shortly before it expires, none for
an OCR server on loopback."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from google.auth.exceptions import TransportError

from ocrpipe.errors import OcrUnavailable
from ocrpipe.settings import Settings
from ocrpipe.testing.clock import FakeClock
from ocrpipe.worker.id_tokens import REFRESH_BEFORE_EXPIRY_S, IdTokenAuth, auth_for
from ocrpipe.worker.ocr_client import OcrClient, OcrParams
from tests.fakes import ScriptedOcrServer, completion
from tests.tokens import SigningKey

KEY = SigningKey("gpu-key")
GPU_URL = "https://ocr-gpu-abc-ew.a.run.app"


def wall_clock() -> FakeClock:
    """The token's clock reads Unix time: tokens carry it in ``iat`` and ``exp``."""
    return FakeClock(1_800_000_000.0)


HOLD_S = 30.0  # how long a held fetch waits for the test to release it before it answers


class Metadata:
    """The metadata server: a fresh one-hour token for the asked audience on each fetch, or an
    error while ``failures`` lasts. After :meth:`hold`, a fetch waits (:attr:`holding` is set
    meanwhile) until :meth:`release`, or at most :data:`HOLD_S`: a slow metadata server whose
    slowness lasts exactly as long as the test needs."""

    def __init__(self, clock: FakeClock, *, failures: int = 0) -> None:
        self.clock = clock
        self.failures = failures
        self.audiences: list[str] = []
        self.threads: set[str] = set()
        self.answered = 0
        self.holding = threading.Event()
        self._held = False
        self._released = threading.Event()

    def hold(self) -> None:
        self._held = True
        self._released.clear()

    def release(self) -> None:
        self._held = False
        self._released.set()

    def __call__(self, audience: str) -> str:
        self.audiences.append(audience)
        self.threads.add(threading.current_thread().name)
        if self._held:
            self.holding.set()
            self._released.wait(HOLD_S)
            self.holding.clear()
        self.answered += 1
        if self.failures:
            self.failures -= 1
            raise TransportError("metadata server unreachable")  # type: ignore[no-untyped-call]
        now = int(self.clock.now)
        return KEY.token(aud=audience, iat=now, exp=now + 3600, n=len(self.audiences))


async def test_the_token_is_reused_until_shortly_before_it_expires() -> None:
    clock = wall_clock()
    metadata = Metadata(clock)
    auth = IdTokenAuth(GPU_URL, fetch=metadata, clock=clock)
    first = await auth.headers()
    assert first["Authorization"].startswith("Bearer ")
    clock.now += 3600 - REFRESH_BEFORE_EXPIRY_S - 1
    assert await auth.headers() == first
    assert (auth.fetches, metadata.audiences) == (1, [GPU_URL])
    clock.now += 2
    # Refreshed ahead of expiry: the still-valid token is served while one refresh runs.
    assert await auth.headers() == first
    await auth.refreshed()
    assert await auth.headers() != first
    assert auth.fetches == 2


async def test_the_ocr_client_sends_the_token_and_fetches_it_once() -> None:
    clock = wall_clock()
    metadata = Metadata(clock)
    server = ScriptedOcrServer([completion("text")])
    http = httpx.AsyncClient(transport=httpx.MockTransport(server), base_url=GPU_URL)
    auth = IdTokenAuth(GPU_URL, fetch=metadata, clock=clock)
    client = OcrClient(http, OcrParams.from_settings(Settings(), model="m"), auth=auth)
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
    auth = auth_for(Settings(ocr_url=url, ocr_auth=mode))
    if expected_audience is None:
        assert auth is None
    else:
        assert auth is not None and auth.audience == expected_audience


IMAGE = base64.b64decode("iVBORw0KGgo=")


def gpu_client(
    auth: IdTokenAuth,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[OcrClient, ScriptedOcrServer]:
    server = ScriptedOcrServer([completion("text")])
    http = httpx.AsyncClient(transport=httpx.MockTransport(server), base_url=GPU_URL)
    params = OcrParams.from_settings(Settings(), model="m")
    return OcrClient(http, params, auth=auth, clock=clock, sleep=sleep), server


async def test_a_slow_token_fetch_does_not_stall_the_instance_and_runs_once() -> None:
    """A 2.1 s metadata-server refresh used to block every request on the instance: the fetch
    ran on the event loop. Here the fetch is held until the event loop, still running, sees
    it under way; a fetch on the loop would hold the loop itself until the hold ran out."""
    clock = wall_clock()
    metadata = Metadata(clock)
    client, server = gpu_client(IdTokenAuth(GPU_URL, fetch=metadata, clock=clock))
    metadata.hold()
    pages = asyncio.gather(
        *(client.ocr_page(IMAGE, "image/png", deadline=time.monotonic() + 600) for _ in range(10))
    )
    while not metadata.holding.is_set() and not pages.done():
        await asyncio.sleep(0.01)
    fetch_seen_from_the_loop = metadata.holding.is_set()
    waiting = not pages.done()
    metadata.release()
    results = await pages
    assert fetch_seen_from_the_loop, "the event loop was held for the whole token fetch"
    assert waiting  # the pages need the token: they waited for it, on the one fetch
    assert [r.markdown for r in results] == ["text"] * 10
    assert metadata.audiences == [GPU_URL]  # one fetch for ten waiters
    assert threading.main_thread().name not in metadata.threads
    assert len({h["authorization"] for h in server.headers}) == 1


async def test_a_token_near_expiry_is_refreshed_ahead_while_requests_go_on() -> None:
    """The refresh is held while ten requests go on with the still-valid token: they must all
    be done before it answers (a request that waited for it would wait for the hold)."""
    clock = wall_clock()
    metadata = Metadata(clock)
    auth = IdTokenAuth(GPU_URL, fetch=metadata, clock=clock)
    client, server = gpu_client(auth)
    await client.ocr_page(IMAGE, "image/png", deadline=time.monotonic() + 30)
    clock.now += 3600 - REFRESH_BEFORE_EXPIRY_S + 1  # near expiry, still valid
    metadata.hold()
    await asyncio.gather(
        *(client.ocr_page(IMAGE, "image/png", deadline=time.monotonic() + 600) for _ in range(10))
    )
    refresh_answered_meanwhile = metadata.answered > 1
    metadata.release()
    assert not refresh_answered_meanwhile, "the requests waited for the refresh"
    await auth.refreshed()
    await client.ocr_page(IMAGE, "image/png", deadline=time.monotonic() + 30)
    tokens = [h["authorization"] for h in server.headers]
    assert len(set(tokens[:11])) == 1 and tokens[11] != tokens[0]
    assert len(metadata.audiences) == 2  # one refresh for the ten requests


async def test_a_failed_token_fetch_is_retried_within_the_budget() -> None:
    clock = wall_clock()
    metadata = Metadata(clock, failures=1)
    budget = FakeClock()
    client, server = gpu_client(
        IdTokenAuth(GPU_URL, fetch=metadata, clock=clock), clock=budget, sleep=budget.sleep
    )
    result = await client.ocr_page(IMAGE, "image/png", deadline=budget.now + 60)
    assert result.markdown == "text" and len(budget.sleeps) == 1
    assert len(metadata.audiences) == 2 and len(server.requests) == 1


async def test_a_token_fetch_that_keeps_failing_nacks_the_delivery() -> None:
    clock = wall_clock()
    metadata = Metadata(clock, failures=10**6)
    budget = FakeClock()
    client, server = gpu_client(
        IdTokenAuth(GPU_URL, fetch=metadata, clock=clock), clock=budget, sleep=budget.sleep
    )
    with pytest.raises(OcrUnavailable) as info:
        await client.ocr_page(IMAGE, "image/png", deadline=budget.now + 30)
    assert info.value.push_status == 503 and "id_token" in info.value.reason
    assert server.requests == [] and len(metadata.audiences) >= 2
