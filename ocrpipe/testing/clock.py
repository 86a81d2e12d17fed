"""A clock for tests: time moves only when the test moves it, or when the code under test
sleeps on it. Pass the clock where a real one is taken (``clock=time.monotonic`` or
``clock=time.time``) and its sleeps where a sleep is taken, so retries, backoffs, leases and
caches are tested without waiting and without racing a busy machine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeClock:
    """Reads ``now``; :meth:`sleep` (for ``asyncio.sleep``) and :meth:`sleep_sync` (for
    ``time.sleep``) move it forward at once and record how long was asked in ``sleeps``.

    ``now`` starts at an arbitrary 1000 s; a test whose code reads it as a Unix time (token
    expiry, object update times) starts it at one, e.g. ``FakeClock(1_800_000_000.0)``.
    """

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep_sync(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleep_sync(seconds)
