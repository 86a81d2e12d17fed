"""Push delivery for the local stack: a relay from a pull subscription to the worker.

Production delivers pages by Pub/Sub push, whose concurrency grows with the rate of
successful answers up to what the worker accepts (about the GPU's batch). Google's Pub/Sub
emulator runs two push loops per subscription, each sending one message and waiting for
its answer: two pages in flight, whatever the GPU could take. So the local stack creates
the pages subscription as a *pull* subscription, with the same ack deadline, retry policy,
dead-letter policy and retention (``ocrpipe/topology.json``; terraform keeps push), and
this relay plays Pub/Sub's push side:

* it pulls messages whenever fewer than ``N`` deliveries are open
  (N = :attr:`Settings.delivery_max_in_flight`: by default ``ocr_max_in_flight``, a GPU's
  batch, or two per thread of the stack's own CPU engine) and
  POSTs each to the worker in the wrapped push envelope (:func:`push_envelope`),
  ``deliveryAttempt`` included (the emulator counts attempts when a dead-letter policy is
  set). Unary pull, not streaming pull: through the client library's streaming pull with
  ``FlowControl(max_messages=64)`` the emulator delivered in bursts of 64 about 65 s apart
  (measured in the saturation benchmark), unary pull keeps N open;
* it acks what production push acks (:data:`ACK_STATUSES`) and nacks anything else, a
  connection error included; the emulator then redelivers after the subscription's retry
  policy's backoff and dead-letters after ``max_delivery_attempts`` (measured for pull:
  redeliveries 0, 13, 21, 23 s apart with 10..600 s, at once without a policy; dead letters
  carry the ``CloudPubSubDeadLetterSource*`` attributes);
* the HTTP timeout is the ack deadline, as for push, and a pulled message's deadline is
  never extended: a request the worker does not answer in time is redelivered, as
  production redelivers a push that timed out.

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
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from ocrpipe.settings import Settings
from ocrpipe.topology import load_topology

logger = logging.getLogger(__name__)

# How long one pull waits at the emulator for messages. A relay killed meanwhile leaves its
# pull open there that long, and it still takes messages (the stack releases them).
PULL_TIMEOUT_S = 5.0
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


def delivery_of(received: Any) -> Delivery:
    """A pulled ``ReceivedMessage`` -> :class:`Delivery` (``delivery_attempt`` 0: unset)."""
    message = received.message
    return Delivery(
        data=bytes(message.data),
        attributes=dict(message.attributes),
        message_id=str(message.message_id),
        publish_time=message.publish_time,
        delivery_attempt=received.delivery_attempt or None,
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
    """Pulls from ``subscription_path`` and POSTs to ``endpoint``, ``max_in_flight`` at most.

    Pulled messages carry the subscription's ack deadline and are not extended: one the
    worker has not answered within it is redelivered, as for push. Acks and nacks go back
    in batches every :attr:`flush_s`, as a client library sends them."""

    emulator_host: str
    subscription_path: str
    endpoint: str
    max_in_flight: int
    ack_deadline_s: float
    flush_s: float = 0.05
    pull_timeout_s: float = PULL_TIMEOUT_S
    counts: RelayCounts = field(default_factory=RelayCounts)
    _acks: list[str] = field(default_factory=list)
    _nacks: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        from ocrpipe.pubsub import subscriber_client

        subscriber = subscriber_client(self.emulator_host)
        tasks: set[asyncio.Task[None]] = set()
        slot_freed = asyncio.Event()
        limits = httpx.Limits(
            max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
        )
        logger.info(
            "relaying %s to %s, %d in flight at most",
            self.subscription_path,
            self.endpoint,
            self.max_in_flight,
        )
        async with httpx.AsyncClient(limits=limits, timeout=self.ack_deadline_s) as http:
            flusher = asyncio.create_task(self._flush_every(subscriber))
            try:
                while not stop.is_set():
                    free = self.max_in_flight - self.counts.in_flight
                    if free <= 0:
                        slot_freed.clear()
                        await _first(slot_freed.wait(), stop.wait())
                        continue
                    pulled = await asyncio.to_thread(self._pull, subscriber, free)
                    for received in pulled:
                        task = asyncio.create_task(self._deliver(http, received, slot_freed))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    if not pulled:
                        await _first(asyncio.sleep(0.05), stop.wait())
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
                await asyncio.to_thread(self._flush, subscriber)
                subscriber.close()

    def _pull(self, subscriber: Any, count: int) -> list[Any]:
        from google.api_core import exceptions as gexc

        try:
            reply = subscriber.pull(
                request={"subscription": self.subscription_path, "max_messages": count},
                timeout=self.pull_timeout_s,
            )
        except (gexc.DeadlineExceeded, gexc.RetryError):
            return []  # nothing to deliver
        return list(reply.received_messages)

    async def _deliver(self, http: httpx.AsyncClient, received: Any, freed: asyncio.Event) -> None:
        counts = self.counts
        counts.in_flight += 1
        counts.max_in_flight = max(counts.max_in_flight, counts.in_flight)
        ok = False
        try:
            body = push_envelope(delivery_of(received), self.subscription_path)
            answer = await http.post(self.endpoint, json=body)
            ok = acked(answer.status_code)
        except httpx.TransportError as exc:  # a timeout included: redelivered, as for push
            logger.warning("delivery of %s failed: %r", received.message.message_id, exc)
        finally:  # cancelled (the relay stops): nacked, so it comes back at once
            counts.in_flight -= 1
            freed.set()
            if ok:
                counts.acked += 1
                self._acks.append(received.ack_id)
            else:
                counts.nacked += 1
                self._nacks.append(received.ack_id)

    async def _flush_every(self, subscriber: Any) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            if self._acks or self._nacks:
                await asyncio.to_thread(self._flush, subscriber)

    def _flush(self, subscriber: Any) -> None:
        acks, self._acks = self._acks, []
        nacks, self._nacks = self._nacks, []
        path = self.subscription_path
        if acks:
            subscriber.acknowledge(request={"subscription": path, "ack_ids": acks})
        if nacks:
            subscriber.modify_ack_deadline(
                request={"subscription": path, "ack_ids": nacks, "ack_deadline_seconds": 0}
            )


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Until the first of ``waits`` finishes; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


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
