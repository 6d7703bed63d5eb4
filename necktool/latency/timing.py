"""Timing statistics for ``necktool bench`` (torch-free): runtimes, defaults, percentiles."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from typing import Any

from necktool.spec.runtimes import Runtime, parse_runtimes
from necktool.units import GFLOPS

DEFAULT_WARMUP = 5
DEFAULT_REPEAT = 30
MAX_RUNS = 100_000  # a guard against a typo such as --repeat 3000000


#: What bench times unless told: PyTorch eager and ONNX Runtime.
ALL_RUNTIMES = (Runtime.TORCH, Runtime.ORT)


def parse_bench_runtimes(text: str) -> list[Runtime]:
    """``torch,ort,openvino,ncnn``: distinct runtimes in the order given; MNN and LiteRT
    are refused with the reason (:data:`necktool.spec.runtimes.UNSUPPORTED`)."""
    return parse_runtimes(text, torch=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeTiming:
    """The timed runs of one runtime (milliseconds per call) and their summary."""

    runtime: Runtime
    version: str
    warmup: int
    threads: int
    times_ms: tuple[float, ...]
    precision: str = "fp32"  # the ONNX file's precision (torch runs fp32)
    nbytes: int | None = None  # the ONNX file's size
    max_abs: float | None = None  # vs fp32 PyTorch on the timed inputs (ONNX Runtime only)
    sqnr_db: float | None = None

    @property
    def repeat(self) -> int:
        return len(self.times_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p10_ms(self) -> float:
        return percentile(self.times_ms, 10)

    @property
    def p90_ms(self) -> float:
        return percentile(self.times_ms, 90)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def max_ms(self) -> float:
        return max(self.times_ms)

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative width of the middle 80% of runs."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else 0.0

    def gflops_per_s(self, flops: int) -> float:
        """fvcore GFLOP/s (multiply-adds per second / 1e9) at the median latency."""
        return flops / (self.median_ms / 1e3) / GFLOPS if self.median_ms > 0 else math.inf

    def to_dict(self, flops: int) -> dict[str, Any]:
        return {
            "runtime": self.runtime.timing_name,
            "version": self.version,
            "warmup": self.warmup,
            "repeat": self.repeat,
            "threads": self.threads,
            # Rounded to 0.1 us: perf_counter_ns resolution is finer than any real signal.
            "median_ms": round(self.median_ms, 4),
            "p10_ms": round(self.p10_ms, 4),
            "p90_ms": round(self.p90_ms, 4),
            "min_ms": round(self.min_ms, 4),
            "max_ms": round(self.max_ms, 4),
            "spread": round(self.spread, 4),
            "gflops_per_s": round(self.gflops_per_s(flops), 3),
            "precision": self.precision,
            "bytes": self.nbytes,
            "max_abs": self.max_abs,
            "sqnr_db": self.sqnr_db if self.sqnr_db is None or math.isfinite(self.sqnr_db)
            else None,
            "times_ms": [round(t, 4) for t in self.times_ms],
        }


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (0 to 100) with linear interpolation: the stdlib's
    ``statistics.quantiles(method="inclusive")``, which is numpy's default method."""
    data = list(values)
    if not data:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not from 0 to 100")
    if len(data) == 1 or q in (0, 100):  # quantiles() gives the cut points between
        return min(data) if q == 0 or len(data) == 1 else max(data)
    return statistics.quantiles(data, n=100, method="inclusive")[q - 1]
