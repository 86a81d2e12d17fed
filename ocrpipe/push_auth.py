"""Who may call the worker: only Pub/Sub push, with the OIDC token it attaches.

:class:`PushVerifier` checks the ``Authorization: Bearer`` token's signature against
Google's public certificates (cached as their ``Cache-Control`` allows), its issuer,
audience and expiry, and that it was minted for the one allowed service account. It runs
before the body is read. Missing or invalid tokens get 401, a valid token for another
identity gets 403.

The Pub/Sub emulator attaches no token, so the local stack turns verification off with
``OCRPIPE_VERIFY_PUSH_AUTH=false``; it is on everywhere else.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from anyio import to_thread

from ocrpipe.settings import Settings

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
CLOCK_SKEW_S = 10
_DEFAULT_MAX_AGE_S = 3600
MIN_REFRESH_S = 30.0
_MAX_AGE = re.compile(r"max-age=(\d+)")


@dataclass(frozen=True)
class Denied:
    status: int  # 401 or 403
    message: str


class CertCache:
    """Google's signing certificates (``kid`` -> PEM), refetched when they expire.

    A token with an unknown key id forces a refetch (Google rotated its keys), but at most
    once per :data:`MIN_REFRESH_S`: unauthenticated callers cannot make the worker fetch
    the key set once per request.
    """

    def __init__(
        self,
        url: str,
        fetch: Callable[[str], httpx.Response] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._fetch = fetch or (lambda u: httpx.get(u, timeout=10))
        self._clock = clock
        self._lock = threading.Lock()
        self._certs: dict[str, str] = {}
        self._expires = 0.0
        self._fetched = -MIN_REFRESH_S

    def get(self, *, refresh: bool = False) -> dict[str, str]:
        with self._lock:
            now = self._clock()
            if now >= self._expires or (refresh and now - self._fetched >= MIN_REFRESH_S):
                response = self._fetch(self._url)
                response.raise_for_status()
                self._certs = dict(response.json())
                match = _MAX_AGE.search(response.headers.get("cache-control", ""))
                max_age = int(match.group(1)) if match else _DEFAULT_MAX_AGE_S
                self._fetched = now
                self._expires = now + max_age
            return self._certs


class PushVerifier:
    def __init__(
        self,
        *,
        audience: str,
        service_account: str,
        certs: CertCache,
        issuers: frozenset[str] = GOOGLE_ISSUERS,
    ) -> None:
        if not audience or not service_account:
            raise ValueError(
                "push verification needs OCRPIPE_PUSH_AUDIENCE and OCRPIPE_PUSH_SERVICE_ACCOUNT"
                " (or OCRPIPE_VERIFY_PUSH_AUTH=false on the local stack)"
            )
        self._audience = audience
        self._email = service_account
        self._certs = certs
        self._issuers = issuers

    async def check(self, headers: Mapping[str, str]) -> Denied | None:
        header = headers.get("authorization", "")
        if not header:
            return Denied(401, "no Authorization header")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Denied(401, "Authorization is not a bearer token")
        try:
            claims = await to_thread.run_sync(self._decode, token.strip())
        except Exception as exc:  # google-auth raises ValueError and its own errors
            return Denied(401, f"token rejected: {type(exc).__name__}: {str(exc)[:200]}")
        if claims.get("iss") not in self._issuers:
            return Denied(401, "token issuer is not Google")
        if claims.get("email") != self._email or not claims.get("email_verified"):
            return Denied(403, "token is not for the allowed push service account")
        return None

    def _decode(self, token: str) -> dict[str, Any]:
        from google.auth import jwt

        try:
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                token,
                certs=self._certs.get(),
                audience=self._audience,
                clock_skew_in_seconds=CLOCK_SKEW_S,
            )
        except ValueError as exc:
            if "Certificate for key id" not in str(exc):
                raise
            # Google rotated its keys since we cached them: fetch once more.
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                token,
                certs=self._certs.get(refresh=True),
                audience=self._audience,
                clock_skew_in_seconds=CLOCK_SKEW_S,
            )
        return dict(claims)


def build_verifier(settings: Settings) -> PushVerifier | None:
    if not settings.verify_push_auth:
        return None
    return PushVerifier(
        audience=settings.push_audience,
        service_account=settings.push_service_account,
        certs=CertCache(settings.push_certs_url),
    )
