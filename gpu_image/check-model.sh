#!/bin/sh
# Build-time check of the model build arguments against the model table; writes the serve
# settings that go with them.
#
#   check-model.sh MODELS_FILE MODEL_ID MODEL_REVISION MAX_MODEL_LEN OUT_FILE
#
# MODELS_FILE is ocrpipe/models.json, the one table of the models ocrpipe knows (the worker
# and terraform read it too). Empty arguments come from it:
# * MODEL_ID: the table's default model. A model without an entry is refused: add one.
# * MODEL_REVISION: the entry's. It must be a 40-hex commit of the model repository: a branch
#   or tag ("main") can move, and then two builds of the same Dockerfile serve different
#   weights. An entry without one needs it here.
# * MAX_MODEL_LEN: the entry's context length (a smaller one saves GPU memory).
# OUT_FILE gets MODEL_ID, MODEL_REVISION and MODEL_MAX_LEN as shell assignments, which the
# Dockerfile's download and entrypoint.sh read.
set -eu

usage="usage: check-model.sh MODELS_FILE MODEL_ID MODEL_REVISION MAX_MODEL_LEN OUT_FILE"
models="${1:?$usage}"
model_id="${2:-}"
revision="${3:-}"
max_len="${4:-}"
out="${5:?$usage}"

# One line each: the model id, the entry's revision (may be empty), its context length.
entry="$(python3 - "$models" "$model_id" <<'EOF'
import json
import sys

table = json.load(open(sys.argv[1], encoding="utf-8"))
name = sys.argv[2] or table["default"]
spec = table["models"].get(name)
if spec is None:
    known = ", ".join(sorted(table["models"]))
    sys.exit(
        f"check-model: {name} has no entry in ocrpipe/models.json (known: {known}). Add one"
        " (revision, max_model_len, figure_boxes, render_longest_side) and a line in"
        " tests/test_models.py."
    )
print(name)
print(spec["revision"] or "")
print(spec["max_model_len"])
EOF
)"
model_id="$(printf '%s\n' "$entry" | sed -n 1p)"
[ -n "$revision" ] || revision="$(printf '%s\n' "$entry" | sed -n 2p)"
[ -n "$max_len" ] || max_len="$(printf '%s\n' "$entry" | sed -n 3p)"

if ! printf '%s' "$revision" | grep -Eq '^[0-9a-f]{40}$'; then
    echo "check-model: MODEL_REVISION='$revision' is not a 40-hex commit id of $model_id." >&2
    echo "  Look it up (docs/DEPLOY.md, 'The GPU image'), then pass it or put it in" >&2
    echo "  ocrpipe/models.json:" >&2
    echo "  curl -s https://huggingface.co/api/models/$model_id/revision/main | jq -r .sha" >&2
    exit 1
fi

case "$max_len" in
    '' | *[!0-9]*)
        echo "check-model: MAX_MODEL_LEN='$max_len' is not a number" >&2
        exit 1
        ;;
esac

mkdir -p "$(dirname "$out")"
{
    echo "MODEL_ID=$model_id"
    echo "MODEL_REVISION=$revision"
    echo "MODEL_MAX_LEN=$max_len"
} >"$out"
