"""The local stack delivers pages the way production push does, with production's
concurrency: a batching OCR server (K = 32) sees its batch filled, not the emulator's two
pushes. And the one place that says how local delivery differs from production."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from ocrpipe.local.pubsub_admin import local_retention
from ocrpipe.local.stack import LocalStack, free_ports
from ocrpipe.pubsub import subscriber_client
from ocrpipe.storage import GcsStore
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.topology import load_topology
from tests.conftest import unique_name, wait_until_finished

pytestmark = pytest.mark.e2e

BATCH = 32


@pytest.fixture(scope="module")
def batching_stack() -> Iterator[LocalStack]:
    ports = free_ports()
    command = [sys.executable, "-m", "ocrpipe.local.faults", "--host", "127.0.0.1",
               "--port", str(ports.ocr), "--log-level", "warning",
               "--batch-size", str(BATCH), "--service-time", "2"]  # fmt: skip
    stack = LocalStack(ports=ports, ocr_command=command, bucket_suffix=f"-{uuid.uuid4().hex[:6]}")
    with stack:
        yield stack


def test_delivery_keeps_the_gpu_batch_full(batching_stack: LocalStack) -> None:
    settings = batching_stack.settings
    store = GcsStore.connect(batching_stack.project, settings.storage_emulator_host)
    names = [unique_name(f"batch-{i}") for i in range(2)]
    for index, name in enumerate(names):
        blob = store.client.bucket(settings.input_bucket).blob(name)
        blob.upload_from_string(text_pdf(BATCH, seed=40 + index, lines=2)[0])
    for name in names:
        assert wait_until_finished(batching_stack, store, name).state == "done"
    stats = httpx.get(f"{settings.ocr_url}/stats", timeout=10).json()
    print(f"at the OCR server (K={BATCH}): at most {stats['max_in_flight']} pages in service")
    # The emulator's own push never had more than 2 pages at the server.
    assert stats["max_in_flight"] >= 16, stats


def test_local_delivery_differs_from_production_only_by_push(batching_stack: LocalStack) -> None:
    """Production: a push subscription to the worker (terraform/pubsub.tf, checked by
    tests/test_terraform.py). Locally: the same subscription as a pull subscription, which
    the stack's relay (ocrpipe/local/relay.py) delivers from with production's concurrency,
    acking 102/200/201/202/204 and nacking the rest, with the ack deadline as HTTP timeout.
    Also different locally: no OIDC token on deliveries (push auth off), N deliveries open
    from the start instead of a concurrency that grows, a timed-out request is cancelled.
    Everything below is equal to production."""
    topology = load_topology()
    settings = batching_stack.admin_settings
    subscriber = subscriber_client(settings.pubsub_emulator_host)
    path = subscriber.subscription_path(batching_stack.project, settings.pages_subscription)
    current = subscriber.get_subscription(request={"subscription": path})
    subscriber.close()
    assert current.push_config.push_endpoint == ""  # pull: the relay pushes
    assert current.topic.endswith(f"/topics/{topology.pages_topic}")
    assert current.ack_deadline_seconds == topology.ack_deadline_seconds
    assert current.retry_policy.minimum_backoff.seconds == topology.retry_minimum_backoff_seconds
    assert current.retry_policy.maximum_backoff.seconds == topology.retry_maximum_backoff_seconds
    policy = current.dead_letter_policy
    assert policy.dead_letter_topic.endswith(f"/topics/{topology.dead_letter_topic}")
    assert policy.max_delivery_attempts == topology.max_delivery_attempts
    retention = current.message_retention_duration.total_seconds()
    # The emulator keeps at most 7 days (production 31): the one clamped number.
    assert retention == local_retention(topology.message_retention_seconds)
