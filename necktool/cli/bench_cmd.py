"""``necktool bench``: latency of a neck in PyTorch eager and in ONNX Runtime (CPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.analysis.timing import DEFAULT_REPEAT, DEFAULT_WARMUP, MAX_RUNS, Runtime
from necktool.cli.params import (
    BuildFlagsOpt,
    CalibrationOpt,
    FormatOpt,
    NeckArg,
    PrecisionsOpt,
    typer_parser,
)
from necktool.cli.render import load_heavy, progress
from necktool.spec.fields import IntKind

if TYPE_CHECKING:
    from necktool.analysis.bench import BenchResult

TIMING = "Timing"
_runs = typer_parser(IntKind(high=MAX_RUNS).from_text)

Warmup = Annotated[Any, typer.Option(
    "--warmup", metavar="N", parser=_runs, rich_help_panel=TIMING, show_default=False,
    help=f"Untimed runs per runtime first. Default: {DEFAULT_WARMUP}.")]
Repeat = Annotated[Any, typer.Option(
    "--repeat", metavar="N", parser=_runs, rich_help_panel=TIMING, show_default=False,
    help=f"Timed runs per runtime. Default: {DEFAULT_REPEAT}.")]
Threads = Annotated[Any, typer.Option(
    "--threads", metavar="N", parser=typer_parser(IntKind(high=1024).from_text),
    rich_help_panel=TIMING, show_default=False,
    help="Intra-op threads for both runtimes. Default: torch.get_num_threads().")]
Runtimes = Annotated[list[Runtime] | None, typer.Option(
    "--runtime", rich_help_panel=TIMING, show_default=False,
    help="Time only this runtime (repeat the flag for several). Default: both; with "
    "--precision, onnxruntime.")]


def bench_command(
    neck: NeckArg,
    warmup: Warmup = None,
    repeat: Repeat = None,
    threads: Threads = None,
    runtime: Runtimes = None,
    precision: PrecisionsOpt = None,
    calibration: CalibrationOpt = None,
    *,
    flags: BuildFlagsOpt,
    fmt: FormatOpt,
) -> BenchResult:
    """Latency of PyTorch eager and ONNX Runtime (CPU): median, spread, GFLOP/s.

    Warm-up runs, then timed runs on the same seeded inputs. GFLOP/s are fvcore FLOPs
    (1 multiply-add = 1 flop) divided by the median time. --precision fp32,fp16,int8 times
    ONNX Runtime at each precision in one table, with file size, max abs error and SQNR
    against fp32 PyTorch.
    """
    from necktool.analysis.plan import BenchPlan

    # Every check, once, before torch loads; the plan also knows how many runs it times.
    counts = {k: v for k, v in (("warmup", warmup), ("repeat", repeat)) if v is not None}
    plan = BenchPlan.build(neck, batch=flags.batch, threads=threads, runtimes=runtime or None,
                           precisions=precision or (), calibration=calibration, **counts,
                           **flags.overrides())
    load_heavy()
    from necktool.analysis.bench import run_bench

    with progress(plan.steps, "timing") as advance:
        return run_bench(plan, on_run=advance)
