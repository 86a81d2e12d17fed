#!/usr/bin/env bash
# Set up and run every test: unit, contract, and end to end on the real emulators (the
# tests start and stop the local stack themselves, on free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
