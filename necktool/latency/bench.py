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
  :func:`necktool.deploy.export.export_model` (in memory, silenced), run by an
  ``InferenceSession`` on ``CPUExecutionProvider`` with ``intra_op_num_threads=threads``,
  ``inter_op_num_threads=1``, sequential execution and full graph optimisation.

* ``openvino`` / ``openvino:bf16``: the same static ONNX export, compiled by OpenVINO for
  its CPU plugin with ``INFERENCE_NUM_THREADS=threads`` and the f32 precision hint (or
  OpenVINO's default hint); ``ncnn``: the pair pnnx converts from the module
  (:mod:`necktool.deploy.runtimes.pnnx`), fp32, ``num_threads=threads``, one image at a
  time. Their rows carry the max abs error and SQNR against PyTorch on the timed inputs
  (:mod:`necktool.deploy.runtimes.runners`).

``precisions`` (``fp32``, ``fp16``, ``int8``) times that export at each precision
(:mod:`necktool.deploy.precision.convert`, int8 calibrated as ``necktool export``
calibrates it) in one run, and reports per precision the file's size and its max abs
error and SQNR against the fp32 PyTorch module on the timed inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from necktool import quiet
from necktool.analysis.profiling import analyze
from necktool.deploy.comparison import sqnr_db
from necktool.deploy.data import Data
from necktool.deploy.export import export_model
from necktool.deploy.model import make_model
from necktool.deploy.precision.convert import convert
from necktool.deploy.runtimes.runners import Runner, open_runner
from necktool.errors import ExportError
from necktool.latency.plan import BenchPlan
from necktool.latency.stages import RuntimeStages, StageRun, stage_times
from necktool.latency.timing import (
    ALL_RUNTIMES,
    DEFAULT_REPEAT,
    DEFAULT_WARMUP,
    RuntimeTiming,
    percentile,
)
from necktool.necks.build import build_neck, input_tensors
from necktool.report import Block, Column, num, size_text, table
from necktool.spec.graph_form import DEFAULT_OPSET
from necktool.spec.neck_spec import NeckSpec, neck_header
from necktool.spec.precision import Precision
from necktool.spec.runtimes import Runtime
from necktool.units import UNIT_SHORT

__all__ = ["ALL_RUNTIMES", "BenchPlan", "BenchResult", "Runtime", "RuntimeTiming", "bench",
           "percentile", "run_bench"]

@dataclasses.dataclass(frozen=True, kw_only=True)
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
    precisions: tuple[Precision, ...] = ()  # given: one row per precision
    calibration: int | None = None
    stages: tuple[RuntimeStages, ...] = ()  # --stages: per runtime, stage x level medians
    calibrated_on: str = ""  # int8 on the user's data: which (empty: seeded batches)

    def timing(self, runtime: Runtime) -> RuntimeTiming | None:
        return next((t for t in self.timings if t.runtime is runtime), None)

    @property
    def ort_speedup(self) -> float | None:
        """Torch median / ORT median: above 1 means ONNX Runtime is faster."""
        torch_t, ort_t = self.timing(Runtime.TORCH), self.timing(Runtime.ORT)
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
            "precisions": [p.value for p in self.precisions],
            "calibration": self.calibration,
            "calibrated_on": self.calibrated_on or None,
            "ort_speedup": self.ort_speedup,
            **({"stages": [row.to_dict(s.runtime, self.spec.level_names)
                           for s in self.stages for row in s.rows],
                "stage_runs": [s.summary() for s in self.stages]} if self.stages else {}),
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "processor": platform.machine()},
        }

    def blocks(self) -> list[Block]:
        stage_blocks = [s.block(f"{s.runtime}: time by stage and level", self.spec.level_names)
                        for s in self.stages]
        if self.precisions:
            return [self._precision_table(), *stage_blocks]
        speedup = self.ort_speedup
        caption = (f"{self.flops:,} FLOPs ({UNIT_SHORT}), {self.params:,} params; "
                   "GFLOP/s = FLOPs / median; runs = warm-up + timed")
        if speedup is not None:
            caption += f"\nONNX Runtime vs torch: {speedup:.2f}x " + \
                ("faster" if speedup >= 1 else "slower") + " (median)"
        rows: list[tuple[str, ...]] = [
            (t.runtime.timing_name, _ms(t.median_ms), f"{_ms(t.p10_ms)}-{_ms(t.p90_ms)}",
             _ms(t.min_ms), f"{t.gflops_per_s(self.flops):.2f}", f"{t.warmup}+{t.repeat}")
            for t in self.timings]
        headers: list[str | Column] = ["runtime", num("median ms"), num("p10-p90 ms"),
                                       num("min ms"), num("GFLOP/s"), num("runs")]
        if any(t.max_abs is not None for t in self.timings):  # OpenVINO, ncnn
            headers += [num("max abs"), num("SQNR dB")]
            rows = [(*row, "-" if t.max_abs is None else f"{t.max_abs:.1e}",
                     "-" if t.sqnr_db is None else f"{t.sqnr_db:.1f}")
                    for row, t in zip(rows, self.timings, strict=True)]
            caption += "\nmax abs and SQNR vs PyTorch on the timed inputs; " + "; ".join(
                f"{t.runtime.timing_name} {t.version}" for t in self.timings
                if t.max_abs is not None)
        return [table(f"{self.neck} at {size_text(self.input_size)}, batch {self.batch}, "
                      f"{self.threads} thread(s)", headers, rows, caption=caption),
                *stage_blocks]


    def _precision_table(self) -> Block:
        rows = []
        for t in self.timings:
            torch_row = t.runtime is Runtime.TORCH
            rows.append(("torch" if torch_row else t.precision,
                         "-" if t.nbytes is None else f"{t.nbytes / 1e6:.3f}",
                         _ms(t.median_ms), f"{_ms(t.p10_ms)}-{_ms(t.p90_ms)}",
                         f"{t.gflops_per_s(self.flops):.2f}",
                         "-" if t.max_abs is None else f"{t.max_abs:.1e}",
                         "-" if t.sqnr_db is None else f"{t.sqnr_db:.1f}"))
        calib = f"; int8 calibrated on {self.calibration} seeded batch(es)" \
            if self.calibration else ""
        on = "the timed inputs"
        if self.calibrated_on:
            calib = f"; int8 calibrated on {self.calibrated_on}"
            on = "the held-out feature sets"
        return table(
            f"{self.neck} at {size_text(self.input_size)}, batch {self.batch}, "
            f"{self.threads} thread(s): ONNX Runtime by precision",
            ["precision", num("file MB"), num("median ms"), num("p10-p90 ms"), num("GFLOP/s"),
             num("max abs"), num("SQNR dB")], rows,
            caption=f"{self.flops:,} FLOPs ({UNIT_SHORT}); GFLOP/s = FLOPs / median; max abs "
                    f"and SQNR of ONNX Runtime vs fp32 PyTorch on {on} (torch: "
                    f"PyTorch eager, fp32, the reference); static exports{calib}; "
                    f"{self.timings[0].warmup} warm-up + {self.timings[0].repeat} timed runs")


def _ms(value: float) -> str:
    """About four significant digits, whatever the magnitude."""
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


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
    return RuntimeTiming(runtime=Runtime.TORCH, version=torch.__version__, warmup=warmup,
                         threads=threads, times_ms=times)


def _session(data: bytes, threads: int) -> Any:
    ort = quiet.onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def _bench_ort(session: Any, inputs: list[torch.Tensor], threads: int, warmup: int,
               repeat: int, on_run: Callable[[str], None]) -> RuntimeTiming:
    ort = quiet.onnxruntime()

    feeds = {meta.name: t.numpy() for meta, t in zip(session.get_inputs(), inputs,
                                                     strict=True)}
    times = _time_calls(lambda: session.run(None, feeds), warmup, repeat, on_run,
                        "onnxruntime")
    return RuntimeTiming(runtime=Runtime.ORT, version=ort.__version__, warmup=warmup,
                         threads=threads, times_ms=times)


def _errors(session: Any, model: nn.Module, *batches: list[torch.Tensor]
            ) -> tuple[float, float]:
    """Max abs error and SQNR (dB) of the session's outputs against the fp32 module's, over
    every batch of inputs."""
    runs = []
    for inputs in batches:
        feeds = {meta.name: t.numpy() for meta, t in zip(session.get_inputs(), inputs,
                                                         strict=True)}
        runs.append((session.run(None, feeds), inputs))
    return _errors_of(model, runs)


def _errors_of(model: nn.Module, runs: Sequence[tuple[Sequence[Any], list[torch.Tensor]]]
               ) -> tuple[float, float]:
    """Max abs error and SQNR (dB) of runs' outputs (``(outputs, inputs)`` pairs, from any
    runtime) against the fp32 module's on the same inputs, every element of every run."""
    import numpy as np

    worst, noise, signal = 0.0, 0.0, 0.0
    for got, inputs in runs:
        with torch.inference_mode():
            ref = [o.numpy().astype(np.float64) for o in model(inputs)]
        diff = [g.astype(np.float64) - r for g, r in zip(got, ref, strict=True)]
        noise += sum(float((d * d).sum()) for d in diff)
        signal += sum(float((r * r).sum()) for r in ref)
        worst = max(worst, *(float(np.abs(d).max()) for d in diff))
    return worst, sqnr_db(signal, noise)


def _bench_runner(runtime: Runtime, runner: Runner, model: nn.Module,
                  inputs: list[torch.Tensor], threads: int, warmup: int, repeat: int,
                  on_run: Callable[[str], None]) -> RuntimeTiming:
    arrays = [t.numpy() for t in inputs]
    got = runner.run(arrays)
    if isinstance(got, str):
        raise ExportError(f"{runner.runtime.label} failed to run the neck: {got}")
    max_abs, sqnr = _errors_of(model, [(got, inputs)])
    times = _time_calls(lambda: runner.run(arrays), warmup, repeat, on_run, runtime.timing_name)
    return RuntimeTiming(runtime=runtime, version=runner.version, warmup=warmup, threads=threads,
                         times_ms=times, max_abs=max_abs, sqnr_db=sqnr)


def bench(
    neck: str | NeckSpec,
    input_size: tuple[int, int] | None = None,
    batch: int = 1,
    *,
    warmup: int = DEFAULT_WARMUP,
    repeat: int = DEFAULT_REPEAT,
    threads: int | None = None,
    runtimes: Sequence[Runtime | str] | None = None,
    seed: int = 0,
    precisions: Sequence[Precision | str] = (),
    calibration: int | None = None,
    on_run: Callable[[str], None] | None = None,
    stages: bool = False,
    data: Data | None = None,
    **overrides: Any,
) -> BenchResult:
    """Time a neck in PyTorch eager and ONNX Runtime (CPU); see the module docstring.

    Builds a :class:`~necktool.analysis.plan.BenchPlan` (every check) and runs it
    (:func:`run_bench`).

    Args:
        neck: A preset name or a :class:`NeckSpec`.
        input_size: Image ``(H, W)``; defaults to the spec's.
        batch: Batch size.
        warmup: Untimed runs per runtime before timing.
        repeat: Timed runs per runtime.
        threads: Intra-op threads for both runtimes; default ``torch.get_num_threads()``.
        runtimes: Which runtimes to time, in order. Default: both, or with ``precisions``
            ONNX Runtime alone.
        seed: Seed of the weights and inputs.
        precisions: Time ONNX Runtime at each of these precisions (``fp32``, ``fp16``,
            ``int8``), one timing each, with the file size and the error against fp32
            PyTorch (see the module docstring).
        calibration: int8 calibration batches (default as ``necktool export``).
        on_run: Called with the runtime's name after each timed run (for a progress bar
            of the plan's :attr:`~necktool.analysis.plan.BenchPlan.steps`).
        stages: Also profile ``repeat`` more runs per runtime (fp32) and report the median
            time of every stage x level (:mod:`necktool.latency.stages`).
        data: int8: calibrate on these feature sets' calibration part instead; the files
            are static, so every set must have this size's levels.
        **overrides: Spec fields to change; ``None`` values are ignored.

    Raises:
        InputError: a count, the thread number or the runtime list is invalid.
        SpecError: the neck cannot run at ``input_size``.
        ExportError: the ONNX export failed.

    Example:
        >>> r = bench("scrfd_2.5g", (320, 320), warmup=2, repeat=5)
        >>> r.timing(Runtime.ORT).median_ms > 0
        True
    """
    plan = BenchPlan.build(neck, input_size, batch, warmup=warmup, repeat=repeat,
                           threads=threads, runtimes=runtimes, seed=seed,
                           precisions=precisions, calibration=calibration, stages=stages,
                           data=data, **overrides)
    return run_bench(plan, on_run=on_run)


def run_bench(plan: BenchPlan, *, on_run: Callable[[str], None] | None = None
              ) -> BenchResult:
    """Run a checked plan: count, export (and convert) once, then time each series (and,
    with ``plan.stages``, profile each runtime's stages).

    Raises:
        ExportError: the ONNX export failed.
    """
    spec, size, batch = plan.spec, plan.spec.input_size, plan.batch
    threads = torch.get_num_threads() if plan.threads is None else plan.threads
    if plan.weights.path is None:
        model = build_neck(spec, seed=plan.seed)
    else:  # a checkpoint or a detector ONNX file: the error columns use its weights
        model = make_model(spec, plan.weights)[0]
    # fvcore's count at exactly this size and batch: the numerator of GFLOP/s.
    counted = analyze(model, spec, size, batch)
    inputs = input_tensors(spec, size, batch, seed=plan.seed)
    # Export (and convert) before any timing, so a failure costs no timed runs.
    sessions: list[tuple[Precision, Any, int]] = []
    proto = export_model(model, spec, inputs, dynamic=False, opset=DEFAULT_OPSET) \
        if any(r.info.runs_files and r is not Runtime.NCNN for r in plan.runtimes) \
        else None  # ncnn converts the module itself
    # Every runtime but torch and ONNX Runtime (timed on its own tuned session) comes from
    # the one table of runners; ncnn converts the module, the others load the fp32 file.
    runners = {r: open_runner(r, b"" if proto is None else proto.SerializeToString(), model,
                              spec, threads=threads)
               for r in plan.runtimes if r not in (Runtime.TORCH, Runtime.ORT)}
    if proto is not None and Runtime.ORT in plan.runtimes:
        for precision in plan.precisions or (Precision.FP32,):
            converted = convert(proto, precision, spec=spec, shapes=[(size, batch)],
                                calibration=plan.calibration or 1,
                                feeds=_static_feeds(plan.data, spec))
            blob = converted.SerializeToString()
            sessions.append((precision, _session(blob, threads), len(blob)))
    step = on_run or (lambda _label: None)
    timings = []
    for runtime in plan.runtimes:
        if runtime is Runtime.TORCH:
            timings.append(_bench_torch(model, inputs, threads, plan.warmup, plan.repeat, step))
            continue
        if runtime in runners:
            timings.append(_bench_runner(runtime, runners[runtime], model, inputs, threads,
                                         plan.warmup, plan.repeat, step))
            continue
        for precision, session, nbytes in sessions:
            timing = _bench_ort(session, inputs, threads, plan.warmup, plan.repeat, step)
            max_abs, sqnr = _errors(session, model, *_error_inputs(plan.data, inputs)) \
                if plan.precisions else (None, None)
            timings.append(dataclasses.replace(timing, precision=precision.value,
                                               nbytes=nbytes, max_abs=max_abs, sqnr_db=sqnr))
    profiled = []
    if plan.stages:
        data = proto.SerializeToString() if proto is not None \
            and Runtime.ORT in plan.runtimes else None
        for runtime in plan.runtimes:
            plain = next((t.median_ms / 1e3 for t in timings if t.runtime is runtime
                          and t.precision == Precision.FP32.value), None)
            run = StageRun(model=model, spec=spec, inputs=inputs, onnx=data, threads=threads,
                           warmup=plan.warmup, runs=plan.repeat, plain_s=plain,
                           on_run=functools.partial(step, f"{runtime.timing_name} stages"))
            profiled.append(stage_times(runtime.timing_name, run))
    return BenchResult(neck=spec.label, spec=spec, input_size=size, batch=batch,
                       flops=counted.flops, params=counted.params, threads=threads,
                       timings=tuple(timings), precisions=plan.precisions,
                       calibration=plan.calibration, stages=tuple(profiled),
                       calibrated_on=plan.data.describe()
                       if plan.data is not None and plan.calibration else "")


def _error_inputs(data: Data | None, inputs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Where the errors are measured: the held-out feature sets, else the timed inputs."""
    if data is None:
        return [inputs]
    return [[torch.from_numpy(a) for a in s.arrays] for s in data.verification]


def _static_feeds(data: Data | None, spec: NeckSpec) -> list[dict[str, Any]] | None:
    """The calibration sets as feeds of the static file (their sizes checked by the plan)."""
    if data is None:
        return None
    return [s.feeds(spec.input_names) for s in data.calibration]
