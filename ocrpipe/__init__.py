"""ocrpipe: event-driven batch OCR on Google Cloud, and its Python API.

``from ocrpipe import Client`` (see :mod:`ocrpipe.client`). The API is loaded on first use,
so the services, which import the package's contract modules, never load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ocrpipe.client import BatchStatus, Client, DocumentStatus, Submission, WaitResult

__all__ = ["BatchStatus", "Client", "DocumentStatus", "Submission", "WaitResult", "__version__"]


def __getattr__(name: str) -> Any:
    """The API's names and ``__version__``, imported when first asked for (PEP 562)."""
    if name == "__version__":
        from importlib.metadata import version

        return version("ocrpipe")
    if name in __all__:
        from ocrpipe import client

        return getattr(client, name)
    raise AttributeError(f"module 'ocrpipe' has no attribute {name!r}")
