"""The benchmarks' steady rate (bench/common.steady_rate): the slope of pages finished
against time over the middle of a run, and still a rate when the run finished in clumps."""

from __future__ import annotations

import math

import pytest

from bench.common import steady_rate


def test_an_even_run_has_its_rate() -> None:
    assert steady_rate([float(t) for t in range(100)]) == pytest.approx(1.0)


def test_ramp_up_and_drain_are_left_out() -> None:
    ramp = [0.0, 0.0, 0.0, 0.0, 0.0]  # a burst at the start: a queue drained at once
    steady = [1.0 + t / 2 for t in range(60)]  # 2 pages/s
    assert steady_rate(ramp + steady) == pytest.approx(2.0, rel=0.05)


def test_a_run_that_finished_in_two_clumps_still_has_a_rate() -> None:
    """A quick run against a batching server: 15 pages about t=0, 15 about t=2. Nothing
    finished in the middle of the run, so the slope is taken over all of it."""
    clumps = [i * 0.01 for i in range(15)] + [2 + i * 0.01 for i in range(15)]
    rate = steady_rate(clumps)
    assert math.isfinite(rate) and 5 < rate < 15  # about 15 pages every 2 s


def test_pages_that_all_finished_at_once_have_no_rate() -> None:
    assert math.isnan(steady_rate([3.0] * 10))
