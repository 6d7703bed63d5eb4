"""``necktool sweep``: FLOPs and parameters per neck and input size, as a table or plot."""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

from necktool.cli.options import (
    ActOpt,
    Batch,
    BuildFlags,
    GnGroups,
    InChannels,
    Json,
    LeakySlope,
    NecksArg,
    NormOpt,
    OutChannels,
)
from necktool.cli.output import load_heavy, print_json, progress, stderr, stdout

DEFAULT_SIZES = "320,480,640,960,1280"

Sizes = Annotated[str, typer.Option(
    "--sizes", metavar="SIZES",
    help="Sizes to profile: a list such as 320,480,640 (each HxW or one number for a "
    "square) and/or inclusive ranges START:STOP:STEP such as 320:1280:160.")]
Plot = Annotated[pathlib.Path | None, typer.Option(
    "--plot", metavar="FILE", dir_okay=False,
    help="Also draw GFLOPs against input size to FILE (.png or .svg); needs "
    "necktool\\[plot] (matplotlib).")]


def sweep_command(
    necks: NecksArg,
    sizes: Sizes = DEFAULT_SIZES,
    plot: Plot = None,
    in_channels: InChannels = None,
    out_channels: OutChannels = None,
    norm: NormOpt = None,
    gn_groups: GnGroups = None,
    act: ActOpt = None,
    leaky_slope: LeakySlope = None,
    batch: Batch = 1,
    json_out: Json = False,
) -> None:
    """FLOPs (fvcore: 1 multiply-add = 1 flop) and parameters of each neck at each size.

    Each neck is built once and traced once per size. --plot draws one line per neck.
    """
    from necktool.registry import expand_names
    from necktool.sweep import check_matplotlib, check_plot_path, parse_sizes, sweep

    # Every cheap check first: a bad path or a missing extra must not cost a sweep.
    size_list = parse_sizes(sizes)
    names = expand_names(necks)
    if plot is not None:
        check_plot_path(plot)
        check_matplotlib()
    overrides = BuildFlags(in_channels, out_channels, norm, gn_groups, act,
                           leaky_slope).overrides()
    load_heavy(counting=True)  # before the work: see cli.output.load_heavy
    with progress(len(names) * len(size_list), "sweeping") as advance:
        result = sweep(names, size_list, batch=batch, on_point=advance, **overrides)
    if plot is not None:
        result.plot(plot)
    if json_out:
        print_json(result.to_dict())
    else:
        stdout().print(result.table())
    if plot is not None:
        note = stderr()
        if note.is_terminal:  # a confirmation for people; scripts get a clean stderr
            note.print(f"plot written to {plot}")
