"""The benchmarks' quick run (``python -m bench --quick``) works and writes sane results.

Only that it runs: the figures themselves depend on the machine and on whatever else runs
on it, so no figure is compared with its target here (docs/PERFORMANCE.md has the figures).
The run is waited for on its progress (its output, the results it writes and the CPU time
of its processes), not on a clock: it takes about 4 minutes on an idle 2-core machine and
more than 9 on a busy one.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.common import cpu_seconds
from ocrpipe.testing.processes import stop_tree
from ocrpipe.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("render", "pipeline", "saturation", "split", "quality", "loops")
RECORD_KEYS = {"name", "quick", "started", "seconds", "machine", "method", "figures", "targets"}
TARGET_KEYS = {"value", "target", "unit", "higher_is_better", "met", "margin"}
# Figures that must be positive numbers: (benchmark, path inside "figures").
POSITIVE = [
    ("render", "text.pdfium.pages_per_s"),
    ("render", "text.pdftoppm.pages_per_s"),
    ("render", "scanned.pdfium.pages_per_s"),
    ("render", "scanned.pdftoppm.pages_per_s"),
    ("render", "text.pdfium.peak_total_rss_mb"),
    ("render", "text.speedup"),
    ("pipeline", "pages_per_s"),
    ("pipeline", "added_latency_ms.median"),
    ("pipeline", "worker_request_ms.median"),
    ("saturation", "k8_s0.5.direct.steady_pages_per_s"),
    ("saturation", "k8_s0.5.pipeline.steady_pages_per_s"),
    ("saturation", "k8_s0.5.pipeline.server_max_in_flight"),
    ("saturation", "k8_s0.5.ratio"),
    ("split", "memory_growth"),
    ("split", "rate_kept"),
    ("quality", "born_digital.pages"),
    ("quality", "scanned.seconds_per_page"),
    ("loops", "looping_pages"),
    ("loops", "gpu_seconds_per_looping_page.before"),
    ("loops", "gpu_seconds_per_looping_page.after"),
    ("loops", "detector_cost.microseconds_per_check"),
]


def numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield path, float(value)
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from numbers(inner, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from numbers(inner, f"{path}[{index}]")


def lookup(record: dict[str, Any], path: str) -> Any:
    """A figure by dotted path; keys may contain dots themselves ("k8_s0.5")."""
    value: Any = record["figures"]
    rest = path
    while rest:
        key = next(
            (
                k
                for k in sorted(value, key=len, reverse=True)
                if rest == k or rest.startswith(k + ".")
            ),
            None,
        )
        assert key is not None, f"{record['name']}: no figure {path}"
        value = value[key]
        rest = rest[len(key) + 1 :]
    return value


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) missing")
@pytest.mark.timeout(3600)  # a backstop only: the wait fails first if nothing moves
def test_quick_benchmarks_run_and_write_sane_results(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    results = tmp_path / "results"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench", "--quick", "--results-dir", str(results)],
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            wait_for(
                lambda: (
                    process.poll(),
                    out.stat().st_size,
                    err.stat().st_size,
                    int(cpu_seconds(process.pid)),
                ),
                lambda reading: reading[0] is not None,
                what="the quick benchmarks to end",
                interval=1.0,
            )
        finally:
            stop_tree(process, grace_s=60)  # with the vLLM server it started, if any
    stdout_text, stderr_text = out.read_text(), err.read_text()
    assert process.returncode == 0, (
        f"stdout:\n{stdout_text[-5000:]}\nstderr:\n{stderr_text[-5000:]}"
    )
    assert "== summary" in stdout_text

    records = {}
    for name in BENCHMARKS:
        path = results / f"{name}.json"
        assert path.is_file(), f"{name}.json not written; output:\n{stdout_text[-3000:]}"
        records[name] = record = json.loads(path.read_text())
        assert record.keys() >= RECORD_KEYS, f"{name}: {sorted(record)}"
        assert record["name"] == name and record["quick"] is True
        assert record["method"]
        for label, t in record["targets"].items():
            assert t.keys() >= TARGET_KEYS, f"{name}.{label}: {sorted(t)}"
            assert t["value"] > 0 and t["target"] > 0, f"{name}.{label}: {t}"
        for where, number in numbers(record["figures"]):
            assert math.isfinite(number) and number >= 0, f"{name}.{where} = {number}"

    for name, dotted in POSITIVE:
        value = lookup(records[name], dotted)
        assert isinstance(value, int | float) and value > 0, f"{name}.{dotted} = {value!r}"
    for kind in ("born_digital", "scanned"):
        quality = lookup(records["quality"], kind)
        assert 0 <= quality["cer"] <= 1 and 0 <= quality["word_f1"] <= 1, quality
