#!/usr/bin/env bash
# Fresh machine to Markdown: set up, start the local stack, OCR examples/sample.pdf through
# the real path (finalize event -> splitter -> Pub/Sub push -> worker -> OCR), print it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/ocrpipe demo "${1:-examples/sample.pdf}"
