"""Google ID tokens for calling the GPU Cloud Run service (which allows only the worker).

One token is fetched for the service URL (the audience) and reused: not one fetch per page.
On Cloud Run the token comes from the metadata server, with a blocking call that has taken
over 2 s, so:

* the fetch runs in a thread, never on the event loop;
* one fetch serves every waiter (:class:`~ocrpipe.worker.single_flight.SingleFlight`);
* it starts :data:`REFRESH_BEFORE_EXPIRY_S` before expiry in the background, while the
  still-valid token goes on being sent; only a token closer than :data:`MIN_VALIDITY_S` to
  expiry (or none yet) makes requests wait;
* a failed fetch raises :class:`~ocrpipe.errors.OcrUnavailable`: retried within the
  delivery's budget like any unavailable GPU, then nacked (503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from google.auth.exceptions import GoogleAuthError

from ocrpipe.errors import OcrUnavailable
from ocrpipe.settings import Settings
from ocrpipe.worker.single_flight import SingleFlight

logger = logging.getLogger(__name__)

REFRESH_BEFORE_EXPIRY_S = 300  # start a background refresh this long before expiry
MIN_VALIDITY_S = 60  # never send a token that expires sooner than this: wait for a new one
RETRY_AHEAD_AFTER_S = 10.0  # a failed background refresh is tried again after this
_FETCH_ERRORS = (GoogleAuthError, OSError, ValueError, KeyError)


def _fetch_from_google(audience: str) -> str:
    import google.auth.transport.requests
    from google.oauth2 import id_token

    request = google.auth.transport.requests.Request()
    token: str = id_token.fetch_id_token(request, audience)  # type: ignore[no-untyped-call]
    return token


def _expiry(token: str) -> float:
    from google.auth import jwt

    claims = jwt.decode(token, verify=False)  # type: ignore[no-untyped-call]
    return float(claims["exp"])


class IdTokenAuth:
    """``Authorization: Bearer <ID token>``, cached and refreshed ahead of expiry."""

    def __init__(
        self,
        audience: str,
        *,
        fetch: Callable[[str], str] = _fetch_from_google,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._audience = audience
        self._fetch = fetch
        self._clock = clock
        self._token = ""
        self._expires = 0.0
        self._retry_ahead_at = 0.0
        self._refresh = SingleFlight(self._fetch_in_thread)
        self.fetches = 0

    @property
    def audience(self) -> str:
        return self._audience

    async def headers(self) -> dict[str, str]:
        now = self._clock()
        if now < self._expires - MIN_VALIDITY_S:
            if now >= self._expires - REFRESH_BEFORE_EXPIRY_S and now >= self._retry_ahead_at:
                self._refresh.start()  # ahead of time; this request keeps the current token
            return self._header()
        try:
            await self._refresh.wait()
        except _FETCH_ERRORS as exc:
            raise OcrUnavailable(
                f"no ID token for {self._audience}: {type(exc).__name__}: {exc}",
                reason="ocr_unavailable:id_token",
            ) from exc
        return self._header()

    async def refreshed(self) -> None:
        """Wait for a refresh in flight, if any (tests and shutdown)."""
        if self._refresh.running:
            await asyncio.gather(self._refresh.start(), return_exceptions=True)

    def _header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def _fetch_in_thread(self) -> None:
        started = time.monotonic()
        try:
            token, expires = await asyncio.to_thread(self._fetch_and_decode)
        except _FETCH_ERRORS as exc:
            self._retry_ahead_at = self._clock() + RETRY_AHEAD_AFTER_S
            logger.warning(
                "ID token refresh for %s failed after %.1f s: %s: %s",
                self._audience,
                time.monotonic() - started,
                type(exc).__name__,
                exc,
                extra={"error_class": type(exc).__name__},
            )
            raise
        self._token, self._expires = token, expires
        self.fetches += 1

    def _fetch_and_decode(self) -> tuple[str, float]:
        token = self._fetch(self._audience)
        return token, _expiry(token)


def auth_for(settings: Settings) -> IdTokenAuth | None:
    """No token for a loopback OCR URL (the local engine), an ID token otherwise."""
    if settings.ocr_auth == "none" or (settings.ocr_auth == "auto" and settings.ocr_is_local):
        return None
    return IdTokenAuth(settings.ocr_url.rstrip("/"))
