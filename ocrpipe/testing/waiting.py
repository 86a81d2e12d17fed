"""Waiting in tests and benchmarks on progress, never on a tight clock.

A test that gives a stack a fixed time (``deadline = now + 120``) fails on a busy machine
while every part is working steadily, and one that sleeps a fixed time before checking that
something did *not* happen stops testing anything when the machine is slow. :func:`wait_for`
instead polls a measure of progress until the wanted state, and fails only when

* the measure has not changed for ``quiet_s`` seconds: nothing moved for a generous while, or
* ``alive`` names a reason to stop: a process the test needs has died (the message names it,
  with the tail of its log: :func:`stack_alive`).

A measure can include more than the wanted figure: :func:`stack_activity` moves whenever the
local stack's services log a step, so a document queued behind others does not look stuck.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ocrpipe.local.stack import LocalStack

T = TypeVar("T")

QUIET_S = 180.0  # how long nothing may move before a wait fails
ACTIVE_SERVICES = ("splitter", "worker")  # their logs grow with every step of every document


class Stalled(AssertionError):
    """Nothing moved for the wait's quiet period, or a part it needs died."""


def wait_for(
    measure: Callable[[], T],
    done: Callable[[T], bool],
    *,
    what: str,
    quiet_s: float = QUIET_S,
    alive: Callable[[], str | None] | None = None,
    interval: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Poll ``measure`` every ``interval`` s until ``done(reading)``; return that reading.

    Raises :class:`Stalled` when the reading stays the same for ``quiet_s`` s, or as soon as
    ``alive()`` returns a reason (``None``: all is well). ``what`` says what was awaited.
    """
    reading = measure()
    moved = clock()
    while not done(reading):
        if alive is not None and (reason := alive()) is not None:
            raise Stalled(f"waiting for {what}: {reason}")
        if clock() - moved > quiet_s:
            raise Stalled(f"nothing moved for {quiet_s:g} s waiting for {what}; last: {reading!r}")
        sleep(interval)
        latest = measure()
        if latest != reading:
            reading, moved = latest, clock()
    return reading


def stack_alive(stack: LocalStack) -> Callable[[], str | None]:
    """For ``alive``: the first of the stack's processes that has exited, named, with the end
    of its log."""

    def check() -> str | None:
        for child in list(stack.children):
            code = child.process.poll()
            if code is not None:
                return f"the stack's {child.name} exited with {code}:\n{stack.log_tail(child.name)}"
        return None

    return check


def stack_activity(stack: LocalStack) -> tuple[int, ...]:
    """A measure that moves whenever the stack's splitter or worker logs a step."""
    assert stack.log_dir is not None
    sizes = []
    for name in ACTIVE_SERVICES:
        path = stack.log_dir / f"{name}.log"
        sizes.append(path.stat().st_size if path.exists() else 0)
    return tuple(sizes)
