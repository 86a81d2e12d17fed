"""Push delivery with production-like concurrency, for the saturation benchmark.

Google's Pub/Sub emulator (0.8.20) runs exactly two push loops per push subscription, each
sending one message and waiting for its answer (``FakePubsubServer$SubscriptionData``
starts ``PushLoop`` twice; ``PushLoop.dispatchMessages`` pulls one message at a time): at
most two deliveries are ever in flight, whatever the machine. Production Pub/Sub raises
push concurrency with the rate of successful answers, up to what the endpoint (Cloud Run:
instances x concurrency) accepts.

:class:`ConcurrentPusher` stands in for that: it turns the pages subscription into a pull
subscription (``modify_push_config`` with no endpoint, which also stops the emulator's push
loops), pulls messages and POSTs each one to the worker in the push envelope Pub/Sub uses,
keeping up to ``concurrency`` requests open; a 2xx acks the message, anything else nacks it.
Subscription, ack deadline, retry and dead-letter policy stay the emulator's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ocrpipe.pubsub import subscriber_client


def set_push_endpoint(emulator_host: str, subscription_path: str, endpoint: str) -> None:
    """Point a subscription at ``endpoint``; "" turns it into a pull subscription."""
    subscriber = subscriber_client(emulator_host)
    try:
        subscriber.modify_push_config(
            request={"subscription": subscription_path, "push_config": {"push_endpoint": endpoint}}
        )
    finally:
        subscriber.close()


def envelope(received: Any, subscription_path: str) -> dict[str, Any]:
    message = received.message
    published = message.publish_time.isoformat() if message.publish_time else None
    return {
        "message": {
            "data": base64.b64encode(message.data).decode(),
            "attributes": dict(message.attributes),
            "messageId": message.message_id,
            "message_id": message.message_id,
            "publishTime": published,
            "publish_time": published,
        },
        "subscription": subscription_path,
    }


@dataclass
class ConcurrentPusher:
    emulator_host: str
    subscription_path: str
    endpoint: str
    concurrency: int
    delivered: int = 0
    failed: int = 0
    max_in_flight: int = 0
    _in_flight: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None
    _acks: list[str] = field(default_factory=list)
    _nacks: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def running(self) -> Iterator[ConcurrentPusher]:
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=60)
        if self._error is not None:
            raise RuntimeError(f"the pusher failed: {self._error!r}") from self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._loop())
        except BaseException as exc:  # reported by running()
            self._error = exc

    async def _loop(self) -> None:
        subscriber = subscriber_client(self.emulator_host)
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(limits=limits, timeout=700) as http:
            flusher = asyncio.create_task(self._flush_every(subscriber, 0.05))
            try:
                while not self._stop.is_set():
                    free = self.concurrency - self._in_flight
                    if free <= 0:
                        await asyncio.sleep(0.005)
                        continue
                    response = await asyncio.to_thread(self._pull, subscriber, min(free, 100))
                    for received in response:
                        await slots.acquire()
                        task = asyncio.create_task(self._deliver(http, subscriber, received))
                        task.add_done_callback(lambda _: slots.release())
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    if not response:
                        await asyncio.sleep(0.02)
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
                await asyncio.to_thread(self._flush, subscriber)
                subscriber.close()

    def _pull(self, subscriber: Any, count: int) -> list[Any]:
        from google.api_core import exceptions as gexc

        try:
            reply = subscriber.pull(
                request={"subscription": self.subscription_path, "max_messages": count},
                timeout=0.5,
            )
        except (gexc.DeadlineExceeded, gexc.RetryError):
            return []
        return list(reply.received_messages)

    async def _deliver(self, http: httpx.AsyncClient, subscriber: Any, received: Any) -> None:
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            try:
                answer = await http.post(
                    self.endpoint, json=envelope(received, self.subscription_path)
                )
                ok = answer.is_success
            except httpx.TransportError:
                ok = False
        finally:
            self._in_flight -= 1
        if ok:
            self.delivered += 1
            self._acks.append(received.ack_id)
        else:
            self.failed += 1
            self._nacks.append(received.ack_id)

    async def _flush_every(self, subscriber: Any, seconds: float) -> None:
        """Acks and nacks go out in batches, as a Pub/Sub client library sends them."""
        while True:
            await asyncio.sleep(seconds)
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
