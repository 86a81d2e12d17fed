"""What the OCR client's transport needs installed to stay cheap per request."""

from __future__ import annotations

import importlib.util


def test_httpcore_finds_sniffio_instead_of_searching_for_it_on_every_request() -> None:
    # httpcore 1.0 imports sniffio each time it sets up a lock or an event (several per
    # request). anyio 4 no longer installs it; missing, every one of those imports failed
    # after a search of sys.path: ~10% of the OCR client's CPU per page. It is pinned in
    # pyproject.toml.
    assert importlib.util.find_spec("sniffio") is not None
