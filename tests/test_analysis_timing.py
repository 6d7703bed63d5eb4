"""Timing statistics (torch-free): the percentiles ``bench`` reports are the stdlib's
``statistics.quantiles`` and give the numbers the hand-written percentile gave."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from necktool.latency.timing import RuntimeTiming, percentile
from necktool.spec.runtimes import Runtime

TIMES = st.lists(st.floats(0.001, 1e4), min_size=1, max_size=40)
QS = st.sampled_from([0, 1, 10, 25, 50, 90, 99, 100])


def hand_written(values: list[float], q: float) -> float:
    """necktool 0.2.0's own percentile, kept here as the reference it must still match."""
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@settings(max_examples=100, deadline=None)
@given(TIMES, QS)
def test_percentile_is_the_hand_written_one_and_numpys(values: list[float], q: int) -> None:
    got = percentile(values, q)
    # the same linear interpolation, evaluated in another order: equal to float rounding
    assert got == pytest.approx(hand_written(values, q), rel=1e-12, abs=1e-12)
    assert got == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-12)


def test_percentile_by_hand() -> None:
    # 11 sorted values 0..100: the q-th percentile is q itself
    assert [percentile([float(v) for v in range(100, -1, -10)], q) for q in (0, 10, 90, 100)] \
        == [0.0, 10.0, 90.0, 100.0]
    # 4 values: p10 sits 0.3 of the way from 1 to 2; p90 0.7 of the way from 3 to 5
    assert percentile([5.0, 1.0, 3.0, 2.0], 10) == pytest.approx(1.3)
    assert percentile([5.0, 1.0, 3.0, 2.0], 90) == pytest.approx(3 + 0.7 * 2)
    assert percentile([7.5], 10) == percentile([7.5], 90) == 7.5  # one run
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="from 0 to 100"):
        percentile([1.0, 2.0], 101)


def test_gflops_per_second_at_the_median() -> None:
    timing = RuntimeTiming(runtime=Runtime.TORCH, version="test", warmup=0, threads=1,
                           times_ms=(4.0, 1.0, 2.0))
    assert (timing.median_ms, timing.min_ms, timing.max_ms) == (2.0, 1.0, 4.0)
    # 6e9 flops in 2 ms = 3e12 flops/s = 3000 GFLOP/s
    assert timing.gflops_per_s(6 * 10**9) == pytest.approx(3000.0)
