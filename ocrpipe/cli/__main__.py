"""``python -m ocrpipe.cli``: the CLI in a process of its own, as the ``ocrpipe`` command."""

from __future__ import annotations

from ocrpipe.cli import app

app(prog_name="ocrpipe")
