"""Who may call the worker: only Pub/Sub push, with the OIDC token it attaches.

:class:`PushVerifier` checks the ``Authorization: Bearer`` token's signature against
Google's public certificates (cached as their ``Cache-Control`` allows), its issuer,
audience and expiry, and that it was minted for the one allowed service account. It runs
before the body is read. Missing or invalid tokens get 401, a valid token for another
identity gets 403.

The Pub/Sub emulator attaches no token, so the local stack turns verification off with
``OCRPIPE_VERIFY_PUSH_AUTH=false``; it is on everywhere else, and the worker refuses to
start with it off unless it talks to emulators. ``/stats`` sits behind the same check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ocrpipe.errors import RetryableError
from ocrpipe.settings import DEFAULT_PUSH_KEYS_STALE_S, Settings
from ocrpipe.worker.single_flight import SingleFlight

logger = logging.getLogger(__name__)

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
CLOCK_SKEW_S = 10
_DEFAULT_MAX_AGE_S = 3600
MIN_REFRESH_S = 30.0
KEY_FETCH_TIMEOUT_S = 5.0
STALE_WAIT_S = 1.0  # with keys in hand, how long a request waits for their refresh
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
_MAX_AGE = re.compile(r"max-age=(\d+)")


@dataclass(frozen=True)
class Denied:
    status: int  # 401 or 403; 503 when no keys can be had to check the token
    message: str


class CertCache:
    """Google's signing certificates (``kid`` -> PEM), refetched when they expire.

    A token with an unknown key id forces a refetch (Google rotated its keys), but at most
    once per :data:`MIN_REFRESH_S`: unauthenticated callers cannot make the worker fetch
    the key set once per request.

    When the endpoint fails, the last good keys stay in use for ``stale_for_s`` past their
    expiry (valid pushes keep passing), fetches back off (1 s doubling to 60 s) instead of
    running once per request, and one fetch, in its own thread, serves every waiter. With
    no usable keys at all :meth:`get` raises :class:`RetryableError`: the push answers 503
    and Pub/Sub redelivers.
    """

    def __init__(
        self,
        url: str,
        fetch: Callable[[str], httpx.Response] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        stale_for_s: float = DEFAULT_PUSH_KEYS_STALE_S,
    ) -> None:
        self._url = url
        self._fetch = fetch or (lambda u: httpx.get(u, timeout=KEY_FETCH_TIMEOUT_S))
        self._clock = clock
        self._stale_for_s = stale_for_s
        self._refresh = SingleFlight(self._fetch_in_thread)
        self._certs: dict[str, str] = {}
        self._expires = 0.0
        self._fetched = -MIN_REFRESH_S
        self._retry_at = 0.0
        self._backoff = 0.0

    async def get(self, *, refresh: bool = False) -> dict[str, str]:
        now = self._clock()
        due = now >= self._expires or (refresh and now - self._fetched >= MIN_REFRESH_S)
        if due and (now >= self._retry_at or self._refresh.running):
            # A failed fetch is logged (and backed off) by _fetch_in_thread; a slow one goes
            # on for the next caller. Either way, what we have decides below.
            with contextlib.suppress(RetryableError, TimeoutError):
                if self._usable(now):  # keys in hand: wait briefly, then use them stale
                    await asyncio.wait_for(self._refresh.wait(), STALE_WAIT_S)
                else:
                    await self._refresh.wait()
        if self._usable(self._clock()):
            return self._certs
        raise RetryableError(
            f"no usable push-signing keys from {self._url}", reason="push_keys_unavailable"
        )

    def _usable(self, now: float) -> bool:
        return bool(self._certs) and now < self._expires + self._stale_for_s

    async def _fetch_in_thread(self) -> None:
        started = self._clock()
        try:
            response = await asyncio.to_thread(self._fetch, self._url)
            response.raise_for_status()
            certs = {str(kid): str(pem) for kid, pem in dict(response.json()).items()}
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            self._backoff = min(max(2 * self._backoff, BACKOFF_FIRST_S), BACKOFF_MAX_S)
            self._retry_at = self._clock() + self._backoff
            logger.error(
                "fetching push-signing keys from %s failed (%s: %s); %s, next try in %.0f s",
                self._url,
                type(exc).__name__,
                exc,
                "using the last good keys" if self._usable(started) else "no keys: pushes get 503",
                self._backoff,
                extra={"error_class": type(exc).__name__},
            )
            raise RetryableError(
                f"push-signing keys unavailable: {type(exc).__name__}: {exc}",
                reason="push_keys_unavailable",
            ) from exc
        match = _MAX_AGE.search(response.headers.get("cache-control", ""))
        max_age = int(match.group(1)) if match else _DEFAULT_MAX_AGE_S
        self._certs = certs
        self._fetched = started
        self._expires = started + max_age
        self._backoff = 0.0


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
            claims = await self._verified_claims(token.strip())
        except RetryableError as exc:
            return Denied(exc.push_status, f"cannot check push tokens now: {exc}")
        except Exception as exc:  # google-auth raises ValueError and its own errors
            return Denied(401, f"token rejected: {type(exc).__name__}: {str(exc)[:200]}")
        if claims.get("iss") not in self._issuers:
            return Denied(401, "token issuer is not Google")
        if claims.get("email") != self._email or not claims.get("email_verified"):
            return Denied(403, "token is not for the allowed push service account")
        return None

    async def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            return self._decode(token, await self._certs.get())
        except ValueError as exc:
            if "Certificate for key id" not in str(exc):
                raise
        # Google rotated its keys since we cached them: fetch once more.
        return self._decode(token, await self._certs.get(refresh=True))

    def _decode(self, token: str, certs: dict[str, str]) -> dict[str, Any]:
        # Verifying one RS256 signature takes well under a millisecond: no thread needed.
        from google.auth import jwt

        claims = jwt.decode(  # type: ignore[no-untyped-call]
            token, certs=certs, audience=self._audience, clock_skew_in_seconds=CLOCK_SKEW_S
        )
        return dict(claims)


def build_verifier(settings: Settings) -> PushVerifier | None:
    """The verifier, or ``None`` on the local stack. Unverified outside the emulators is a
    configuration error: the worker refuses to start."""
    if not settings.verify_push_auth:
        if not settings.uses_emulators:
            raise ValueError(
                "OCRPIPE_VERIFY_PUSH_AUTH=false is allowed only against the emulators"
                " (PUBSUB_EMULATOR_HOST or STORAGE_EMULATOR_HOST set): anyone could call this"
                " worker. Set OCRPIPE_VERIFY_PUSH_AUTH=true with OCRPIPE_PUSH_AUDIENCE and"
                " OCRPIPE_PUSH_SERVICE_ACCOUNT."
            )
        return None
    return PushVerifier(
        audience=settings.push_audience,
        service_account=settings.push_service_account,
        certs=CertCache(settings.push_certs_url, stale_for_s=settings.push_keys_stale_s),
    )
