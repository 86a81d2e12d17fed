"""Smoke test for an OCR server that speaks vLLM's OpenAI-compatible API subset.

    python gpu_image/smoke.py --url URL [--model NAME] [--id-token]

Checks, in order, and stops at the first failure:

1. ``GET /health`` answers 200 (retried while the server is still starting: a Cloud Run GPU
   service that scaled to zero takes a minute or more to load the model);
2. ``GET /v1/models`` lists the model;
3. one real OCR request: a generated PNG of a known sentence, sent the way the pipeline
   sends pages (a single user message holding only the image; temperature 0.2, top_p 0.9,
   max_tokens 4096). The reply must contain the sentence (case-insensitive, whitespace
   collapsed) and finish with ``finish_reason == "stop"``.

``--no-text-check`` skips only what check 3 reads in the reply: the request is sent and must
be answered 200 with a chat completion that finished (``stop``, or ``length`` for a model that
cannot read) and says how many tokens it took. That is how the vLLM test tier runs this script
against vLLM's real server serving a tiny random model (tests/test_vllm_contract.py), so the
script a real deployment is checked with is itself checked against vLLM on every CI run.

Exit status 0 when every check passes, 1 with a message on stderr when one fails.
``--id-token`` adds ``Authorization: Bearer`` with an identity token from
``OCRPIPE_SMOKE_ID_TOKEN`` or, if that is unset, ``gcloud auth print-identity-token``
(a Cloud Run service that allows only authenticated calls needs it).

Needs only the standard library, httpx and Pillow.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

import httpx
from PIL import Image, ImageDraw, ImageFont

DEFAULT_MODEL = "lightonai/LightOnOCR-2-1B"
KNOWN_TEXT = "Ocrpipe smoke test 4821 quick brown fox"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class SmokeFailure(Exception):
    """A check failed; the message says which and why."""


def render_text_png(text: str = KNOWN_TEXT, *, width: int = 1540, height: int = 360) -> bytes:
    """A white page with ``text`` in large black type, as PNG bytes."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=64)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (width - (right - left)) // 2 - left
    y = (height - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def chat_request(model: str, png: bytes) -> dict[str, object]:
    data_url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return {
        "model": model,
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}}]}
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 4096,
    }


def check_health(client: httpx.Client, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    last = "no answer"
    while True:
        try:
            response = client.get("/health")
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
            if response.status_code not in RETRY_STATUSES:
                break
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            break
        time.sleep(5)
    raise SmokeFailure(f"GET /health did not answer 200 within {wait_s:.0f} s (last: {last})")


def check_models(client: httpx.Client, model: str) -> None:
    response = client.get("/v1/models")
    if response.status_code != 200:
        raise SmokeFailure(f"GET /v1/models answered HTTP {response.status_code}")
    ids = [entry.get("id") for entry in response.json().get("data", [])]
    if model not in ids:
        raise SmokeFailure(f"GET /v1/models does not list {model!r}; it lists {ids}")


def check_ocr(client: httpx.Client, model: str, *, read_text: bool = True) -> str:
    response = client.post("/v1/chat/completions", json=chat_request(model, render_text_png()))
    if response.status_code != 200:
        raise SmokeFailure(
            f"POST /v1/chat/completions answered HTTP {response.status_code}: {response.text[:300]}"
        )
    try:
        reply = response.json()
        choice = reply["choices"][0]
        content = choice["message"]["content"] or ""
        finish_reason = choice.get("finish_reason")
        tokens = reply["usage"]["completion_tokens"]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SmokeFailure(f"unexpected chat completion body: {response.text[:300]}") from exc
    if not read_text:
        if finish_reason not in ("stop", "length") or not isinstance(tokens, int):
            raise SmokeFailure(f"finish_reason {finish_reason!r}, completion_tokens {tokens!r}")
        return content
    if finish_reason != "stop":
        raise SmokeFailure(f"finish_reason is {finish_reason!r}, expected 'stop'")
    if normalize(KNOWN_TEXT) not in normalize(content):
        raise SmokeFailure(f"the reply does not contain {KNOWN_TEXT!r}; it was: {content!r}")
    return content


def identity_token() -> str:
    token = os.environ.get("OCRPIPE_SMOKE_ID_TOKEN", "").strip()
    if token:
        return token
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise SmokeFailure("--id-token needs OCRPIPE_SMOKE_ID_TOKEN or the gcloud CLI")
    result = subprocess.run(
        [gcloud, "auth", "print-identity-token"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise SmokeFailure(f"gcloud auth print-identity-token failed: {result.stderr.strip()}")
    return result.stdout.strip()


def run(
    url: str,
    model: str,
    *,
    id_token: bool,
    wait_s: float,
    timeout_s: float,
    read_text: bool = True,
) -> str:
    headers = {"Authorization": f"Bearer {identity_token()}"} if id_token else {}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s) as client:
        check_health(client, wait_s)
        print(f"ok  GET /health ({url})")
        check_models(client, model)
        print(f"ok  GET /v1/models lists {model}")
        content = check_ocr(client, model, read_text=read_text)
        if read_text:
            print(f"ok  POST /v1/chat/completions read {KNOWN_TEXT!r} ({len(content)} chars)")
        else:
            print(f"ok  POST /v1/chat/completions answered ({len(content)} chars, not read)")
    return content


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="server base URL, without /v1")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    parser.add_argument(
        "--id-token", action="store_true", help="send a Google identity token (Cloud Run)"
    )
    parser.add_argument(
        "--wait", type=float, default=600, help="seconds to wait for /health (default 600)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds per HTTP request (default 300)"
    )
    parser.add_argument(
        "--no-text-check",
        dest="read_text",
        action="store_false",
        help="do not check what the reply says (a model that cannot read: the test tier's)",
    )
    args = parser.parse_args(argv)
    try:
        run(
            args.url,
            args.model,
            id_token=args.id_token,
            wait_s=args.wait,
            timeout_s=args.timeout,
            read_text=args.read_text,
        )
    except SmokeFailure as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"FAIL {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
