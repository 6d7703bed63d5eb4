"""``necktool profile``: per-level shapes, FLOPs and parameters."""

from __future__ import annotations

from necktool.cli.options import (
    ActOpt,
    Batch,
    BuildFlags,
    GnGroups,
    InChannels,
    InputSize,
    Json,
    LeakySlope,
    NecksArg,
    NormOpt,
    OutChannels,
)
from necktool.cli.output import load_heavy, print_json, progress, stdout


def profile_command(
    necks: NecksArg,
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
    """Per-level output shapes, FLOPs (fvcore: 1 multiply-add = 1 flop) and parameters.

    Breaks the cost down by level, stage and operator.

    Several names or a pattern ('scrfd_*') add a comparison table.
    """
    from necktool.profiling import comparison_table, profile
    from necktool.registry import expand_names

    names = expand_names(necks)
    overrides = BuildFlags(in_channels, out_channels, norm, gn_groups, act, leaky_slope,
                           input_size).overrides()
    results = []
    load_heavy(counting=True)  # before the work: see cli.output.load_heavy
    with progress(len(names), "profiling") as advance:
        for name in names:
            results.append(profile(name, batch=batch, **overrides))
            advance(name)
    if json_out:
        print_json(results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results])
        return
    console = stdout()
    for result in results:
        for table in result.tables():
            console.print(table)
    if len(results) > 1:
        console.print(comparison_table(results))
