"""Optional sampling profiles of a service while a benchmark runs (``--profile``).

py-spy (``pip install py-spy``, not a project dependency) samples the process's Python
stacks; ``--gil`` keeps only the thread holding the GIL, so the shares are shares of the
Python CPU time the process actually got. The raw profile is written next to the results
and summarized by function (inclusive: a function's share counts its callees).
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Frames worth naming in a summary: the project's code and the libraries it calls per page.
INTERESTING = (
    "ocrpipe/",
    "ocr_worker/",
    "httpx/_client.py",
    "httpcore/_async/connection_pool.py",
    "storage/",
    "requests/sessions.py",
    "json/",
    "base64.py",
    "logging/",
    "anyio/to_thread.py",
)
_LINE = re.compile(r":\d+\)$")


@dataclass
class Profile:
    path: Path
    process: subprocess.Popen[bytes] | None

    def wait(self) -> Path | None:
        if self.process is None:
            return None
        self.process.wait(timeout=120)
        return self.path if self.path.exists() else None


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # installed into this venv
    return str(beside) if beside.exists() else shutil.which("py-spy")


def available() -> bool:
    return _py_spy() is not None


def record(pid: int, seconds: float, out: Path) -> Profile:
    """Start py-spy on ``pid`` for ``seconds``; no-op if py-spy is missing."""
    py_spy = _py_spy()
    if py_spy is None:
        return Profile(out, None)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds))]
    command += ["--rate", "200", "--gil", "--nonblocking", "--format", "raw", "--output", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Profile(out, process)


def summarize(raw: Path, top: int = 15) -> list[tuple[float, str]]:
    """(share of samples, function) for the interesting functions, largest first."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        for name in {_LINE.sub(")", frame) for frame in stack.split(";")}:
            if any(part in name for part in INTERESTING):
                inclusive[name] += samples
    if not total:
        return []
    return [(round(n / total, 3), name) for name, n in inclusive.most_common(top)]
