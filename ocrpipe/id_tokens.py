"""Google ID tokens for calling the GPU Cloud Run service (which allows only the worker).

One token is fetched for the service URL (the audience) and reused until shortly before it
expires: not one fetch per page. On Cloud Run the token comes from the metadata server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ocrpipe.settings import Settings

REFRESH_BEFORE_EXPIRY_S = 300


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
    """``Authorization: Bearer <ID token>`` with the token cached until near expiry."""

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
        self._lock = threading.Lock()
        self._token = ""
        self._expires = 0.0
        self.fetches = 0

    @property
    def audience(self) -> str:
        return self._audience

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._clock() >= self._expires - REFRESH_BEFORE_EXPIRY_S:
                self._token = self._fetch(self._audience)
                self._expires = _expiry(self._token)
                self.fetches += 1
            return {"Authorization": f"Bearer {self._token}"}


def auth_for(settings: Settings) -> IdTokenAuth | None:
    """No token for a loopback OCR URL (the local engine), an ID token otherwise."""
    if settings.ocr_auth == "none" or (settings.ocr_auth == "auto" and settings.ocr_is_local):
        return None
    return IdTokenAuth(settings.ocr_url.rstrip("/"))
