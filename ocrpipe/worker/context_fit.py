"""Whether the worker's requests fit the OCR server's context, checked when it starts.

vLLM serves a model with a context of ``max_model_len`` tokens (8192 for LightOnOCR-2-1B,
16384 for LightOnOCR-3-1B) and says so in ``GET /v1/models``. A request's prompt (the page
image's tokens and the chat template's) plus its ``max_tokens`` must fit in it: vLLM 0.30
answers 400 when ``max_tokens`` alone reaches the context (every page would fail for good),
and cuts a reply that would overflow with ``finish_reason == "length"``, which the worker
takes for a repetition loop (measured: tests/test_vllm_contract.py).

:func:`check_ocr_context` asks the server once at start and raises :class:`ContextTooShort`
(the worker does not start) when ``OCRPIPE_OCR_MAX_TOKENS`` plus the largest page's prompt
does not fit, or when ``OCRPIPE_OCR_MAX_MODEL_LEN`` (what the client sizes a long page's
second request with) is more than the server serves. A server that cannot be asked (a GPU
service scaled to zero, not up yet) does not keep the worker from starting: it logs a
WARNING and starts unchecked.
"""

from __future__ import annotations

import logging
import math

import httpx

from ocrpipe.errors import OcrpipeError
from ocrpipe.settings import Settings
from ocrpipe.worker.ocr_client import OcrClient

logger = logging.getLogger(__name__)

# LightOnOCR's vision encoder (vision_config.image_size): vLLM scales every image down so
# that its longest side is at most this, then counts one token per 28 x 28 px.
VISION_MAX_SIDE = 1540
IMAGE_TOKEN_PX = 28
# The chat template's tokens around the image (12 for LightOnOCR's, measured from vLLM in
# bench/prompt_tokens.py), with room to spare.
TEMPLATE_ALLOWANCE = 64
START_CHECK_TIMEOUT_S = 10.0


class ContextTooShort(RuntimeError):
    """The settings ask for replies the served model's context cannot hold."""


def largest_prompt_tokens(settings: Settings) -> int:
    """The prompt of the largest page image: a square at the render size, as vLLM counts it."""
    side = min(settings.render_longest_side, VISION_MAX_SIDE)
    return math.ceil(side / IMAGE_TOKEN_PX) ** 2 + TEMPLATE_ALLOWANCE


def check_fit(settings: Settings, max_model_len: int) -> None:
    """Raise :class:`ContextTooShort` unless ``OCRPIPE_OCR_MAX_MODEL_LEN`` (what the client
    sizes a long page's second request with) is at most the served ``max_model_len`` and the
    largest page's prompt plus ``max_tokens`` fits in it."""
    if settings.ocr_max_model_len > max_model_len:
        raise ContextTooShort(
            f"OCRPIPE_OCR_MAX_MODEL_LEN={settings.ocr_max_model_len} is more than the"
            f" {max_model_len}-token context the OCR server serves {settings.ocr_model} with"
            f" (max_model_len in GET {settings.ocr_url}/v1/models): a long page's second"
            " request would ask for more than fits. Set OCRPIPE_OCR_MAX_MODEL_LEN to"
            f" {max_model_len}."
        )
    prompt = largest_prompt_tokens(settings)
    if settings.ocr_max_tokens + prompt > max_model_len:
        raise ContextTooShort(
            f"OCRPIPE_OCR_MAX_TOKENS={settings.ocr_max_tokens} plus the largest page's prompt"
            f" ({prompt} tokens at render_longest_side {settings.render_longest_side}) does not"
            f" fit the {max_model_len}-token context the OCR server serves"
            f" {settings.ocr_model} with (max_model_len in GET {settings.ocr_url}/v1/models):"
            " vLLM would refuse such requests or cut their replies short. Set"
            f" OCRPIPE_OCR_MAX_TOKENS to at most {max_model_len - prompt}, or serve the model"
            " with a longer --max-model-len."
        )


async def check_ocr_context(
    ocr: OcrClient, settings: Settings, *, timeout: float = START_CHECK_TIMEOUT_S
) -> int | None:
    """The served model's ``max_model_len``, checked against the settings; None when the
    server could not be asked or does not say (a WARNING says so)."""
    try:
        served = await ocr.served_max_model_len(timeout=timeout)
    except (httpx.HTTPError, ValueError, OcrpipeError) as exc:
        logger.warning(
            "could not read the OCR server's max_model_len (GET %s/v1/models: %s): starting"
            " without checking that OCRPIPE_OCR_MAX_TOKENS fits its context",
            settings.ocr_url,
            exc,
            extra={"reason": "ocr_context_unchecked"},
        )
        return None
    if served is None:
        logger.warning(
            "GET %s/v1/models gives no max_model_len for %s: starting without checking that"
            " OCRPIPE_OCR_MAX_TOKENS fits its context",
            settings.ocr_url,
            settings.ocr_model,
            extra={"reason": "ocr_context_unchecked"},
        )
        return None
    check_fit(settings, served)
    logger.info(
        "the OCR server serves %s with a %d-token context: max_tokens %d plus the largest"
        " page's prompt (%d) fit",
        settings.ocr_model,
        served,
        settings.ocr_max_tokens,
        largest_prompt_tokens(settings),
    )
    return served
