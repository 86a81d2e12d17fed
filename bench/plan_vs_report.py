"""Benchmark 10: ``ocrpipe plan``'s estimate against ``ocrpipe report`` on the same batch.

A folder of PDFs of several page kinds (A4, Letter, a landscape slide, a receipt; the
sample document) is planned, then submitted to the whole local stack with its own OCR
engine and reported on. The engine counts prompt tokens as vLLM does (one per 28 x 28 px of
the image it receives), so the plan's prompt tokens, computed from page sizes alone, must
equal the report's, less the chat template's 12 tokens a page that vLLM adds and the engine
does not count; its completion tokens are an assumption (``plan_completion_tokens``) that
the report's measured ones test. The GPU figures are not compared: the local engine is
a CPU, and the plan's are an L4's (``--calibrate`` is what carries measured GPU time over).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from bench.common import REPO, say, target
from ocrpipe import cli
from ocrpipe.local.stack import LocalStack, free_ports
from ocrpipe.page_geometry import CHAT_TEMPLATE_TOKENS
from ocrpipe.testing.inputs import sized_pages_pdf
from ocrpipe.testing.pdfs import text_pdf

KINDS = {"a4.pdf": None, "letter.pdf": (612.0, 792.0), "slide.pdf": (960.0, 540.0)}


def corpus(root: Path, quick: bool) -> None:
    pages = 2 if quick else 4
    for name, size in KINDS.items():
        (root / name).write_bytes(text_pdf(pages, seed=len(name), lines=10, size=size)[0])
    (root / "receipt.pdf").write_bytes(sized_pages_pdf([(226.0, 800.0)]))
    shutil.copy(REPO / "examples" / "sample.pdf", root / "sample.pdf")


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "batch"
        root.mkdir()
        corpus(root, quick)
        prefix = f"plan-check-{uuid.uuid4().hex[:6]}/"
        with LocalStack(ports=free_ports(), bucket_suffix=f"-{uuid.uuid4().hex[:6]}") as stack:
            env = stack.env("operator")
            planned = runner.invoke(cli.app, ["plan", str(root), "--json"], env=env)
            if planned.exit_code != 0:
                raise RuntimeError(f"plan failed: {planned.output}")
            plan = json.loads(planned.stdout)
            started = time.perf_counter()
            args = ["submit", str(root), "--prefix", prefix, "--wait", "--timeout", "1200"]
            submitted = runner.invoke(cli.app, args, env=env)
            if submitted.exit_code != 0:
                raise RuntimeError(f"submit failed: {submitted.output}")
            batch_s = time.perf_counter() - started
            reported = runner.invoke(cli.app, ["report", "--prefix", prefix, "--json"], env=env)
            if reported.exit_code != 0:
                raise RuntimeError(f"report failed: {reported.output}")
            report = json.loads(reported.stdout)
    pages = report["pages"]["usage_known"]
    image_tokens = plan["prompt_tokens"] - CHAT_TEMPLATE_TOKENS * plan["pages"]
    figures = {
        "documents": plan["documents"],
        "pages_planned": plan["pages"],
        "pages_reported": report["pages"]["total"],
        "pages_by_kind": plan["pages_by_kind"],
        "prompt_tokens_planned": plan["prompt_tokens"],
        "image_tokens_planned": image_tokens,
        "prompt_tokens_reported": report["usage"]["prompt_tokens"],
        "completion_tokens_planned": plan["completion_tokens"],
        "completion_tokens_reported": report["usage"]["completion_tokens"],
        "completion_tokens_per_page_reported": round(
            report["usage"]["completion_tokens"] / pages, 1
        ),
        "plan_gpu_hours_l4": plan["gpu_hours"],
        "plan_cost_per_1000_pages_l4": plan["cost_per_1000_pages"],
        "report_estimates_local_cpu_engine": report["estimates"],
        "batch_seconds": round(batch_s, 1),
    }
    say(
        f"  {plan['pages']} pages planned, {report['pages']['total']} reported; image tokens"
        f" {image_tokens} planned ({plan['prompt_tokens']} with the template),"
        f" {report['usage']['prompt_tokens']} reported;"
        f" completion {plan['completion_tokens']} assumed,"
        f" {report['usage']['completion_tokens']} reported"
    )
    targets = {  # relative error: 0 is a plan that counted exactly what was billed
        "image_tokens_error": target(
            abs(image_tokens / report["usage"]["prompt_tokens"] - 1), 0.01,
            higher_is_better=False, unit="x",
        ),
        "pages_error": target(
            abs(plan["pages"] / report["pages"]["total"] - 1), 0.0, higher_is_better=False,
            unit="x",
        ),
    }  # fmt: skip
    method = (
        "a folder of PDFs (A4, Letter, slide, receipt, the sample) planned with `ocrpipe plan"
        " --json`, then submitted to the local stack with its CPU OCR engine (`submit"
        " --wait`) and reported on (`ocrpipe report --json`), all through the CLI"
    )
    return figures, targets, method
