#!/bin/sh
# Start vLLM's OpenAI-compatible server on the weights baked into the image.
#
# Flags from LightOnOCR's model card: one image per prompt, no multimodal processor cache,
# no prefix caching (every page is a different image; caching only costs memory).
#
# Sizing for one L4 (24 GB), all overridable through the environment:
# * MAX_MODEL_LEN=8192: a page rendered at 1540 px on its longest side is ~2.4k image tokens
#   (28 px per token after the 2x2 merge), plus at most 4096 generated tokens.
# * MAX_NUM_SEQS=32: the decoder's KV cache is ~112 KiB per token, so ~16 GB of KV cache
#   holds 32 pages at ~4.5k tokens each; the published L4 figure (~0.6 pages/s) was measured
#   with 32 requests in flight. Cloud Run's concurrency for this service matches it.
# * GPU_MEMORY_UTILIZATION=0.90 leaves headroom for CUDA graphs and the vision encoder.
# Extra arguments are passed on to `vllm serve`.
set -eu

exec vllm serve "${MODEL_DIR:?MODEL_DIR must point at the model weights}" \
    --served-model-name "${SERVED_MODEL_NAME:-lightonai/LightOnOCR-2-1B}" \
    --host 0.0.0.0 \
    --port "${PORT:-8000}" \
    --limit-mm-per-prompt '{"image": 1}' \
    --mm-processor-cache-gb 0 \
    --no-enable-prefix-caching \
    --max-model-len "${MAX_MODEL_LEN:-8192}" \
    --max-num-seqs "${MAX_NUM_SEQS:-32}" \
    --gpu-memory-utilization "${GPU_MEMORY_UTILIZATION:-0.90}" \
    "$@"
