"""A functions-framework source for the splitter's contract test: the real handler, with
clients taken from ``tests.fakes.SPLITTER_SERVICES`` (set by the test) instead of real GCS
and Pub/Sub. functions-framework loads this file as a module of its own, so the shared list
lives in an importable module."""

from __future__ import annotations

import functions_framework

from splitter_fn.main import make_handler
from tests.fakes import SPLITTER_SERVICES

on_finalize = functions_framework.cloud_event(
    make_handler(lambda: SPLITTER_SERVICES[-1])  # type: ignore[arg-type,return-value]
)
