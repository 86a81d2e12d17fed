"""Whether the emulators that settings point at answer (the local stack's, or a test's).

A client library retries a refused connection for about two minutes before it gives up;
a command or script talking to a local stack that went away should say so at once.
"""

from __future__ import annotations

import socket

from ocrpipe.settings import Settings


def emulator_down(settings: Settings, *, timeout_s: float = 2.0) -> str | None:
    """One line saying which emulator does not answer, or None if each one ``settings``
    names accepts a connection (and for real Google Cloud, which has none)."""
    hosts = (("GCS", settings.storage_emulator_host), ("Pub/Sub", settings.pubsub_emulator_host))
    for what, host in hosts:
        if not host:
            continue
        address = host.split("://", 1)[-1].rstrip("/")
        name, _, port = address.rpartition(":")
        try:
            with socket.create_connection((name, int(port)), timeout=timeout_s):
                pass
        except (OSError, ValueError):
            return f"The local stack is down: nothing answers at {address} ({what} emulator)."
    return None
