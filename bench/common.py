"""What every benchmark shares: results files, process-tree memory, rates and percentiles."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ocrpipe.settings import cpu_count
from ocrpipe.testing.processes import children

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"


@dataclass
class Options:
    """Run-wide options, set by :mod:`bench.run`."""

    results_dir: Path = RESULTS_DIR
    profile: bool = False  # py-spy the services where a benchmark supports it


OPTIONS = Options()


# --- results ------------------------------------------------------------------------------


def target(
    value: float, goal: float, *, higher_is_better: bool = True, unit: str = ""
) -> dict[str, Any]:
    """A figure with its target; ``margin`` is value / goal (or goal / value if lower wins)."""
    met = value >= goal if higher_is_better else value <= goal
    if higher_is_better:
        margin = value / goal if goal else math.inf
    else:
        margin = goal / value if value else math.inf
    return {
        "value": round(value, 4),
        "target": goal,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "met": met,
        "margin": round(margin, 3),
    }


def machine() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    return {
        "cpus": cpu_count(),
        "load_avg_1m": round(load1, 2),
        "load_avg_5m": round(load5, 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_result(
    name: str,
    *,
    quick: bool,
    figures: Mapping[str, Any],
    targets: Mapping[str, Any],
    method: str,
    started: float,
    results_dir: Path = RESULTS_DIR,
) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "quick": quick,
        "started": datetime.fromtimestamp(started, UTC).isoformat(),
        "seconds": round(time.time() - started, 1),
        "machine": machine(),
        "method": method,
        "figures": figures,
        "targets": targets,
    }
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def say(text: str = "") -> None:
    print(text, flush=True)


# --- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def steady_rate(finish_times: Sequence[float], low: float = 0.1, high: float = 0.9) -> float:
    """Completions per second in steady state: the least-squares slope of "pages finished so
    far" against time, over the middle of the run (from ``low`` to ``high`` of the time
    between the first and the last finish).

    Ramp-up (queues filling) and drain (queues emptying) fall outside the window. A slope
    is used rather than a count between two finishes because a batching server finishes
    pages in clumps (a batch of K every S seconds): counting from the end of one clump to
    the start of another would miss almost a whole batch; the slope through the clumps
    gives K / S. The same estimator is applied to the direct load generator and to the
    pipeline, so their ratio compares like with like. When too few pages finished in the
    middle (a short run that finished in clumps), the slope is over the whole run.
    """
    ordered = sorted(finish_times)
    if len(ordered) < 3 or ordered[-1] <= ordered[0]:
        return math.nan
    span = ordered[-1] - ordered[0]
    start, end = ordered[0] + low * span, ordered[0] + high * span
    every = [(t, float(i + 1)) for i, t in enumerate(ordered)]
    points = [(t, n) for t, n in every if start <= t <= end]
    if len(points) < 3 or points[-1][0] <= points[0][0]:
        points = every  # a run that finished in clumps (a short one): its whole slope
    mean_t = sum(t for t, _ in points) / len(points)
    mean_n = sum(n for _, n in points) / len(points)
    variance = sum((t - mean_t) ** 2 for t, _ in points)
    if variance <= 0:
        return math.nan
    return sum((t - mean_t) * (n - mean_n) for t, n in points) / variance


# --- memory of a process tree -------------------------------------------------------------


def _own_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int) -> tuple[str, int, int] | None:
    """(name, VmRSS kB, VmHWM kB) from /proc/<pid>/status, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    if "VmRSS" not in fields:  # a zombie
        return None
    return fields.get("Name", "?"), int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@dataclass
class TreeMemory:
    """Samples the resident memory of a process and all its descendants, in a thread.

    ``peak_total_mb`` is the highest sum of VmRSS seen in one sample (every process of the
    tree at the same moment); ``hwm_mb`` holds each process's own high-water mark (VmHWM,
    kept by the kernel, so a short peak between samples is not missed), as last read.
    """

    root: int
    interval: float = 0.02
    peak_total_kb: int = 0
    hwm_kb: dict[int, tuple[str, int]] = field(default_factory=dict)
    cpu_s: dict[int, float] = field(default_factory=dict)  # user + system, as last read
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TreeMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        total = 0
        pending = [self.root]
        while pending:
            pid = pending.pop()
            status = _status_kb(pid)
            if status is None:
                continue
            name, rss, hwm = status
            total += rss
            self.hwm_kb[pid] = (name, max(hwm, self.hwm_kb.get(pid, ("", 0))[1]))
            self.cpu_s[pid] = max(_own_cpu_seconds(pid), self.cpu_s.get(pid, 0.0))
            pending.extend(children(pid))
        self.peak_total_kb = max(self.peak_total_kb, total)

    @property
    def peak_total_mb(self) -> float:
        return round(self.peak_total_kb / 1024, 1)

    @property
    def root_hwm_mb(self) -> float:
        return round(self.hwm_kb.get(self.root, ("", 0))[1] / 1024, 1)

    @property
    def max_child_hwm_mb(self) -> float:
        children = [kb for pid, (_, kb) in self.hwm_kb.items() if pid != self.root]
        return round(max(children, default=0) / 1024, 1)

    @property
    def processes(self) -> int:
        return len(self.hwm_kb)

    @property
    def cpu_seconds(self) -> float:
        """CPU time of the whole tree (each process as last sampled, up to 20 ms short)."""
        return round(sum(self.cpu_s.values()), 2)

    def summary(self) -> dict[str, Any]:
        return {
            "cpu_s": self.cpu_seconds,
            "peak_total_rss_mb": self.peak_total_mb,
            "parent_hwm_mb": self.root_hwm_mb,
            "max_child_hwm_mb": self.max_child_hwm_mb,
            "processes": self.processes,
        }


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root: int) -> float:
    """User + system CPU time of a process and its live descendants (and their reaped
    children), from /proc/<pid>/stat."""
    total = 0.0
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(v) for v in fields[11:15]) / _TICK  # utime stime cutime cstime
        pending.extend(children(pid))
    return total


def machine_busy_seconds() -> float:
    """CPU seconds this machine spent busy (all processes, all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def run_child(
    module: str, args: Sequence[str], *, timeout: float = 900
) -> tuple[dict[str, Any], TreeMemory]:
    """Run ``python -m module args`` under a memory sampler; return its JSON answer.

    The child prints one JSON object as its last line of stdout. Running each measurement
    in a fresh interpreter keeps one measurement's memory out of the next one's.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    with TreeMemory(process.pid) as memory:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise RuntimeError(f"{module} {' '.join(args)} timed out:\n{err[-2000:]}") from None
    if process.returncode != 0:
        raise RuntimeError(
            f"{module} {' '.join(args)} failed ({process.returncode}):\n{err[-3000:]}"
        )
    lines = [line for line in out.splitlines() if line.strip()]
    return json.loads(lines[-1]), memory


def emit(answer: Mapping[str, Any]) -> None:
    """A child's answer to :func:`run_child`."""
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
