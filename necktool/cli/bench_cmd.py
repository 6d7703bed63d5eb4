"""``necktool bench``: latency of a neck in PyTorch eager and in ONNX Runtime (CPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.cli.data_params import DataOpt
from necktool.cli.params import (
    BuildFlagsOpt,
    CalibrationOpt,
    OptionalNeckArg,
    PrecisionsOpt,
    WeightsOpt,
    neck_in_weights,
    typer_parser,
)
from necktool.cli.render import load_heavy, progress
from necktool.errors import InputError
from necktool.latency.timing import DEFAULT_REPEAT, DEFAULT_WARMUP, MAX_RUNS, parse_bench_runtimes
from necktool.spec.fields import IntKind

if TYPE_CHECKING:
    from necktool.latency.bench import BenchResult

TIMING = "Timing"
_runs = typer_parser(IntKind(high=MAX_RUNS).from_text)

Warmup = Annotated[Any, typer.Option(
    "--warmup", metavar="N", parser=_runs, rich_help_panel=TIMING, show_default=False,
    help=f"Untimed runs per runtime first. Default: {DEFAULT_WARMUP}.")]
Repeat = Annotated[Any, typer.Option(
    "--repeat", "--runs", metavar="N", parser=_runs, rich_help_panel=TIMING, show_default=False,
    help=f"Timed runs per runtime. Default: {DEFAULT_REPEAT}.")]
Threads = Annotated[Any, typer.Option(
    "--threads", metavar="N", parser=typer_parser(IntKind(high=1024).from_text),
    rich_help_panel=TIMING, show_default=False,
    help="Intra-op threads for both runtimes. Default: torch.get_num_threads().")]
Runtimes = Annotated[list[Any] | None, typer.Option(
    "--runtime", metavar="RUNTIMES", rich_help_panel=TIMING,
    show_default=False, parser=typer_parser(parse_bench_runtimes),
    help="Time these runtimes, comma-separated (or repeat the flag): torch, ort "
    "(onnxruntime), openvino (f32 hint), openvino:bf16 (OpenVINO's default hint), ncnn "
    "(pnnx from the module, fp32); OpenVINO and ncnn rows add max abs and SQNR vs PyTorch. "
    "Default: torch,ort; with --precision, ort.")]
Stages = Annotated[bool, typer.Option(
    "--stages", rich_help_panel=TIMING,
    help="Also profile N more runs per runtime and show the median time of every stage x "
    "level (PyTorch: module hooks; ONNX Runtime: its profiler, mapped to stages), the "
    "unattributed rest, and the profiling overhead.")]


def bench_command(
    neck: OptionalNeckArg = None,
    warmup: Warmup = None,
    repeat: Repeat = None,
    threads: Threads = None,
    runtime: Runtimes = None,
    precision: PrecisionsOpt = None,
    calibration: CalibrationOpt = None,
    stages: Stages = False,
    *,
    flags: BuildFlagsOpt,
    weights: WeightsOpt,
    data: DataOpt,
) -> BenchResult:
    """Latency of PyTorch eager and ONNX Runtime (CPU): median, spread, GFLOP/s.

    --runtime torch,ort,openvino,ncnn times OpenVINO and ncnn too, with each one's error
    against PyTorch.

    Warm-up runs, then timed runs on the same seeded inputs. GFLOP/s are fvcore FLOPs
    (1 multiply-add = 1 flop) divided by the median time. --precision fp32,fp16,int8 times
    ONNX Runtime at each precision in one table, with file size, max abs error and SQNR
    against fp32 PyTorch. --stages adds a stage x level table per runtime (median time per
    run), with the unattributed rest and the profiling overhead. --weights FILE (a
    checkpoint or a detector ONNX file) times the neck with those weights; NECK may be left
    to the file. With --calibration-data or --images/--backbone, int8 is calibrated on the
    data's calibration part (features at the benchmark size: --image-size).
    """
    from necktool.latency.plan import BenchPlan
    from necktool.spec.neck_spec import NeckSpec

    chosen: str | NeckSpec
    if neck is not None:
        chosen = neck
    elif weights.path is not None:
        chosen, weights = neck_in_weights(weights)
    else:
        raise InputError("bench needs a NECK (a preset, family or package.module:factory; "
                         "'necktool list' shows them) or --weights FILE")
    # Every check, once, before torch loads; the plan also knows how many runs it times.
    counts = {k: v for k, v in (("warmup", warmup), ("repeat", repeat)) if v is not None}
    runtimes = list(dict.fromkeys(r for rs in runtime for r in rs)) if runtime else None
    loaded, overrides = None, flags.overrides()
    if data.given:  # the data is checked against the neck: resolve it once, here
        from necktool.spec.registry import resolve_spec

        chosen, overrides = resolve_spec(chosen, **overrides), {}
        loaded = data.load(chosen)
    plan = BenchPlan.build(chosen, batch=flags.batch, threads=threads, runtimes=runtimes,
                           precisions=precision or (), calibration=calibration,
                           stages=stages, weights=weights, seed=weights.seed or 0,
                           data=loaded, **counts, **overrides)
    load_heavy()
    from necktool.latency.bench import run_bench

    with progress(plan.steps, "timing") as advance:
        return run_bench(plan, on_run=advance)
