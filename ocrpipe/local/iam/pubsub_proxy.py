"""An authorizing gRPC proxy in front of Google's Pub/Sub emulator (local stack only).

The emulator enforces no IAM; production does. The proxy gives every identity of the local
stack its own port and checks each call against the grants in ``ocrpipe/iam.json`` (through
:class:`~ocrpipe.local.iam.policy.Authorizer`) before it forwards the call, as raw bytes, to
the emulator. What it checks, per method of the Pub/Sub API (the permissions Pub/Sub's
access-control page lists; ``P`` project, ``T`` topic, ``S`` subscription)::

    Publisher/Publish                      pubsub.topics.publish          projects/P/topics/T
    Publisher/GetTopic, ListTopicSubscriptions, ListTopicSnapshots
                                           pubsub.topics.get              projects/P/topics/T
    Publisher/ListTopics                   pubsub.topics.list             projects/P
    Subscriber/Pull, StreamingPull, Acknowledge, ModifyAckDeadline, Seek
                                           pubsub.subscriptions.consume   projects/P/subscriptions/S
    Subscriber/GetSubscription             pubsub.subscriptions.get       projects/P/subscriptions/S
    Subscriber/ListSubscriptions           pubsub.subscriptions.list      projects/P
    Subscriber/GetSnapshot, ListSnapshots  pubsub.snapshots.get, .list    the snapshot, projects/P
    admin: Create*, Update*, Delete*, ModifyPushConfig, DetachSubscription, Get/SetIamPolicy
                                           pubsub.<kind>.create, ...      projects/P or the object
    anything else (SchemaService, TestIamPermissions): refused, the proxy fails closed

No service identity is granted an admin permission.

A request that sets a singular field twice (legal protobuf: the last value counts) is
refused as ambiguous, at any depth of singular sub-messages: the proxy checks the value it
parsed and forwards the bytes, so it never relies on the emulator's parser agreeing.

StreamingPull is checked on its first request (the only one that names the subscription);
then both directions are relayed. A refusal is what Pub/Sub answers: gRPC
``PERMISSION_DENIED``, "User not authorized to perform this action.", plus one JSON log line
naming identity, permission and resource. Every decision is appended to the usage file as a
JSON line ``{"identity", "permission", "resource", "allowed", "grant"}`` (``grant``: the
granted pattern that allowed it, which :func:`~ocrpipe.local.iam.policy.usage_report` needs).

The stack's own setup (topics, subscriptions) talks to the emulator directly, as terraform
does in production. Run::

    python -m ocrpipe.local.iam.pubsub_proxy --upstream 127.0.0.1:8085 \\
        --listen splitter=8090 --listen operator=8091 --usage-file usage.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from ocrpipe.local.iam.policy import Decision

logger = logging.getLogger(__name__)

DENIED_MESSAGE = "User not authorized to perform this action."
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_SKIPPED_METADATA = ("user-agent", "grpc-", ":")


class Policy(Protocol):
    """What the proxy needs of :class:`~ocrpipe.local.iam.policy.Authorizer`."""

    def check(
        self, identity: str, permission: str, resource: str, *, list_prefix: str | None = None
    ) -> Decision: ...


# --- which permission each method needs ----------------------------------------------------


class AmbiguousRequest(ValueError):
    """A request the emulator could read otherwise than the proxy: refused."""


@dataclass(frozen=True)
class Rule:
    """How to find the resource in a method's request, and the permission it needs."""

    message: Any  # the request's protobuf message class
    resource: Callable[[Any], str]
    permission: str | Callable[[str], str]
    streaming: bool = False

    def parse(self, request: bytes) -> Any:
        """The request; :class:`AmbiguousRequest` if it sets a singular field twice."""
        if twice := _set_twice(self.message.DESCRIPTOR, request):
            raise AmbiguousRequest(f"{twice} is set twice")
        return self.message.FromString(request)

    def permission_for(self, resource: str) -> str:
        return self.permission if isinstance(self.permission, str) else self.permission(resource)


def _pb(name: str) -> Any:
    from google.pubsub_v1 import types

    return getattr(types, name).pb()


def _iam_pb(name: str) -> Any:
    from google.iam.v1 import iam_policy_pb2

    return getattr(iam_policy_pb2, name)


def _set_twice(descriptor: Any, data: bytes) -> str | None:
    """The first singular field (``topic``, ``subscription.name``) that ``data`` sets more
    than once, by reading the wire format against the message's descriptor."""
    seen: dict[int, bytes | None] = {}
    for number, chunk in _wire_fields(data):
        field = descriptor.fields_by_number.get(number)
        if field is None or field.is_repeated:
            continue
        if number in seen:
            return str(field.name)
        seen[number] = chunk
        inner = _set_twice(field.message_type, chunk) if field.message_type and chunk else None
        if inner:
            return f"{field.name}.{inner}"
    return None


def _wire_fields(data: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(field number, payload of a length-delimited field) for each field of ``data``."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(data, position)
            yield number, None
        elif wire_type == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("a truncated field")
            yield number, data[position : position + length]
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
            yield number, None
        else:
            raise ValueError(f"wire type {wire_type} (groups) is not used by Pub/Sub")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("a truncated or oversized varint")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            return value, position


def _project(name: str) -> str:
    """``projects/P/topics/T`` -> ``projects/P``."""
    return "/".join(name.split("/")[:2])


def _iam_permission(verb: str) -> Callable[[str], str]:
    def permission(resource: str) -> str:
        kind = resource.split("/")[2] if resource.count("/") >= 3 else "unknown"
        return f"pubsub.{kind}.{verb}"

    return permission


def _rules() -> dict[str, Rule]:
    pub, sub = "/google.pubsub.v1.Publisher/", "/google.pubsub.v1.Subscriber/"

    def field(name: str) -> Callable[[Any], str]:
        return lambda request: str(getattr(request, name))

    def nested(outer: str, inner: str = "name") -> Callable[[Any], str]:
        return lambda request: str(getattr(getattr(request, outer), inner))

    def project_of(name: str) -> Callable[[Any], str]:
        return lambda request: _project(str(getattr(request, name)))

    consume = "pubsub.subscriptions.consume"
    return {
        pub + "Publish": Rule(_pb("PublishRequest"), field("topic"), "pubsub.topics.publish"),
        pub + "GetTopic": Rule(_pb("GetTopicRequest"), field("topic"), "pubsub.topics.get"),
        pub + "ListTopicSubscriptions": Rule(
            _pb("ListTopicSubscriptionsRequest"), field("topic"), "pubsub.topics.get"
        ),
        pub + "ListTopicSnapshots": Rule(
            _pb("ListTopicSnapshotsRequest"), field("topic"), "pubsub.topics.get"
        ),
        pub + "ListTopics": Rule(_pb("ListTopicsRequest"), field("project"), "pubsub.topics.list"),
        pub + "CreateTopic": Rule(_pb("Topic"), project_of("name"), "pubsub.topics.create"),
        pub + "UpdateTopic": Rule(
            _pb("UpdateTopicRequest"), nested("topic"), "pubsub.topics.update"
        ),
        pub + "DeleteTopic": Rule(
            _pb("DeleteTopicRequest"), field("topic"), "pubsub.topics.delete"
        ),
        pub + "DetachSubscription": Rule(
            _pb("DetachSubscriptionRequest"),
            field("subscription"),
            "pubsub.topics.detachSubscription",
        ),
        sub + "Pull": Rule(_pb("PullRequest"), field("subscription"), consume),
        sub + "StreamingPull": Rule(
            _pb("StreamingPullRequest"), field("subscription"), consume, streaming=True
        ),
        sub + "Acknowledge": Rule(_pb("AcknowledgeRequest"), field("subscription"), consume),
        sub + "ModifyAckDeadline": Rule(
            _pb("ModifyAckDeadlineRequest"), field("subscription"), consume
        ),
        sub + "Seek": Rule(_pb("SeekRequest"), field("subscription"), consume),
        sub + "GetSubscription": Rule(
            _pb("GetSubscriptionRequest"), field("subscription"), "pubsub.subscriptions.get"
        ),
        sub + "ListSubscriptions": Rule(
            _pb("ListSubscriptionsRequest"), field("project"), "pubsub.subscriptions.list"
        ),
        sub + "CreateSubscription": Rule(
            _pb("Subscription"), project_of("name"), "pubsub.subscriptions.create"
        ),
        sub + "UpdateSubscription": Rule(
            _pb("UpdateSubscriptionRequest"), nested("subscription"), "pubsub.subscriptions.update"
        ),
        sub + "ModifyPushConfig": Rule(
            _pb("ModifyPushConfigRequest"), field("subscription"), "pubsub.subscriptions.update"
        ),
        sub + "DeleteSubscription": Rule(
            _pb("DeleteSubscriptionRequest"), field("subscription"), "pubsub.subscriptions.delete"
        ),
        sub + "GetSnapshot": Rule(
            _pb("GetSnapshotRequest"), field("snapshot"), "pubsub.snapshots.get"
        ),
        sub + "ListSnapshots": Rule(
            _pb("ListSnapshotsRequest"), field("project"), "pubsub.snapshots.list"
        ),
        sub + "CreateSnapshot": Rule(
            _pb("CreateSnapshotRequest"), project_of("name"), "pubsub.snapshots.create"
        ),
        sub + "UpdateSnapshot": Rule(
            _pb("UpdateSnapshotRequest"), nested("snapshot"), "pubsub.snapshots.update"
        ),
        sub + "DeleteSnapshot": Rule(
            _pb("DeleteSnapshotRequest"), field("snapshot"), "pubsub.snapshots.delete"
        ),
        "/google.iam.v1.IAMPolicy/GetIamPolicy": Rule(
            _iam_pb("GetIamPolicyRequest"), field("resource"), _iam_permission("getIamPolicy")
        ),
        "/google.iam.v1.IAMPolicy/SetIamPolicy": Rule(
            _iam_pb("SetIamPolicyRequest"), field("resource"), _iam_permission("setIamPolicy")
        ),
    }


# --- the proxy ------------------------------------------------------------------------------


class UsageLog:
    """Appends every decision to a JSON-lines file (thread-safe)."""

    def __init__(self, path: Path | None) -> None:
        self._handle = path.open("a", encoding="utf-8") if path else None
        self._lock = threading.Lock()

    def record(self, decision: Decision) -> None:
        if self._handle is None:
            return
        line = json.dumps(dataclasses.asdict(decision))
        with self._lock:
            self._handle.write(line + "\n")
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            with self._lock:
                self._handle.close()


class _IdentityHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every call that arrives on one identity's port."""

    def __init__(self, identity: str, proxy: PubSubProxy) -> None:
        self._identity = identity
        self._proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        rule = self._proxy.rules.get(method)
        if rule is None:
            return grpc.stream_stream_rpc_method_handler(self._refuse_unknown(method))
        if rule.streaming:
            return grpc.stream_stream_rpc_method_handler(self._relay_stream(method, rule))
        return grpc.unary_unary_rpc_method_handler(self._relay_unary(method, rule))

    def _relay_unary(self, method: str, rule: Rule) -> Callable[[bytes, Any], bytes]:
        def behaviour(request: bytes, context: grpc.ServicerContext) -> bytes:
            self._authorize(rule, request, context)
            upstream = self._proxy.upstream_unary(method)
            try:
                response: bytes = upstream(
                    request, timeout=context.time_remaining(), metadata=_metadata(context)
                )
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details())
            return response

        return behaviour

    def _relay_stream(
        self, method: str, rule: Rule
    ) -> Callable[[Iterator[bytes], Any], Iterator[bytes]]:
        def behaviour(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            first = next(requests, None)
            if first is None:
                return
            self._authorize(rule, first, context)
            call = self._proxy.upstream_stream(method)(
                itertools.chain([first], requests), metadata=_metadata(context)
            )
            context.add_callback(call.cancel)
            try:
                yield from call
            except grpc.RpcError as exc:
                if context.is_active():
                    context.abort(exc.code(), exc.details())

        return behaviour

    def _refuse_unknown(self, method: str) -> Callable[[Iterator[bytes], Any], Iterator[bytes]]:
        def behaviour(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            decision = Decision(False, self._identity, f"unsupported method {method}", "")
            self._proxy.usage.record(decision)
            self._proxy.refuse(decision, context)
            yield b""  # pragma: no cover - refuse() raises

        return behaviour

    def _authorize(self, rule: Rule, request: bytes, context: grpc.ServicerContext) -> None:
        try:
            resource = rule.resource(rule.parse(request))
        except AmbiguousRequest as exc:
            decision = Decision(False, self._identity, "ambiguous", str(exc))
            self._proxy.usage.record(decision)
            self._proxy.refuse(decision, context)
            return  # pragma: no cover - refuse() raises
        except Exception:  # a request the proxy cannot read is not forwarded (fails closed)
            resource = ""
        permission = rule.permission_for(resource)
        decision = (
            self._proxy.policy.check(self._identity, permission, resource)
            if resource
            else Decision(False, self._identity, permission, "")
        )
        self._proxy.usage.record(decision)
        if not decision.allowed:
            self._proxy.refuse(decision, context)


def _metadata(context: grpc.ServicerContext) -> list[tuple[str, str | bytes]]:
    return [
        (key, value)
        for key, value in context.invocation_metadata()
        if not key.startswith(_SKIPPED_METADATA)
    ]


class PubSubProxy:
    """One process, one gRPC server per identity, all forwarding to one emulator."""

    def __init__(
        self,
        upstream: str,
        listen: Mapping[str, int],
        policy: Policy,
        usage_file: Path | None = None,
        *,
        max_workers: int = 32,
    ) -> None:
        self.policy = policy
        self.usage = UsageLog(usage_file)
        self.rules = _rules()
        self._channel = grpc.insecure_channel(upstream, options=_UNLIMITED)
        self._unary: dict[str, Callable[..., bytes]] = {}
        self._stream: dict[str, Callable[..., Any]] = {}
        self._servers: list[grpc.Server] = []
        self._listen = dict(listen)
        self._max_workers = max_workers

    def start(self) -> None:
        for identity, port in self._listen.items():
            server = grpc.server(
                futures.ThreadPoolExecutor(
                    max_workers=self._max_workers, thread_name_prefix=f"pubsub-{identity}"
                ),
                handlers=[_IdentityHandler(identity, self)],
                options=_UNLIMITED,
            )
            if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
                raise OSError(f"cannot listen on 127.0.0.1:{port} for {identity}")
            server.start()
            self._servers.append(server)

    def stop(self, grace: float = 1.0) -> None:
        for server in self._servers:
            server.stop(grace).wait()
        self._servers.clear()
        self._channel.close()
        self.usage.close()

    def wait(self) -> None:
        for server in self._servers:
            server.wait_for_termination()

    def upstream_unary(self, method: str) -> Callable[..., bytes]:
        if method not in self._unary:
            self._unary[method] = self._channel.unary_unary(method)
        return self._unary[method]

    def upstream_stream(self, method: str) -> Callable[..., Any]:
        if method not in self._stream:
            self._stream[method] = self._channel.stream_stream(method)
        return self._stream[method]

    def refuse(self, decision: Decision, context: grpc.ServicerContext) -> None:
        # The same line as the GCS proxy's: one JSON log line naming all three.
        if decision.permission == "ambiguous":
            logger.warning(
                "refused: %s sent a request the emulator could read otherwise (%s)",
                decision.identity,
                decision.resource,
                extra={"reason": "access_denied", "status": 403},
            )
            context.abort(grpc.StatusCode.PERMISSION_DENIED, DENIED_MESSAGE)
        logger.warning(
            "refused: %s lacks %s on %s",
            decision.identity,
            decision.permission,
            decision.resource or "(no resource)",
            extra={"reason": "access_denied", "status": 403},
        )
        context.abort(grpc.StatusCode.PERMISSION_DENIED, DENIED_MESSAGE)


def parse_listen(values: Iterable[str]) -> dict[str, int]:
    """``["splitter=8090", ...]`` -> ``{"splitter": 8090, ...}``."""
    listen: dict[str, int] = {}
    for value in values:
        identity, _, port = value.partition("=")
        if not identity or not port.isdigit():
            raise argparse.ArgumentTypeError(f"--listen wants IDENTITY=PORT, not {value!r}")
        listen[identity] = int(port)
    return listen


def main(argv: Sequence[str] | None = None) -> None:
    from ocrpipe.local.iam.policy import Authorizer
    from ocrpipe.logs import configure_logging
    from ocrpipe.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the emulator, HOST:PORT")
    parser.add_argument("--listen", action="append", default=[], help="IDENTITY=PORT")
    parser.add_argument("--usage-file", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = Settings()  # bucket, topic names; OCRPIPE_IAM_OVERRIDES_FILE for tests
    configure_logging(settings.log_level, service="pubsub-proxy")
    policy = Authorizer.from_grants(settings)
    proxy = PubSubProxy(args.upstream, parse_listen(args.listen), policy, args.usage_file)
    proxy.start()
    signal.signal(signal.SIGTERM, lambda *_: proxy.stop())
    logger.info("pubsub proxy listening: %s", args.listen)
    try:
        proxy.wait()
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
