"""What every built-in neck shares: the spec, level inputs, and stage names."""

from __future__ import annotations

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
