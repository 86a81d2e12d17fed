#!/bin/sh
# Build-time check of the model build arguments; writes the serve settings that go with them.
#
#   check-model.sh MODEL_ID MODEL_REVISION MAX_MODEL_LEN OUT_FILE
#
# * MODEL_REVISION must be a 40-hex commit of the model repository: a branch or tag ("main")
#   can move, and then two builds of the same Dockerfile serve different weights.
# * MAX_MODEL_LEN may be empty for the models we know (LightOnOCR-2-1B: 8192; LightOnOCR-3-1B,
#   same architecture, needs 16384); any other model must say it.
# OUT_FILE gets MODEL_ID, MODEL_REVISION and MODEL_MAX_LEN as shell assignments, which
# entrypoint.sh reads at start.
set -eu

model_id="${1:?usage: check-model.sh MODEL_ID MODEL_REVISION MAX_MODEL_LEN OUT_FILE}"
revision="${2:-}"
max_len="${3:-}"
out="${4:?usage: check-model.sh MODEL_ID MODEL_REVISION MAX_MODEL_LEN OUT_FILE}"

if ! printf '%s' "$revision" | grep -Eq '^[0-9a-f]{40}$'; then
    echo "check-model: MODEL_REVISION='$revision' is not a 40-hex commit id of $model_id." >&2
    echo "  Look it up (docs/DEPLOY.md, 'The GPU image'):" >&2
    echo "  curl -s https://huggingface.co/api/models/$model_id/revision/main | jq -r .sha" >&2
    exit 1
fi

if [ -z "$max_len" ]; then
    case "$model_id" in
        lightonai/LightOnOCR-2-1B*) max_len=8192 ;;
        lightonai/LightOnOCR-3-1B*) max_len=16384 ;;
        *)
            echo "check-model: no known MAX_MODEL_LEN for $model_id; pass --build-arg MAX_MODEL_LEN=N" >&2
            exit 1
            ;;
    esac
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
