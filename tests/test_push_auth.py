"""Who may call the worker: only Pub/Sub push with a Google-signed OIDC token for the
worker's URL, minted for the one push service account. Tested against the real worker app,
with tokens signed here and the certificate set served by a real local HTTP server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from ocr_worker.app import create_app
from ocrpipe.settings import Settings
from ocrpipe.testing.clock import FakeClock
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pushes import push_envelope, ready_document
from ocrpipe.worker.push_auth import CertCache, PushVerifier, build_verifier
from tests.fakes import ScriptedOcrServer, completion
from tests.tokens import AUDIENCE, PUSH_ACCOUNT, KeySet, SigningKey


class CertServer:
    """Serves a key set as Google does, counting fetches."""

    def __init__(self, keys: KeySet, max_age: int = 3600) -> None:
        self.keys = keys
        self.fetches = 0
        self.failing = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.fetches += 1
                if server.failing:
                    self.send_error(500)
                    return
                body = json.dumps(server.keys.certs()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", f"public, max-age={max_age}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/oauth2/v1/certs"
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


KEYS = KeySet()
NOW = int(time.time())
OTHER_SIGNER = SigningKey("key-1")  # the same key id as KEYS' key, another private key
UNKNOWN_KEY = SigningKey("key-unknown")


def token(key: SigningKey | None = None, **claims: Any) -> str:
    return (key or KEYS.keys[0]).token(**claims)


@pytest.fixture
def certs() -> Iterator[CertServer]:
    server = CertServer(KEYS)
    yield server
    server.close()


def settings_for(certs: CertServer) -> Settings:
    return Settings(
        input_bucket="in",
        work_bucket="work",
        output_bucket="out",
        ocr_budget_s=5,
        verify_push_auth=True,
        push_audience=AUDIENCE,
        push_service_account=PUSH_ACCOUNT,
        push_certs_url=certs.url,
    )


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def ocr() -> ScriptedOcrServer:
    return ScriptedOcrServer([completion("# page text")])


@pytest.fixture
def client(certs: CertServer, store: MemoryStore, ocr: ScriptedOcrServer) -> Iterator[TestClient]:
    app = create_app(
        settings_for(certs), store=store, ocr=ocr.client(), publisher=MemoryPublisher()
    )
    with TestClient(app) as test_client:
        yield test_client


def page_envelope(store: MemoryStore) -> dict[str, Any]:
    """A push of the one page of a document stored as the splitter leaves it."""
    _, (message,) = ready_document(store, 1, name="a.pdf", image=lambda _: b"png bytes")
    return push_envelope(message)


def outputs(store: MemoryStore) -> list[str]:
    """What the worker wrote (the manifest is the splitter's, from page_envelope)."""
    return sorted(n for n in store.names("out") if not n.endswith("/manifest.json"))


def test_a_valid_push_token_is_let_through(
    client: TestClient, store: MemoryStore, certs: CertServer
) -> None:
    body = page_envelope(store)
    headers = {"Authorization": f"Bearer {token()}"}
    assert client.post("/", json=body, headers=headers).status_code == 204
    assert any(name.endswith("pages/00001.md") for name in outputs(store))
    assert client.post("/", json=body, headers=headers).status_code == 204
    assert certs.fetches == 1  # the key set is cached as its Cache-Control allows


def test_a_valid_token_with_a_bad_body_reaches_the_body_check(
    client: TestClient, store: MemoryStore
) -> None:
    headers = {"Authorization": f"Bearer {token()}"}
    assert client.post("/", content=b"not json", headers=headers).status_code == 204
    assert [n for n in outputs(store) if n.startswith("_invalid-messages/")]


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        ("Basic dXNlcjpwYXNz", 401),
        ("Bearer not-a-jwt", 401),
        ("Bearer a.b.c", 401),
        ("token:expired", 401),
        ("token:wrong-audience", 401),
        ("token:wrong-issuer", 401),
        ("token:other-signer", 401),
        ("token:unknown-key", 401),
        ("token:wrong-email", 403),
        ("token:email-not-verified", 403),
        ("token:no-email", 403),
    ],
)
def test_refused_requests_are_answered_before_the_body_is_read(
    certs: CertServer,
    store: MemoryStore,
    ocr: ScriptedOcrServer,
    authorization: str | None,
    status: int,
) -> None:
    tokens = {
        "token:expired": lambda: token(iat=NOW - 7200, exp=NOW - 3600),
        "token:wrong-audience": lambda: token(aud="https://someone-else.a.run.app/"),
        "token:wrong-issuer": lambda: token(iss="https://evil.example.com"),
        "token:other-signer": lambda: token(OTHER_SIGNER),
        "token:unknown-key": lambda: token(UNKNOWN_KEY),
        "token:wrong-email": lambda: token(email="intruder@my-project.iam.gserviceaccount.com"),
        "token:email-not-verified": lambda: token(email_verified=False),
        "token:no-email": lambda: token(email=None, email_verified=None),
    }
    headers = {}
    if authorization is not None:
        headers["Authorization"] = (
            f"Bearer {tokens[authorization]()}" if authorization in tokens else authorization
        )
    app = create_app(
        settings_for(certs), store=store, ocr=ocr.client(), publisher=MemoryPublisher()
    )
    with TestClient(app) as test_client:
        # A body that, once read, would leave a trace in _invalid-messages/.
        reply = test_client.post("/", content=b"not json", headers=headers)
        assert reply.status_code == status
        # And a good page: refused just the same, never OCR'd.
        reply = test_client.post("/", json=page_envelope(store), headers=headers)
        assert reply.status_code == status
    assert [n for n in outputs(store) if not n.startswith("pages/")] == []
    assert ocr.requests == []


def test_verification_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.model_fields["verify_push_auth"].default is True
    monkeypatch.delenv("OCRPIPE_VERIFY_PUSH_AUTH", raising=False)
    assert Settings().verify_push_auth is True
    monkeypatch.setenv("OCRPIPE_VERIFY_PUSH_AUTH", "false")
    assert Settings().verify_push_auth is False
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")  # the local stack
    assert build_verifier(Settings()) is None


@pytest.mark.parametrize("emulator", ["PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"])
def test_the_worker_refuses_to_start_unverified_unless_it_talks_to_emulators(
    monkeypatch: pytest.MonkeyPatch, store: MemoryStore, ocr: ScriptedOcrServer, emulator: str
) -> None:
    """``OCRPIPE_VERIFY_PUSH_AUTH=false`` in production would let anyone call the worker."""
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    settings = Settings(verify_push_auth=False)
    with pytest.raises(ValueError, match="OCRPIPE_VERIFY_PUSH_AUTH"):  # noqa: SIM117
        with TestClient(
            create_app(settings, store=store, ocr=ocr.client(), publisher=MemoryPublisher())
        ):
            pass
    monkeypatch.setenv(emulator, "127.0.0.1:8085")
    with TestClient(
        create_app(
            Settings(verify_push_auth=False),
            store=store,
            ocr=ocr.client(),
            publisher=MemoryPublisher(),
        )
    ) as local:
        assert local.get("/stats").status_code == 200  # the local stack: no tokens at all


def test_stats_sits_behind_the_same_check_as_pushes(client: TestClient) -> None:
    assert client.get("/stats").status_code == 401
    bad = {"Authorization": f"Bearer {token(email='intruder@x.iam.gserviceaccount.com')}"}
    assert client.get("/stats", headers=bad).status_code == 403
    reply = client.get("/stats", headers={"Authorization": f"Bearer {token()}"})
    assert reply.status_code == 200 and "requests" in reply.json()


@pytest.mark.parametrize(
    "missing",
    [
        {"push_audience": ""},
        {"push_service_account": ""},
        {"push_audience": "", "push_service_account": ""},
    ],
)
def test_the_worker_refuses_to_start_verifying_without_audience_or_account(
    missing: dict[str, str], store: MemoryStore, ocr: ScriptedOcrServer
) -> None:
    settings = Settings(
        verify_push_auth=True,
        push_audience=AUDIENCE,
        push_service_account=PUSH_ACCOUNT,
    ).model_copy(update=missing)
    with pytest.raises(ValueError, match="OCRPIPE_PUSH_AUDIENCE"):  # noqa: SIM117
        with TestClient(
            create_app(settings, store=store, ocr=ocr.client(), publisher=MemoryPublisher())
        ):
            pass


# --- the certificate cache ------------------------------------------------------------------


def counting_fetch(keys: KeySet, max_age: int) -> tuple[list[str], Any]:
    calls: list[str] = []

    def fetch(url: str) -> httpx.Response:
        calls.append(url)
        return httpx.Response(
            200,
            json=keys.certs(),
            headers={"cache-control": f"public, max-age={max_age}, must-revalidate"},
            request=httpx.Request("GET", url),
        )

    return calls, fetch


async def test_certificates_are_cached_for_max_age_then_fetched_again() -> None:
    keys = KeySet()
    calls, fetch = counting_fetch(keys, max_age=300)
    clock = FakeClock()
    cache = CertCache("https://certs", fetch=fetch, clock=clock)
    verifier = PushVerifier(audience=AUDIENCE, service_account=PUSH_ACCOUNT, certs=cache)
    headers = {"authorization": f"Bearer {keys.keys[0].token()}"}
    assert await verifier.check(headers) is None
    clock.now += 299
    assert await verifier.check(headers) is None
    assert len(calls) == 1
    clock.now += 2
    assert await verifier.check(headers) is None
    assert len(calls) == 2


async def test_a_rotated_key_is_picked_up_with_one_extra_fetch() -> None:
    keys = KeySet()
    calls, fetch = counting_fetch(keys, max_age=3600)
    clock = FakeClock()
    cache = CertCache("https://certs", fetch=fetch, clock=clock)
    verifier = PushVerifier(audience=AUDIENCE, service_account=PUSH_ACCOUNT, certs=cache)
    assert await verifier.check({"authorization": f"Bearer {keys.keys[0].token()}"}) is None
    keys.keys.append(SigningKey("key-2"))  # Google published a new key
    clock.now += 60
    assert await verifier.check({"authorization": f"Bearer {keys.keys[1].token()}"}) is None
    assert len(calls) == 2
    for _ in range(5):  # unknown key ids cannot make us fetch once per request
        denied = await verifier.check({"authorization": f"Bearer {UNKNOWN_KEY.token()}"})
        assert denied is not None and denied.status == 401
    assert len(calls) == 2


# --- when Google's key endpoint fails ---------------------------------------------------------


class FlakyKeyEndpoint:
    """Serves ``keys`` until ``failing`` is set, then refuses connections. After :meth:`hold`
    a call waits (:attr:`holding` is set meanwhile) until :meth:`release`: a slow endpoint
    that stays slow exactly as long as the test needs."""

    def __init__(self, keys: KeySet, *, max_age: int = 300) -> None:
        self.keys = keys
        self.max_age = max_age
        self.failing = False
        self.calls = 0
        self.holding = threading.Event()
        self._released = threading.Event()
        self._released.set()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def __call__(self, url: str) -> httpx.Response:
        self.calls += 1
        if not self._released.is_set():
            self.holding.set()
            self._released.wait(30)
            self.holding.clear()
        if self.failing:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(
            200,
            json=self.keys.certs(),
            headers={"cache-control": f"public, max-age={self.max_age}"},
            request=httpx.Request("GET", url),
        )


async def test_valid_pushes_pass_with_the_last_good_keys_while_the_endpoint_fails() -> None:
    keys = KeySet()
    endpoint = FlakyKeyEndpoint(keys, max_age=300)
    clock = FakeClock()
    cache = CertCache("https://certs", fetch=endpoint, clock=clock)
    verifier = PushVerifier(audience=AUDIENCE, service_account=PUSH_ACCOUNT, certs=cache)
    headers = {"authorization": f"Bearer {keys.keys[0].token()}"}
    assert await verifier.check(headers) is None
    endpoint.failing = True
    clock.now += 301  # the cached keys expired just as the endpoint went down
    assert await verifier.check(headers) is None
    assert endpoint.calls == 2
    for _ in range(20):  # backing off: no refetch per request
        assert await verifier.check(headers) is None
    assert endpoint.calls == 2
    clock.now += 120
    assert await verifier.check(headers) is None
    assert endpoint.calls == 3  # tried again after the backoff
    endpoint.failing = False
    clock.now += 120
    assert await verifier.check(headers) is None
    assert endpoint.calls == 4
    clock.now += 200
    assert await verifier.check(headers) is None
    assert endpoint.calls == 4  # fresh again: cached for max-age


async def test_stale_keys_are_kept_only_for_a_bounded_time_then_pushes_get_503() -> None:
    keys = KeySet()
    endpoint = FlakyKeyEndpoint(keys, max_age=300)
    clock = FakeClock()
    cache = CertCache("https://certs", fetch=endpoint, clock=clock, stale_for_s=600)
    verifier = PushVerifier(audience=AUDIENCE, service_account=PUSH_ACCOUNT, certs=cache)
    headers = {"authorization": f"Bearer {keys.keys[0].token()}"}
    assert await verifier.check(headers) is None
    endpoint.failing = True
    clock.now += 300 + 599
    assert await verifier.check(headers) is None
    clock.now += 2
    denied = await verifier.check(headers)
    assert denied is not None and denied.status == 503


async def test_one_key_fetch_serves_many_concurrent_requests_and_none_at_all_is_503() -> None:
    """Every request used to refetch, one at a time, and answered 401 to valid pushes. Ten
    requests arrive while one slow fetch (held) is under way: all ten wait for that fetch."""
    keys = KeySet()
    endpoint = FlakyKeyEndpoint(keys)
    endpoint.failing = True
    clock = FakeClock()
    cache = CertCache("https://certs", fetch=endpoint, clock=clock)
    verifier = PushVerifier(audience=AUDIENCE, service_account=PUSH_ACCOUNT, certs=cache)
    headers = {"authorization": f"Bearer {keys.keys[0].token()}"}
    endpoint.hold()
    checks = asyncio.gather(*(verifier.check(headers) for _ in range(10)))
    await asyncio.to_thread(endpoint.holding.wait, 30)
    calls_while_held = endpoint.calls
    endpoint.release()
    answers = await checks
    assert calls_while_held == 1  # ten requests, one fetch under way
    assert [a.status if a else 204 for a in answers] == [503] * 10  # Pub/Sub redelivers
    assert endpoint.calls == 1
    endpoint.failing = False
    answers = await asyncio.gather(*(verifier.check(headers) for _ in range(10)))
    assert endpoint.calls == 1  # backing off after the failure
    clock.advance(1.1)  # past the first backoff (1 s)
    answers = await asyncio.gather(*(verifier.check(headers) for _ in range(10)))
    assert answers == [None] * 10 and endpoint.calls == 2


def test_the_worker_answers_503_to_a_valid_push_when_no_keys_can_be_had(
    certs: CertServer, store: MemoryStore, ocr: ScriptedOcrServer
) -> None:
    certs.failing = True
    app = create_app(
        settings_for(certs), store=store, ocr=ocr.client(), publisher=MemoryPublisher()
    )
    with TestClient(app) as test_client:
        reply = test_client.post(
            "/", json=page_envelope(store), headers={"Authorization": f"Bearer {token()}"}
        )
    assert reply.status_code == 503
    assert ocr.requests == [] and outputs(store) == []
