"""One refresh at a time, shared by every waiter (the single-flight pattern).

A cache that must refresh from a slow source (the metadata server's ID tokens, Google's
push-signing keys) starts the refresh once; every request that needs the result awaits the
same task. A waiter that gives up (its own deadline) does not cancel the refresh for the
others: the task is shielded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs ``work`` at most once at a time, in the running event loop."""

    def __init__(self, work: Callable[[], Awaitable[T]]) -> None:
        self._work = work
        self._task: asyncio.Task[T] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> asyncio.Task[T]:
        """The refresh in flight, or a new one. Its failure is the owner's to log."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(_retrieve)
        return self._task

    async def wait(self) -> T:
        """Join the refresh in flight (or start one) and return its result or raise."""
        return await asyncio.shield(self.start())

    async def _run(self) -> T:
        return await self._work()


def _retrieve(task: asyncio.Task[T]) -> None:
    # A background refresh nobody awaited must not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()
