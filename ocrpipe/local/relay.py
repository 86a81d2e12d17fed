"""Push delivery for the local stack: a relay from a pull subscription to the worker.

Production delivers pages by Pub/Sub push, whose concurrency grows with the rate of
successful answers up to what the worker accepts (about the GPU's batch). Google's Pub/Sub
emulator runs two push loops per subscription, each sending one message and waiting for
its answer: two pages in flight, whatever the GPU could take. So the local stack creates
the pages subscription as a *pull* subscription, with the same ack deadline, retry policy,
dead-letter policy and retention (``ocrpipe/topology.json``; terraform keeps push), and
this relay plays Pub/Sub's push side:

* it streams messages from the subscription with at most ``N`` outstanding
  (``FlowControl(max_messages=N)``, N = :attr:`Settings.delivery_max_in_flight`, by default
  ``ocr_max_in_flight``) and POSTs each to the worker in the wrapped push envelope
  (:func:`push_envelope`), ``deliveryAttempt`` included (the emulator counts attempts when
  a dead-letter policy is set);
* it acks what production push acks (:data:`ACK_STATUSES`) and nacks anything else, a
  connection error included; the emulator then redelivers after the subscription's retry
  policy's backoff and dead-letters after ``max_delivery_attempts`` (measured for pull:
  redeliveries 0, 13, 21, 23 s apart with 10..600 s, at once without a policy; dead letters
  carry the ``CloudPubSubDeadLetterSource*`` attributes);
* the HTTP timeout is the ack deadline, as for push, and a lease is kept no longer than the
  ack deadline (``max_lease_duration``): a request the worker does not answer in time is
  nacked, or redelivered by the emulator, as production redelivers a push that timed out.

What still differs from production (tests/test_relay_e2e.py states it in one place): the
relay sends no OIDC token (the worker's push auth is off locally), it keeps N deliveries
open from the first message instead of growing towards them, and a timed-out request is
cancelled (production lets it run on while it redelivers).

It talks to the emulator directly: it is Pub/Sub, not one of the stack's identities. Run::

    python -m ocrpipe.local.relay --endpoint http://127.0.0.1:8080/
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from ocrpipe.settings import Settings
from ocrpipe.topology import load_topology

logger = logging.getLogger(__name__)

# The status codes Pub/Sub push takes as an ack; anything else is a nack.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})


@dataclass(frozen=True)
class Delivery:
    """What a pull hands over of one message: what the push envelope carries."""

    data: bytes
    attributes: dict[str, str]
    message_id: str
    publish_time: datetime | None
    delivery_attempt: int | None


def delivery_of(message: Any) -> Delivery:
    """A ``google.cloud.pubsub_v1.subscriber.message.Message`` -> :class:`Delivery`."""
    return Delivery(
        data=bytes(message.data),
        attributes=dict(message.attributes),
        message_id=str(message.message_id),
        publish_time=message.publish_time,
        delivery_attempt=message.delivery_attempt,
    )


def push_envelope(delivery: Delivery, subscription_path: str) -> dict[str, Any]:
    """The body Pub/Sub push POSTs (the wrapped format), field names as it spells them."""
    published = None
    if delivery.publish_time is not None:
        published = delivery.publish_time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    envelope: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(delivery.data).decode(),
            "attributes": delivery.attributes,
            "messageId": delivery.message_id,
            "message_id": delivery.message_id,
            "publishTime": published,
            "publish_time": published,
        },
        "subscription": subscription_path,
    }
    if delivery.delivery_attempt is not None:
        envelope["deliveryAttempt"] = delivery.delivery_attempt
    return envelope


def acked(status: int) -> bool:
    return status in ACK_STATUSES


@dataclass
class RelayCounts:
    acked: int = 0
    nacked: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


@dataclass
class PushRelay:
    """Streams a pull subscription into POSTs to ``endpoint``, ``max_in_flight`` at most."""

    emulator_host: str
    subscription_path: str
    endpoint: str
    max_in_flight: int
    ack_deadline_s: float
    counts: RelayCounts = field(default_factory=RelayCounts)

    async def run(self, stop: asyncio.Event) -> None:
        from google.cloud import pubsub_v1

        from ocrpipe.pubsub import subscriber_client

        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        limits = httpx.Limits(
            max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
        )
        subscriber = subscriber_client(self.emulator_host)
        async with httpx.AsyncClient(limits=limits, timeout=self.ack_deadline_s) as http:

            def start(message: Any) -> None:  # on the event loop
                task = loop.create_task(self._deliver(http, message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            flow = pubsub_v1.types.FlowControl(
                max_messages=self.max_in_flight,
                max_bytes=1 << 30,  # the count is the limit, not the bytes
                max_lease_duration=self.ack_deadline_s,
            )
            streaming = subscriber.subscribe(
                self.subscription_path,
                callback=lambda message: loop.call_soon_threadsafe(start, message),
                flow_control=flow,
            )
            logger.info(
                "relaying %s to %s, %d in flight at most",
                self.subscription_path,
                self.endpoint,
                self.max_in_flight,
            )
            try:
                ended = asyncio.wrap_future(streaming)
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({ended, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if ended.done():
                    ended.result()  # the stream failed: raise why
                stopped.cancel()
            finally:
                streaming.cancel()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                subscriber.close()

    async def _deliver(self, http: httpx.AsyncClient, message: Any) -> None:
        counts = self.counts
        counts.in_flight += 1
        counts.max_in_flight = max(counts.max_in_flight, counts.in_flight)
        ok = False
        try:
            body = push_envelope(delivery_of(message), self.subscription_path)
            answer = await http.post(self.endpoint, json=body)
            ok = acked(answer.status_code)
        except httpx.TransportError as exc:  # a timeout included: redelivered, as for push
            logger.warning("delivery of %s failed: %r", message.message_id, exc)
        finally:
            counts.in_flight -= 1
            if ok:
                counts.acked += 1
                message.ack()
            else:
                counts.nacked += 1
                message.nack()


def main(argv: Sequence[str] | None = None) -> None:
    from ocrpipe.logs import configure_logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="the worker's push URL")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, service="relay")
    if not settings.pubsub_emulator_host:
        parser.error("the relay serves the Pub/Sub emulator only: set PUBSUB_EMULATOR_HOST")
    relay = PushRelay(
        emulator_host=settings.pubsub_emulator_host,
        subscription_path=f"projects/{settings.project}/subscriptions/{settings.pages_subscription}",
        endpoint=args.endpoint,
        max_in_flight=settings.delivery_max_in_flight,
        ack_deadline_s=float(load_topology().ack_deadline_seconds),
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await relay.run(stop)
        counts = relay.counts
        logger.info(
            "relay stopped: %d acked, %d nacked, at most %d in flight",
            counts.acked,
            counts.nacked,
            counts.max_in_flight,
        )

    asyncio.run(serve())


if __name__ == "__main__":
    main()
