"""Latency of a neck in PyTorch eager and in ONNX Runtime, on the CPU.

Method, per runtime: ``warmup`` untimed runs (allocator, caches, ORT's first-run
setup), then ``repeat`` timed runs, each one call on the same seeded inputs, timed with
:func:`time.perf_counter_ns`. Reported: the median, the 10th/90th percentiles and
min/max, the thread count, and the achieved GFLOP/s = fvcore FLOPs / median seconds.

FLOPs are fvcore's (1 fused multiply-add = 1 flop), so GFLOP/s here are multiply-adds
per second; hardware peak figures, which count a multiply-add as two, are twice as high.

* ``torch``: the model in eval mode under :func:`torch.inference_mode`, with
  ``torch.set_num_threads(threads)`` for the duration (restored afterwards).
* ``onnxruntime``: the neck exported statically at the same size and batch by
  :func:`necktool.export.export_model` (in memory, silenced), run by an
  ``InferenceSession`` on ``CPUExecutionProvider`` with ``intra_op_num_threads=threads``,
  ``inter_op_num_threads=1``, sequential execution and full graph optimisation.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from necktool import quiet
from necktool.artifact import DEFAULT_OPSET
from necktool.build import build_neck, make_inputs
from necktool.errors import InputError
from necktool.export import export_model
from necktool.profiling import analyze
from necktool.registry import resolve_spec
from necktool.report import Block, neck_header, num, size_text, table
from necktool.specs import NeckSpec
from necktool.timing import (
    ALL_RUNTIMES,
    DEFAULT_REPEAT,
    DEFAULT_WARMUP,
    MAX_RUNS,
    Runtime,
    RuntimeTiming,
    percentile,
)
from necktool.units import UNIT_SHORT

__all__ = ["ALL_RUNTIMES", "BenchResult", "Runtime", "RuntimeTiming", "bench", "percentile"]

@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Latency of one neck at one size and batch, per runtime."""

    neck: str
    spec: NeckSpec
    input_size: tuple[int, int]
    batch: int
    flops: int
    params: int
    threads: int
    timings: tuple[RuntimeTiming, ...]

    def timing(self, runtime: Runtime | str) -> RuntimeTiming | None:
        wanted = Runtime(runtime)
        return next((t for t in self.timings if t.runtime is wanted), None)

    @property
    def ort_speedup(self) -> float | None:
        """Torch median / ORT median: above 1 means ONNX Runtime is faster."""
        torch_t, ort_t = self.timing(Runtime.TORCH), self.timing(Runtime.ONNXRUNTIME)
        if torch_t is None or ort_t is None or not ort_t.median_ms:
            return None
        return torch_t.median_ms / ort_t.median_ms

    def to_dict(self) -> dict[str, Any]:
        """Stable, JSON-ready dict (times in milliseconds)."""
        return {
            **neck_header(self.spec, self.input_size, self.batch),
            "flops": self.flops,
            "params": self.params,
            "threads": self.threads,
            "runtimes": [t.to_dict(self.flops) for t in self.timings],
            "ort_speedup": self.ort_speedup,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "processor": platform.machine()},
        }

    def blocks(self) -> list[Block]:
        speedup = self.ort_speedup
        caption = (f"{self.flops:,} FLOPs ({UNIT_SHORT}), {self.params:,} params; "
                   "GFLOP/s = FLOPs / median; runs = warm-up + timed")
        if speedup is not None:
            caption += f"\nONNX Runtime vs torch: {speedup:.2f}x " + \
                ("faster" if speedup >= 1 else "slower") + " (median)"
        rows = [(t.runtime.value, _ms(t.median_ms), f"{_ms(t.p10_ms)}-{_ms(t.p90_ms)}",
                 _ms(t.min_ms), f"{t.gflops_per_s(self.flops):.2f}", f"{t.warmup}+{t.repeat}")
                for t in self.timings]
        return [table(f"{self.neck} at {size_text(self.input_size)}, batch {self.batch}, "
                      f"{self.threads} thread(s)",
                      ["runtime", num("median ms"), num("p10-p90 ms"), num("min ms"),
                       num("GFLOP/s"), num("runs")], rows, caption=caption)]


def _ms(value: float) -> str:
    """About four significant digits, whatever the magnitude."""
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def _check_count(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RUNS:
        raise InputError(f"{what} must be an integer from 1 to {MAX_RUNS:,}, got {value!r}")


def _time_calls(call: Callable[[], Any], warmup: int, repeat: int,
                on_run: Callable[[str], None], label: str) -> tuple[float, ...]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
        on_run(label)
    return tuple(times)


def _bench_torch(model: nn.Module, inputs: list[torch.Tensor], threads: int, warmup: int,
                 repeat: int, on_run: Callable[[str], None]) -> RuntimeTiming:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            times = _time_calls(lambda: model(inputs), warmup, repeat, on_run, "torch")
    finally:
        torch.set_num_threads(previous)
    return RuntimeTiming(Runtime.TORCH, torch.__version__, warmup, threads, times)


def ort_session(model: nn.Module, spec: NeckSpec, inputs: list[torch.Tensor],
                threads: int) -> Any:
    """A CPU ONNX Runtime session for ``model``, exported statically in memory."""
    ort = quiet.onnxruntime()

    proto = export_model(model, spec, inputs, dynamic=False, opset=DEFAULT_OPSET)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), sess_options=options,
                                providers=["CPUExecutionProvider"])


def _bench_ort(session: Any, inputs: list[torch.Tensor], threads: int, warmup: int,
               repeat: int, on_run: Callable[[str], None]) -> RuntimeTiming:
    ort = quiet.onnxruntime()

    feeds = {meta.name: t.numpy() for meta, t in zip(session.get_inputs(), inputs,
                                                     strict=True)}
    times = _time_calls(lambda: session.run(None, feeds), warmup, repeat, on_run,
                        "onnxruntime")
    return RuntimeTiming(Runtime.ONNXRUNTIME, ort.__version__, warmup, threads, times)


def bench(
    neck: str | NeckSpec,
    input_size: tuple[int, int] | None = None,
    batch: int = 1,
    *,
    warmup: int = DEFAULT_WARMUP,
    repeat: int = DEFAULT_REPEAT,
    threads: int | None = None,
    runtimes: Sequence[Runtime | str] = ALL_RUNTIMES,
    seed: int = 0,
    on_run: Callable[[str], None] | None = None,
    **overrides: Any,
) -> BenchResult:
    """Time a neck in PyTorch eager and ONNX Runtime (CPU); see the module docstring.

    Args:
        neck: A preset name or a :class:`NeckSpec`.
        input_size: Image ``(H, W)``; defaults to the spec's.
        batch: Batch size.
        warmup: Untimed runs per runtime before timing.
        repeat: Timed runs per runtime.
        threads: Intra-op threads for both runtimes; default ``torch.get_num_threads()``.
        runtimes: Which runtimes to time, in order.
        seed: Seed of the weights and inputs.
        on_run: Called with the runtime's name after each timed run (for a progress bar).
        **overrides: Spec fields to change; ``None`` values are ignored.

    Raises:
        InputError: a count, the thread number or the runtime list is invalid.
        SpecError: the neck cannot run at ``input_size``.
        ExportError: the ONNX export failed.

    Example:
        >>> r = bench("scrfd_2.5g", (320, 320), warmup=2, repeat=5)
        >>> r.timing("onnxruntime").median_ms > 0
        True
    """
    _check_count(warmup, "warmup")
    _check_count(repeat, "repeat")
    if threads is None:
        threads = torch.get_num_threads()
    _check_count(threads, "threads")
    try:
        chosen = list(dict.fromkeys(Runtime(r) for r in runtimes))
    except ValueError:
        raise InputError(f"unknown runtime in {list(runtimes)!r}; valid: "
                         f"{', '.join(r.value for r in Runtime)}") from None
    if not chosen:
        raise InputError("no runtime to time; valid: torch, onnxruntime")
    spec = resolve_spec(neck, input_size=input_size, **overrides)
    size = spec.input_size

    model = build_neck(spec, seed=seed)
    # fvcore's count at exactly this size and batch: the numerator of GFLOP/s.
    counted = analyze(model, spec, size, batch)
    inputs = make_inputs(spec, size, batch, seed=seed)
    # Export before any timing, so an exporter failure costs no timed runs.
    session = ort_session(model, spec, inputs, threads) if Runtime.ONNXRUNTIME in chosen \
        else None
    step = on_run or (lambda _label: None)
    timings = []
    for runtime in chosen:
        if runtime is Runtime.TORCH:
            timings.append(_bench_torch(model, inputs, threads, warmup, repeat, step))
        else:
            timings.append(_bench_ort(session, inputs, threads, warmup, repeat, step))
    return BenchResult(spec.label, spec, size, batch, counted.flops, counted.params, threads,
                       tuple(timings))
