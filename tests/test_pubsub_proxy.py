"""The authorizing Pub/Sub proxy in front of the real emulator: what the grants of
ocrpipe/iam.json allow goes through, everything else is refused the way Pub/Sub refuses it,
and every decision lands in the usage file."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.cloud.pubsub_v1.subscriber.message import Message

from ocrpipe.errors import AccessDenied
from ocrpipe.local.iam.policy import Authorizer
from ocrpipe.local.iam.pubsub_proxy import DENIED_MESSAGE, PubSubProxy
from ocrpipe.local.readiness import START_S, exited, tcp_accepts, wait_until_ready
from ocrpipe.local.stack import find_pubsub_emulator, free_port
from ocrpipe.operations.pull import PubSubPullSubscription, Received
from ocrpipe.pubsub import OutgoingMessage, PubSubPublisher, publisher_client, subscriber_client
from ocrpipe.settings import Settings
from ocrpipe.testing.waiting import QUIET_S, wait_for

pytestmark = pytest.mark.e2e

# The operator gets the dead-letter grants an operator needs; the rest is iam.json as is.
OPERATOR = {
    "operator": {
        "add": [
            {"topic": "dead_letter_topic", "role": "roles/pubsub.publisher"},
            {"subscription": "dead_letter_subscription", "role": "roles/pubsub.subscriber"},
        ]
    }
}


@dataclass
class Proxied:
    settings: Settings
    emulator: str
    ports: dict[str, int]
    usage_file: Path

    def host(self, identity: str) -> str:
        return f"127.0.0.1:{self.ports[identity]}"

    def usage(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.usage_file.read_text().splitlines()]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("pubsub") / "emulator.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [find_pubsub_emulator(), "--host=127.0.0.1", f"--port={port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"JAVA_OPTS": "-Xmx256m", "PATH": "/usr/bin:/bin"},
        start_new_session=True,
    )
    try:
        wait_until_ready(
            tcp_accepts(port),
            what="the Pub/Sub emulator",
            timeout=START_S,
            died=exited(process, log_path),
        )
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture
def proxied(emulator: str, tmp_path: Path) -> Iterator[Proxied]:
    suffix = uuid.uuid4().hex[:6]
    settings = Settings(
        project="proxy-test",
        pages_topic=f"pages-{suffix}",
        dead_letter_topic=f"dead-{suffix}",
        dead_letter_subscription=f"dead-pull-{suffix}",
    )
    publisher, subscriber = publisher_client(emulator), subscriber_client(emulator)
    for topic in (settings.pages_topic, settings.dead_letter_topic):
        publisher.create_topic(name=publisher.topic_path(settings.project, topic))
    subscriber.create_subscription(
        name=subscriber.subscription_path(settings.project, settings.dead_letter_subscription),
        topic=publisher.topic_path(settings.project, settings.dead_letter_topic),
    )
    publisher.transport.close()
    subscriber.close()
    ports = {identity: free_port() for identity in ("splitter", "worker", "operator")}
    usage_file = tmp_path / "usage.jsonl"
    policy = Authorizer.from_grants(settings, overrides=OPERATOR)
    proxy = PubSubProxy(emulator, ports, policy, usage_file)
    proxy.start()
    try:
        yield Proxied(settings, emulator, ports, usage_file)
    finally:
        proxy.stop()


def message(text: str) -> OutgoingMessage:
    return OutgoingMessage(text.encode(), {"doc_id": "d1"})


def test_granted_calls_go_through_to_the_emulator(proxied: Proxied) -> None:
    settings = proxied.settings
    splitter = PubSubPublisher.connect(settings.project, proxied.host("splitter"))
    assert len(splitter.publish_all(settings.pages_topic, [message("page 1")])) == 1

    operator = PubSubPublisher.connect(settings.project, proxied.host("operator"))
    operator.publish_all(settings.dead_letter_topic, [message("letter")])
    dead = PubSubPullSubscription.connect(
        settings.project, settings.dead_letter_subscription, proxied.host("operator")
    )
    received: list[Received] = []

    def pulled() -> int:
        received.extend(dead.pull(10))
        return len(received)

    wait_for(pulled, lambda count: count > 0, what="the dead letter through the proxy")
    assert [r.data for r in received] == [b"letter"]
    assert received[0].attributes["doc_id"] == "d1"
    dead.set_lease([r.ack_id for r in received], 30)
    dead.ack([r.ack_id for r in received])
    dead.close()

    # Acked through the proxy, so gone at the emulator itself.
    client = subscriber_client(proxied.emulator)
    direct = PubSubPullSubscription(
        client,
        client.subscription_path(settings.project, settings.dead_letter_subscription),
        wait_seconds=1.0,
    )
    assert direct.pull(10) == []
    direct.close()


def test_a_publish_without_grant_is_refused_as_pubsub_refuses_it(
    proxied: Proxied, caplog: pytest.LogCaptureFixture
) -> None:
    settings = proxied.settings
    worker = PubSubPublisher.connect(settings.project, proxied.host("worker"))
    with pytest.raises(AccessDenied) as raised:
        worker.publish_all(settings.pages_topic, [message("forged page")])
    cause = raised.value.__cause__
    assert isinstance(cause, gexc.PermissionDenied), cause
    assert cause.message == DENIED_MESSAGE == "User not authorized to perform this action."

    topic = f"projects/{settings.project}/topics/{settings.pages_topic}"
    refusals = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"refused: worker lacks pubsub.topics.publish on {topic}" in refusals
    # The refused call was never forwarded.
    assert not any(u["identity"] == "worker" and u["allowed"] for u in proxied.usage()), (
        proxied.usage()
    )


def test_admin_calls_and_unknown_methods_are_refused_to_every_service(
    proxied: Proxied,
) -> None:
    settings = proxied.settings
    for identity in ("splitter", "worker"):
        publisher = publisher_client(proxied.host(identity))
        subscriber = subscriber_client(proxied.host(identity))
        with pytest.raises(gexc.PermissionDenied):
            publisher.create_topic(name=f"projects/{settings.project}/topics/new-{identity}")
        with pytest.raises(gexc.PermissionDenied):
            subscriber.delete_subscription(
                subscription=f"projects/{settings.project}/subscriptions/"
                f"{settings.dead_letter_subscription}"
            )
        publisher.transport.close()
        subscriber.close()
    # The subscription survived the refused delete.
    direct = subscriber_client(proxied.emulator)
    path = direct.subscription_path(settings.project, settings.dead_letter_subscription)
    assert direct.get_subscription(subscription=path).name == path
    direct.close()

    # A method the proxy has no rule for fails closed (SchemaService is one).
    from google.pubsub_v1 import SchemaServiceClient
    from google.pubsub_v1.services.schema_service.transports import SchemaServiceGrpcTransport

    channel = grpc.insecure_channel(proxied.host("operator"))
    schemas = SchemaServiceClient(transport=SchemaServiceGrpcTransport(channel=channel))
    with pytest.raises(gexc.PermissionDenied):
        list(schemas.list_schemas(parent=f"projects/{settings.project}"))

    refused = {(u["identity"], u["permission"]) for u in proxied.usage() if not u["allowed"]}
    assert ("splitter", "pubsub.topics.create") in refused
    assert ("worker", "pubsub.subscriptions.delete") in refused
    assert ("operator", "unsupported method /google.pubsub.v1.SchemaService/ListSchemas") in (
        refused
    )


def test_streaming_pull_is_checked_on_its_first_request_then_relayed(proxied: Proxied) -> None:
    settings = proxied.settings
    PubSubPublisher.connect(settings.project, proxied.emulator).publish_all(
        settings.dead_letter_topic, [message(f"letter {i}") for i in range(3)]
    )
    path = f"projects/{settings.project}/subscriptions/{settings.dead_letter_subscription}"

    refused = subscriber_client(proxied.host("worker")).subscribe(path, lambda m: m.ack())
    with pytest.raises(gexc.PermissionDenied):
        refused.result(timeout=QUIET_S)

    got: list[bytes] = []

    def take(message: Message) -> None:
        got.append(message.data)
        message.ack()

    operator = subscriber_client(proxied.host("operator"))
    future = operator.subscribe(path, take)
    wait_for(lambda: len(got), lambda count: count >= 3, what="3 letters streamed through")
    future.cancel()
    operator.close()
    assert sorted(got) == [b"letter 0", b"letter 1", b"letter 2"]


def test_every_decision_is_recorded_with_the_grant_that_allowed_it(proxied: Proxied) -> None:
    settings = proxied.settings
    PubSubPublisher.connect(settings.project, proxied.host("splitter")).publish_all(
        settings.pages_topic, [message("page 1")]
    )
    with pytest.raises(AccessDenied):
        PubSubPublisher.connect(settings.project, proxied.host("worker")).publish_all(
            settings.pages_topic, [message("page 1")]
        )
    topic = f"projects/{settings.project}/topics/{settings.pages_topic}"
    assert proxied.usage() == [
        {"allowed": True, "identity": "splitter", "permission": "pubsub.topics.publish",
         "resource": topic, "grant": topic},
        {"allowed": False, "identity": "worker", "permission": "pubsub.topics.publish",
         "resource": topic, "grant": None},
    ]  # fmt: skip


@pytest.mark.parametrize("identity", ["splitter", "worker", "operator"])
def test_a_request_naming_its_resource_twice_is_refused_for_every_identity(
    proxied: Proxied, identity: str
) -> None:
    """A field sent twice is legal protobuf (the last one counts), but a proxy that checks
    one value while the emulator could act on another is guessing: it refuses."""
    from google.pubsub_v1 import types

    settings = proxied.settings
    topics = [f"projects/{settings.project}/topics/{t}"
              for t in (settings.pages_topic, settings.dead_letter_topic)]  # fmt: skip
    watch = f"projects/{settings.project}/subscriptions/watch-{uuid.uuid4().hex[:6]}"
    direct = subscriber_client(proxied.emulator)
    direct.create_subscription(name=watch, topic=topics[0])
    channel = grpc.insecure_channel(proxied.host(identity))
    publish = channel.unary_unary("/google.pubsub.v1.Publisher/Publish")
    pull = channel.unary_unary("/google.pubsub.v1.Subscriber/Pull")
    subscription = f"projects/{settings.project}/subscriptions/{settings.dead_letter_subscription}"
    requests = [
        (publish, types.PublishRequest.pb()(topic=first).SerializeToString()
         + types.PublishRequest.pb()(topic=last, messages=[{"data": b"x"}]).SerializeToString())
        for first, last in (topics, topics[::-1])
    ] + [
        (pull, types.PullRequest.pb()(subscription=watch).SerializeToString()
         + types.PullRequest.pb()(subscription=subscription, max_messages=1).SerializeToString()),
    ]  # fmt: skip
    for call, request in requests:
        with pytest.raises(grpc.RpcError) as refused:
            call(request, timeout=QUIET_S)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value
    channel.close()
    assert direct.pull(subscription=watch, max_messages=10, timeout=5).received_messages == []
    direct.delete_subscription(subscription=watch)
    direct.close()
    ambiguous = [u for u in proxied.usage() if u["identity"] == identity
                 and u["permission"] == "ambiguous"]  # fmt: skip
    assert len(ambiguous) == len(requests) and not any(u["allowed"] for u in ambiguous)
