"""What each output level sees: the receptive field of its pixels on every input level.

For one output pixel far from the borders, the block of an input level's pixels that can
change it (every path the neck has: laterals, top-down upsampling, bottom-up stride-2
convs, extra levels), as height x width in that level's pixels; the largest over output
positions, since through stride-2 convs and nearest upsampling the block differs by a
pixel with the position's parity. In image pixels: the largest over input levels of
block x the level's stride. Normalisation statistics are excluded (GroupNorm's mean and
variance span the whole map, so strictly every pixel would see everything): norms count
as per-pixel operations.

How it is computed: the neck's own ``forward`` runs on shape-only (``meta``) tensors
under :class:`necktool.analysis.intervals.Tracker`, which carries beside every tensor
derived from the inputs the interval of input rows (columns) each of its rows (columns)
depends on, mapped through each op from its kernel, stride, padding, dilation or index
mapping. The same code reads every built-in family and most custom necks; a forward that
calls an operation not modelled there on level data (or that needs real values) is
reported as not readable, naming the operation.

"Far from the borders" is made concrete by the size: the forward runs at a square size
(a multiple of the coarsest stride, so every upsample is exactly 2x) large enough that
no block of the central output pixels touches an input's border, confirmed by doubling
the size once and getting the same figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from necktool.analysis.intervals import Axis, Deps, Tracker, Unreadable
from necktool.errors import first_line
from necktool.report import Note, Table, num, table
from necktool.spec.neck_spec import NeckSpec

#: the largest side tried before giving up (a neck whose field outgrows this is unusual)
MAX_SIDE = 1 << 16


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """One output level's receptive field: ``inputs`` maps each input level (``c3``...)
    to the (height, width) block of its pixels that can change one output pixel
    (``(0, 0)``: that level cannot change it); ``image`` is the largest block x stride."""

    image: tuple[int, int]
    inputs: dict[str, tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        return {"image": list(self.image),
                "inputs": {name: list(hw) for name, hw in self.inputs.items()}}


@dataclasses.dataclass(frozen=True)
class ReceptiveFields:
    """Every output level's field, or why the neck's structure could not be read."""

    levels: tuple[ReceptiveField, ...] | None
    unreadable: str | None = None
    side: int | None = None  # the square size the forward ran at

    def table(self, level_names: Sequence[str], input_names: Sequence[str],
              strides: Sequence[int]) -> Table | Note:
        if self.levels is None:
            return Note(f"receptive field: not readable ({self.unreadable})", "warn")
        rows = [(name, str(stride), _hw(rf.image),
                 *(_hw(rf.inputs[i]) if any(rf.inputs[i]) else "-" for i in input_names))
                for name, stride, rf in zip(level_names, strides, self.levels, strict=True)]
        return table("receptive field (pixels far from the borders; h x w)",
                     ["level", num("stride"), num("image px"),
                      *(num(f"on {i}") for i in input_names)], rows,
                     caption="on cK: block of that input level's pixels that can change one "
                             "output pixel (largest over positions, every path); image px: "
                             "the largest block x stride; norm statistics excluded")


def _hw(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


# -- the figures ---------------------------------------------------------------------
def _identity(n: int) -> Axis:
    return np.stack([np.arange(n), np.arange(n)], axis=1).astype(np.int64)


def _run(model: nn.Module, spec: NeckSpec, side: int) -> list[Deps]:
    sizes = spec.input_sizes((side, side))
    inputs = [torch.empty(1, c, h, w, device="meta") for c, (h, w) in
              zip(spec.in_channels, sizes, strict=True)]
    tracker = Tracker()
    for level, (x, (h, w)) in enumerate(zip(inputs, sizes, strict=True)):
        tracker.track(x, {level: (_identity(h), _identity(w))})
    with tracker, torch.no_grad():
        outputs: Any = model(inputs)
    if isinstance(outputs, Mapping):
        outputs = list(outputs.values())
    if isinstance(outputs, torch.Tensor) or not isinstance(outputs, (list, tuple)) \
            or len(outputs) != spec.num_levels:
        raise Unreadable(f"the forward did not return {spec.num_levels} level tensors")
    found = []
    for out in outputs:
        deps = tracker.of(out)
        if deps is None:
            raise Unreadable("an output does not come from the inputs through modelled "
                             "operations")
        found.append(deps)
    return found


def _central(deps: Deps, spec: NeckSpec, side: int, level: int) -> tuple[
        dict[int, tuple[int, int]], bool]:
    """Largest block per input level over the central positions of output ``level`` (two
    whole periods of the parity pattern each way: a path through level ``j`` repeats every
    ``2 ** (j - level)`` positions), and whether any block touches an input's border."""
    sizes = spec.input_sizes((side, side))
    period = 2 ** max(1, spec.num_levels - 1 - level)
    blocks: dict[int, tuple[int, int]] = {}
    touches = False
    for level, (rows, cols) in deps.items():
        n_h, n_w = sizes[level]
        extent = []
        for axis, n in ((rows, n_h), (cols, n_w)):
            c = axis.shape[0] // 2
            window = axis[max(0, c - period): c + period]
            window = window[window[:, 0] <= window[:, 1]]
            if not len(window):
                extent.append(0)
                continue
            touches |= bool((window[:, 0] <= 0).any() or (window[:, 1] >= n - 1).any())
            extent.append(int((window[:, 1] - window[:, 0]).max()) + 1)
        if all(extent):
            blocks[level] = (extent[0], extent[1])
    return blocks, touches


def _figures(model: nn.Module, spec: NeckSpec, side: int) -> tuple[list[dict[int, tuple[
        int, int]]], bool]:
    per_level = [_central(d, spec, side, i) for i, d in enumerate(_run(model, spec, side))]
    return [b for b, _ in per_level], any(t for _, t in per_level)


def receptive_fields(model: nn.Module, spec: NeckSpec) -> ReceptiveFields:
    """The receptive field of every output level of ``model`` (built from ``spec``).

    Never raises for a neck whose structure cannot be read: the result then says why.

    Example:
        >>> from necktool.necks.build import build_neck
        >>> from necktool.spec.registry import resolve_spec
        >>> spec = resolve_spec("retinaface_mnet")
        >>> rf = receptive_fields(build_neck(spec), spec)
        >>> rf.levels[-1].inputs["c5"], rf.levels[-1].inputs["c3"]
        ((1, 1), (0, 0))
    """
    coarsest = spec.strides[-1]
    side = coarsest * 4
    try:
        previous = None
        while side <= MAX_SIDE:
            figures, touches = _figures(model, spec, side)
            if not touches and figures == previous:
                break
            previous = None if touches else figures
            side *= 2
        else:
            return ReceptiveFields(None, f"no field settles below {MAX_SIDE} px a side")
    except KeyboardInterrupt:
        raise
    except Unreadable as exc:
        return ReceptiveFields(None, str(exc))
    except BaseException as exc:  # a custom forward may fail on meta tensors in any way
        return ReceptiveFields(None, f"the forward failed on shape-only (meta) tensors: "
                                     f"{first_line(exc)}")
    strides = spec.input_strides
    levels = []
    for blocks in figures:
        inputs = {name: blocks.get(i, (0, 0)) for i, name in enumerate(spec.input_names)}
        image = (max(h * s for (h, _), s in zip(inputs.values(), strides, strict=True)),
                 max(w * s for (_, w), s in zip(inputs.values(), strides, strict=True)))
        levels.append(ReceptiveField(image, inputs))
    return ReceptiveFields(tuple(levels), side=side)

