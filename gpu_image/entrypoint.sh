#!/bin/sh
# Start vLLM's OpenAI-compatible server on the weights baked into the image.
#
# Flags from LightOnOCR's model card: one image per prompt, no multimodal processor cache,
# no prefix caching (every page is a different image; caching only costs memory).
#
# The model (and its context length) is fixed at build time: check-model.sh wrote
# MODEL_ID, MODEL_REVISION and MODEL_MAX_LEN, from the model's entry in ocrpipe/models.json,
# to MODEL_ENV_FILE. It is served under its own id, the name the worker sends (terraform:
# local.gpu_model -> OCRPIPE_OCR_MODEL). With
# EXPECTED_MODEL set (terraform sets it), a service deployed with an image of another model
# refuses to start instead of answering every page with 404 "model not found".
#
# Sizing for one L4 (24 GB), all overridable through the environment:
# * MAX_MODEL_LEN: the model's entry's (8192 for LightOnOCR-2-1B: a page rendered at 1540 px
#   on its longest side is ~2.4k image tokens, plus at most 4096 generated tokens).
# * MAX_NUM_SEQS=32: the decoder's KV cache is ~112 KiB per token, so ~16 GB of KV cache
#   holds 32 pages at ~4.5k tokens each; the published L4 figure (~0.6 pages/s) was measured
#   with 32 requests in flight. Cloud Run's concurrency for this service matches it.
# * GPU_MEMORY_UTILIZATION=0.90 leaves headroom for CUDA graphs and the vision encoder.
# * COMPILE_MODE=compiled (default): torch.compile and CUDA graph capture at every cold start
#   (the caches under /home/vllm/.cache start empty on a new instance), for faster decoding;
#   COMPILE_MODE=eager (--enforce-eager) starts sooner and decodes slower. docs/DEPLOY.md
#   says how to measure which fits the startup probe.
# Extra arguments are passed on to `vllm serve`.
set -eu

# shellcheck source=/dev/null
. "${MODEL_ENV_FILE:-/etc/ocrpipe/model.env}"

if [ -n "${EXPECTED_MODEL:-}" ] && [ "$EXPECTED_MODEL" != "$MODEL_ID" ]; then
    echo "ocrpipe-vllm: this image holds $MODEL_ID (revision $MODEL_REVISION), but the service" \
        "expects $EXPECTED_MODEL: rebuild the image with --build-arg MODEL_ID=$EXPECTED_MODEL" \
        "or set gpu_model to $MODEL_ID" >&2
    exit 1
fi

case "${COMPILE_MODE:-compiled}" in
    compiled) set -- "$@" ;;
    eager) set -- --enforce-eager "$@" ;;
    *)
        echo "ocrpipe-vllm: COMPILE_MODE must be compiled or eager, not '$COMPILE_MODE'" >&2
        exit 1
        ;;
esac

echo "ocrpipe-vllm: serving $MODEL_ID@$MODEL_REVISION, compile mode ${COMPILE_MODE:-compiled}" >&2
exec vllm serve "${MODEL_DIR:?MODEL_DIR must point at the model weights}" \
    --served-model-name "$MODEL_ID" \
    --host 0.0.0.0 \
    --port "${PORT:-8000}" \
    --limit-mm-per-prompt '{"image": 1}' \
    --mm-processor-cache-gb 0 \
    --no-enable-prefix-caching \
    --max-model-len "${MAX_MODEL_LEN:-$MODEL_MAX_LEN}" \
    --max-num-seqs "${MAX_NUM_SEQS:-32}" \
    --gpu-memory-utilization "${GPU_MEMORY_UTILIZATION:-0.90}" \
    "$@"
