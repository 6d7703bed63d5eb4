"""``necktool sweep``: FLOPs, parameters and memory per neck and input size, as a table or
plot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.analysis.sweep import (
    PlotMetric,
    check_matplotlib,
    check_plot_path,
    parse_sizes,
    sweep_plans,
)
from necktool.cli.params import PATH, NecksArg, SizelessFlagsOpt, typer_parser
from necktool.cli.render import load_heavy, progress
from necktool.errors import InputError
from necktool.spec.fields import ChoiceKind

if TYPE_CHECKING:
    from necktool.analysis.sweep import SweepResult

DEFAULT_SIZES = "320,480,640,960,1280"

Sizes = Annotated[str, typer.Option(
    "--sizes", metavar="SIZES",
    help="Sizes to profile: a list such as 320,480,640 (each HxW or one number for a "
    "square) and/or inclusive ranges START:STOP:STEP such as 320:1280:160.")]
Plot = Annotated[Any, typer.Option(
    "--plot", metavar="FILE", show_default=False, parser=PATH,
    help="Also draw --metric against input size to FILE (.png or .svg); needs "
    "necktool\\[plot] (matplotlib).")]
Metric = Annotated[Any, typer.Option(
    "--metric", show_default=False, metavar="[" + "|".join(m.value for m in PlotMetric) + "]",
    parser=typer_parser(ChoiceKind(PlotMetric).from_text),
    help="What --plot draws: flops (GFLOPs, the default), params (Mparams) or memory (peak "
    "activation MiB, 2^20 bytes).")]


def sweep_command(necks: NecksArg, sizes: Sizes = DEFAULT_SIZES, plot: Plot = None,
                  metric: Metric = None, *, flags: SizelessFlagsOpt) -> SweepResult:
    """FLOPs (fvcore: 1 multiply-add = 1 flop), parameters and memory of each neck at each size.

    Memory: the peak activation MiB (2^20 bytes) in the table, every figure in JSON.
    Each neck is built once and traced once per size. --plot draws one line per neck,
    of --metric flops, params or memory.
    """
    # Every cheap check first: a bad path or a missing extra must not cost a sweep.
    if metric is not None and plot is None:
        raise InputError("--metric chooses what --plot draws; give --plot FILE too")
    plans = sweep_plans(necks, parse_sizes(sizes), flags.batch, **flags.overrides())
    if plot is not None:
        check_plot_path(plot)
        check_matplotlib()
    load_heavy(counting=True)
    from necktool.analysis.sweep import run_sweep

    with progress(sum(p.steps for p in plans), "sweeping") as advance:
        result = run_sweep(plans, on_point=advance)
    if plot is not None:  # the report says where it went
        result = result.plotted(plot, metric or PlotMetric.FLOPS)
    return result
