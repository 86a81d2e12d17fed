"""Prompt tokens per page kind, measured from vLLM's real server.

Each page kind is a one-page PDF of that paper size, rendered by the splitter's own renderer
(the image the worker sends) and sent to vLLM 0.30's OpenAI server, started by the GPU image's
entrypoint on the CPU with a tiny model of LightOnOCR-2-1B's architecture
(:mod:`ocrpipe.testing.vllm_server`): the prompt is counted by vLLM's own LightOnOCR processor,
as production counts it. ``max_tokens`` is 1: only the prompt is of interest.

What is real: the image tokens (vLLM scales the longest side to 1540 px, then one token per
28 x 28 px). What is not: the chat template's 12 tokens come from the tiny model's tokenizer,
built to split the template as Qwen's vocabulary does.

Targets: a page's prompt plus ``max_tokens`` (4096) must fit the context vLLM is started with
(8192 for LightOnOCR-2-1B), or vLLM clamps the reply and the worker reads a loop; and the
local engine's estimate (:func:`ocrpipe.local.engine.image_tokens`) must be vLLM's count.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.common import say, target
from ocrpipe.file_kinds import InputKind
from ocrpipe.local.engine import image_tokens
from ocrpipe.settings import Settings
from ocrpipe.splitter.rendering.page_decoders import RenderedPage, open_source
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.testing.tiny_lightonocr import MAX_MODEL_LEN, TEMPLATE_TOKENS
from ocrpipe.testing.vllm_server import VllmServer, build_model, find_venv

MM = 72 / 25.4
# Paper sizes in PDF points (width, height).
PAGE_KINDS: dict[str, tuple[float, float]] = {
    "A4": (210 * MM, 297 * MM),
    "Letter": (612.0, 792.0),
    "receipt": (80 * MM, 300 * MM),  # a till roll
    "slide": (960.0, 540.0),  # 16:9
    "sliver": (20.0, 3000.0),  # a strip: rendered long, padded to 1:8
}


def render(size: tuple[float, float], workdir: Path) -> RenderedPage:
    """The page image the splitter makes of a one-page PDF of ``size`` points."""
    data, _ = text_pdf(1, size=size, lines=4)
    path = workdir / f"{size[0]:.0f}x{size[1]:.0f}.pdf"
    path.write_bytes(data)
    settings = Settings()
    source = open_source(InputKind.PDF, path, max_image_pixels=settings.max_image_pixels)
    return source.render(1, settings.render_longest_side, settings.render_dpi)


def measure(server: VllmServer, page: RenderedPage) -> int:
    url = f"data:{page.mime};base64,{base64.b64encode(page.data).decode()}"
    body = {
        "model": server.model_id,
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
        ],
        "max_tokens": 1,
    }
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600)
    response.raise_for_status()
    return int(response.json()["usage"]["prompt_tokens"])


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    venv = find_venv()
    max_tokens = Settings().ocr_max_tokens
    figures: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-prompt-tokens-") as scratch:
        workdir = Path(scratch)
        model = build_model(venv, workdir / "model")
        with VllmServer(venv, model, workdir / "vllm") as server:
            assert server.loading is not None
            figures["vllm_ready_s"] = round(server.loading.seconds, 1)
            for kind, size in PAGE_KINDS.items():
                page = render(size, workdir)
                prompt = measure(server, page)
                estimate = image_tokens(page.width, page.height)
                figures[kind] = {
                    "page_pt": [round(size[0], 1), round(size[1], 1)],
                    "image_px": [page.width, page.height],
                    "prompt_tokens": prompt,
                    "image_tokens": prompt - TEMPLATE_TOKENS,
                    "template_tokens": TEMPLATE_TOKENS,
                    "local_engine_image_tokens": estimate,
                }
                targets[f"{kind}_prompt_plus_max_tokens"] = target(
                    prompt + max_tokens, MAX_MODEL_LEN, higher_is_better=False, unit="tokens"
                )
                targets[f"{kind}_local_engine_error"] = target(
                    abs(estimate - (prompt - TEMPLATE_TOKENS)), 0, higher_is_better=False,
                    unit="tokens",
                )  # fmt: skip
                say(
                    f"   {kind:8} {page.width:>5} x {page.height:<5} px: {prompt:>5} prompt"
                    f" tokens (local engine's image estimate {estimate})"
                )
    method = (
        "one-page text PDF per paper size, rendered by the splitter's renderer"
        f" ({Settings().render_dpi:g} dpi, longest side at most"
        f" {Settings().render_longest_side} px); POST to vLLM 0.30.0's"
        " OpenAI server (CPU build, gpu_image/entrypoint.sh, tiny LightOnOCR-architecture"
        " model) with max_tokens 1; prompt_tokens is vLLM's usage; template tokens ="
        f" {TEMPLATE_TOKENS} (the tiny tokenizer's split of LightOnOCR's chat template)"
    )
    return figures, targets, method
