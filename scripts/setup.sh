#!/usr/bin/env bash
# Set up a development environment from scratch: a virtualenv in .venv with ocrpipe, its
# local-stack extras and test tools. Safe to run again; it only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "ocrpipe needs Python 3.11 or newer (found: $("$PYTHON" --version 2>&1))." >&2
    echo "Set PYTHON=/path/to/python3.11 and run again." >&2
    exit 1
fi
if ! command -v java >/dev/null 2>&1; then
    echo "Java is missing: the Pub/Sub emulator needs it." >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python - <<'PY'
from ocrpipe.local.stack import StackError, find_pubsub_emulator
try:
    find_pubsub_emulator()
except StackError as exc:
    raise SystemExit(str(exc))
PY
