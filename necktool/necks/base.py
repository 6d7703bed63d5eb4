"""What every built-in neck shares: the spec, level inputs, and stage names."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn

from necktool.errors import InputError
from necktool.necks.layers import conv_norm_act
from necktool.spec.neck_spec import NeckSpec

Levels = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


def as_levels(inputs: Levels, expected: int) -> list[torch.Tensor]:
    """The level tensors, finest first (a mapping's values are taken in order, as the
    original RetinaFace passes an ``OrderedDict``)."""
    feats = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
    if len(feats) != expected:
        raise InputError(f"expected {expected} level tensors (finest first), got {len(feats)}")
    return feats


class Neck(nn.Module):
    """Common base: the spec, and the stage each top-level child belongs to."""

    #: top-level child name (without index) -> stage shown in profiles
    STAGES: ClassVar[Mapping[str, str]] = {}
    #: top-level child name -> what to add to its index to get the output level it feeds
    #: (``bu_convs.0`` makes the stride-2 input of level 1, P4)
    LEVEL_OFFSET: ClassVar[Mapping[str, int]] = {}
    #: child names of a conv/norm/act block; ``None`` keeps ``Sequential`` indices 0, 1, 2
    block_names: tuple[str, str, str] | None = None

    def __init__(self, spec: NeckSpec) -> None:
        super().__init__()
        self.spec = spec
        self.num_levels = spec.num_levels
        self.out_channels = spec.out_channels

    def block(self, cin: int, kernel: int, stride: int = 1) -> nn.Sequential:
        """The spec's conv + norm + activation, ``cin`` -> ``out_channels``."""
        s = self.spec
        return conv_norm_act(cin, s.out_channels, kernel, stride, norm=s.norm, act=s.act,
                             gn_groups=s.resolved_gn_groups, leaky_slope=s.leaky_slope,
                             names=self.block_names)

    def stage_parts(self) -> list[tuple[str, str, nn.Module]]:
        """``(module name, stage, module)`` covering every part of the neck once, in the
        order profiles list stages: by default the top-level children."""
        return [(name, self.stage_of(name), child) for name, child in self.named_children()]

    @classmethod
    def stage_of(cls, child: str) -> str:
        """Stage of a top-level child (``merge2`` -> ``merge``, ``td_convs`` -> ``top-down``)."""
        return cls.STAGES.get(child.rstrip("0123456789"), child)

    def part_of(self, path: str) -> tuple[str, int] | None:
        """The stage and the output level (0 = P3) that the submodule at ``path`` computes,
        or ``None`` for a path outside the neck's children.

        ``td_convs.1.conv`` -> ``("top-down", 1)``; RetinaFace's ``merge1.0`` ->
        ``("merge", 0)`` (its children are numbered from 1).
        """
        head, _, rest = path.partition(".")
        numbered = _NUMBERED.fullmatch(head)
        if numbered:  # RetinaFace's output1, merge1, fuse1: level i is child i + 1
            name, index = numbered.group(1), int(numbered.group(2)) - 1
        else:
            first = rest.partition(".")[0]
            if not first.isdigit():
                return None
            name, index = head, int(first)
        if name not in self.STAGES or not hasattr(self, head):
            return None
        return self.STAGES[name], index + self.LEVEL_OFFSET.get(name, 0)


_NUMBERED = re.compile(r"([A-Za-z_]+?)(\d+)")
