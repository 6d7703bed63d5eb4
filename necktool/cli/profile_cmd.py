"""``necktool profile``: per-level shapes, FLOPs, parameters and memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from necktool.cli.params import (
    BuildFlagsOpt,
    OptionalNecksArg,
    WeightsOpt,
    neck_in_weights,
)
from necktool.cli.render import load_heavy, progress
from necktool.errors import InputError
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.registry import expand_names

if TYPE_CHECKING:
    from necktool.analysis.profiling import ProfileResult, ProfileSet


def profile_command(necks: OptionalNecksArg = None, *, flags: BuildFlagsOpt,
                    weights: WeightsOpt) -> ProfileResult | ProfileSet:
    """Per-level output shapes, FLOPs (fvcore: 1 multiply-add = 1 flop), parameters and memory.

    Breaks the cost down by level, stage and operator; memory (fp32, MiB = 2^20 bytes) by
    level, with the peak held at once. fvcore's conv count is cross-checked with
    torch.utils.flop_counter's on the same forward (a difference exits 1).

    Several names or a pattern ('scrfd_*') add a comparison table. --weights FILE (a
    checkpoint or a detector ONNX file) profiles the neck the file holds.
    """
    # Every name, flag and size is checked (once: the plans) before torch is imported.
    from necktool.analysis.plan import ProfilePlan

    chosen: list[str | NeckSpec]
    if weights.path is not None:
        if necks:
            raise InputError("profile counts a neck's structure, which --weights FILE already "
                             "names: give NECK or --weights FILE, not both")
        chosen = [neck_in_weights(weights)[0]]
    elif necks:
        chosen = list(expand_names(necks))
    else:
        raise InputError("profile needs a NECK (a preset, family or package.module:factory; "
                         "'necktool list' shows them) or --weights FILE")
    plans = [ProfilePlan.build(name, batch=flags.batch, **flags.overrides())
             for name in chosen]
    load_heavy(counting=True)
    from necktool.analysis.profiling import ProfileSet, run_profile

    results: list[ProfileResult] = []
    with progress(sum(p.steps for p in plans), "profiling") as advance:
        for plan in plans:
            results.extend(run_profile(plan))
            advance(plan.spec.label)
    return results[0] if len(results) == 1 else ProfileSet(tuple(results))
