"""``necktool bench``: latency of a neck in PyTorch eager and in ONNX Runtime (CPU)."""

from __future__ import annotations

from typing import Annotated

import typer

from necktool.bench import DEFAULT_REPEAT, DEFAULT_WARMUP, Runtime
from necktool.cli.options import (
    ActOpt,
    Batch,
    BuildFlags,
    GnGroups,
    InChannels,
    InputSize,
    Json,
    LeakySlope,
    NeckArg,
    NormOpt,
    OutChannels,
)
from necktool.cli.output import load_heavy, print_json, progress, stdout

TIMING = "Timing"

Warmup = Annotated[int, typer.Option(
    "--warmup", min=1, rich_help_panel=TIMING, help="Untimed runs per runtime first.")]
Repeat = Annotated[int, typer.Option(
    "--repeat", min=1, rich_help_panel=TIMING, help="Timed runs per runtime.")]
Threads = Annotated[int | None, typer.Option(
    "--threads", min=1, rich_help_panel=TIMING, show_default=False,
    help="Intra-op threads for both runtimes. Default: torch.get_num_threads().")]
Runtimes = Annotated[list[Runtime] | None, typer.Option(
    "--runtime", rich_help_panel=TIMING, show_default=False,
    help="Time only this runtime (repeat the flag for several). Default: both.")]


def bench_command(
    neck: NeckArg,
    warmup: Warmup = DEFAULT_WARMUP,
    repeat: Repeat = DEFAULT_REPEAT,
    threads: Threads = None,
    runtime: Runtimes = None,
    in_channels: InChannels = None,
    out_channels: OutChannels = None,
    norm: NormOpt = None,
    gn_groups: GnGroups = None,
    act: ActOpt = None,
    leaky_slope: LeakySlope = None,
    input_size: InputSize = None,
    batch: Batch = 1,
    json_out: Json = False,
) -> None:
    """Latency of PyTorch eager and ONNX Runtime (CPU): median, spread, GFLOP/s.

    Warm-up runs, then timed runs on the same seeded inputs. GFLOP/s are fvcore FLOPs
    (1 multiply-add = 1 flop) divided by the median time.
    """
    from necktool.bench import ALL_RUNTIMES, bench

    overrides = BuildFlags(in_channels, out_channels, norm, gn_groups, act, leaky_slope,
                           input_size).overrides()
    chosen = list(dict.fromkeys(runtime)) if runtime else list(ALL_RUNTIMES)
    load_heavy()  # before the work: see cli.output.load_heavy
    with progress(repeat * len(chosen), "timing") as advance:
        result = bench(neck, batch=batch, warmup=warmup, repeat=repeat, threads=threads,
                       runtimes=chosen, on_run=advance, **overrides)
    if json_out:
        print_json(result.to_dict())
    else:
        stdout().print(result.table())
