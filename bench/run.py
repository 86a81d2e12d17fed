"""Run the benchmarks: ``python -m bench [--quick] [--only render,split]``.

Each benchmark prints its figures and writes ``bench/results/<name>.json``::

    {"name", "quick", "started", "seconds", "machine": {cpus, load_avg_1m, ...},
     "method": "how it was measured", "figures": {...},
     "targets": {"<figure>": {"value", "target", "unit", "higher_is_better", "met", "margin"}}}

A summary of every target follows at the end. The exit status is 1 if a benchmark failed
to run (a missed target is a finding, not a failure).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OPTIONS, RESULTS_DIR, machine, say, write_result  # noqa: E402
from ocrpipe.testing import interrupt  # noqa: E402

BENCHMARKS = {
    "render": "Render: Renderer vs pdftoppm, pages/s and peak memory",
    "pipeline": "Pipeline overhead: end to end with an OCR server that answers at once",
    "saturation": "GPU saturation: pipeline throughput / direct capacity of a batching server",
    "split": "Splitter at scale: time and peak memory against page count",
    "quality": "OCR quality of the local engine: CER and word F1 per page type",
    "loops": "Repetition loops: GPU time per looping page, non-streamed vs streamed + cut",
    "image_tokens": "Image tokens per page kind: 1540 px always vs 200 dpi scaled down only",
    "status_scale": "Status of a batch: time, list calls and reads for 2,000 documents",
    "worker_memory": "Worker peak memory with its in-flight limit of the largest pages",
    "prompt_tokens": "Prompt tokens per page kind, counted by vLLM's real server (CPU build)",
    "backlog": "A backlog at scale: reconciler, submit gs:// and plan gs:// on fake-gcs-server",
    "plan_vs_report": "ocrpipe plan's estimate against ocrpipe report on the same local batch",
    "local_defaults": "The default local stack: a 40-page folder and a dense 14-page PDF",
}
# Run only when named with --only: half an hour of both cores on a busy machine.
ON_REQUEST = frozenset({"local_defaults"})

Runner = Callable[[bool], tuple[dict[str, Any], dict[str, Any], str]]


def run_one(name: str, quick: bool, results_dir: Path) -> dict[str, Any]:
    module = importlib.import_module(f"bench.{name}")
    runner: Runner = module.run
    say(f"== {name}: {BENCHMARKS[name]}{' (quick)' if quick else ''}")
    started = time.time()
    figures, targets, method = runner(quick)
    path = write_result(
        name,
        quick=quick,
        figures=figures,
        targets=targets,
        method=method,
        started=started,
        results_dir=results_dir,
    )
    say(f"   {time.time() - started:.0f} s, wrote {path}")
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small versions (CI smoke run)")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)} (without it: all but"
        f" {', '.join(sorted(ON_REQUEST))}, which run only when named)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the worker with py-spy during the saturation runs (py-spy must be installed)",
    )
    args = parser.parse_args(argv)
    interrupt.install()  # SIGTERM unwinds, stopping the servers a benchmark started
    OPTIONS.results_dir = args.results_dir
    OPTIONS.profile = args.profile
    names = [n.strip() for n in args.only.split(",") if n.strip()] or [
        n for n in BENCHMARKS if n not in ON_REQUEST
    ]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    info = machine()
    say(
        f"ocrpipe benchmarks on {info['cpus']} CPUs, load average {info['load_avg_1m']}"
        f" (1 min) {info['load_avg_5m']} (5 min): ratios are measured within this run"
    )
    started = time.time()
    summary: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for name in names:
        try:
            summary[name] = run_one(name, args.quick, args.results_dir)
        except Exception:
            failed.append(name)
            say(f"!! {name} failed:\n{traceback.format_exc()}")
    say(f"== summary ({time.time() - started:.0f} s)")
    for name, targets in summary.items():
        for figure, t in targets.items():
            sense = ">=" if t["higher_is_better"] else "<="
            verdict = "met   " if t["met"] else "MISSED"
            say(
                f"  {verdict} {name}.{figure}: {t['value']:g} {t['unit']}"
                f" (target {sense} {t['target']:g}, margin x{t['margin']:g})"
            )
    if failed:
        say(f"  failed to run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
