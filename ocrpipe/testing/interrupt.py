"""SIGTERM ends a test run the way Ctrl-C does.

pytest dies on SIGTERM without running a single teardown, and the local stack's parts run
in sessions of their own (so that Ctrl-C in a terminal does not reach them before the stack
stops them in order): a cancelled CI job or a ``kill`` of ``./scripts/test.sh`` would leave
every stack a test started running. Turned into ``KeyboardInterrupt``, SIGTERM unwinds the
test, and pytest then runs every fixture's teardown, which stops the stacks.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    """From the main thread (only it may set signal handlers), e.g. pytest_configure."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
