"""``necktool bench``: latency of a neck in PyTorch eager and in ONNX Runtime (CPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.analysis.timing import ALL_RUNTIMES, DEFAULT_REPEAT, DEFAULT_WARMUP, MAX_RUNS, Runtime
from necktool.cli.data_params import DataOpt
from necktool.cli.params import (
    BuildFlagsOpt,
    CalibrationOpt,
    FormatOpt,
    NeckArg,
    PrecisionsOpt,
    typer_parser,
)
from necktool.cli.render import load_heavy, progress
from necktool.errors import InputError
from necktool.spec.fields import IntKind
from necktool.spec.registry import resolve_spec

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
    data: DataOpt,
) -> BenchResult:
    """Latency of PyTorch eager and ONNX Runtime (CPU): median, spread, GFLOP/s.

    Warm-up runs, then timed runs on the same seeded inputs. GFLOP/s are fvcore FLOPs
    (1 multiply-add = 1 flop) divided by the median time. --precision fp32,fp16,int8 times
    ONNX Runtime at each precision in one table, with file size, max abs error and SQNR
    against fp32 PyTorch. With --calibration-data or --images/--backbone, int8 is calibrated
    on the data's calibration part (features at the benchmark size: --image-size).
    """
    spec = resolve_spec(neck, **flags.overrides())  # a bad name or flag: exit 2 at once
    precisions = list(precision or [])
    if runtime:
        chosen = list(dict.fromkeys(runtime))
    else:
        chosen = [Runtime.ONNXRUNTIME] if precisions else list(ALL_RUNTIMES)
    series = sum(max(1, len(precisions)) if r is Runtime.ONNXRUNTIME else 1 for r in chosen)
    warmup = DEFAULT_WARMUP if warmup is None else warmup
    repeat = DEFAULT_REPEAT if repeat is None else repeat
    if data.given and "int8" not in precisions:
        raise InputError("--calibration-data and --images calibrate int8 here; add int8 to "
                         "--precision")
    loaded = data.load(spec)
    load_heavy()
    from necktool.analysis.bench import bench

    with progress(repeat * series, "timing") as advance:
        return bench(neck, batch=flags.batch, warmup=warmup, repeat=repeat, threads=threads,
                     runtimes=chosen, precisions=precisions, calibration=calibration,
                     on_run=advance, data=loaded, **flags.overrides())
