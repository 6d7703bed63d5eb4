"""The two neck families of the seeds, built from a :class:`~necktool.specs.NeckSpec`.

* :class:`RetinaFaceFPN` follows Pytorch_Retinaface's ``models/net.py`` ``FPN``: the
  submodule names ``output1..N`` and ``merge1..N-1`` (each ``Sequential(conv, bn, act)``)
  are kept so a checkpoint's ``fpn.*`` weights load with ``strict=True``.
* :class:`PAFPN` follows the SCRFD seed: ``lateral_convs``, ``td_convs``, ``bu_convs``,
  ``bu_out_convs`` with the seed's block child names.

Both take a sequence of level tensors, finest first (a mapping whose values are in
level order is accepted too, as the original RetinaFace passes an ``OrderedDict``),
and return a tuple of output levels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn

from necktool.errors import InputError
from necktool.layers import SEED_GN_NAMES, Add, UpsampleAdd, conv_norm_act
from necktool.specs import Family, NeckSpec, Norm

Levels = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


def _as_levels(inputs: Levels, expected: int) -> list[torch.Tensor]:
    feats = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
    if len(feats) != expected:
        raise InputError(f"expected {expected} level tensors (finest first), got {len(feats)}")
    return feats


class Neck(nn.Module):
    """Common base: the spec, and the stage each top-level child belongs to."""

    #: top-level child name (without index) -> stage shown in profiles
    STAGES: ClassVar[Mapping[str, str]] = {}

    def __init__(self, spec: NeckSpec) -> None:
        super().__init__()
        self.spec = spec
        self.num_levels = spec.num_levels
        self.out_channels = spec.out_channels

    def _block(self, cin: int, kernel: int, stride: int = 1) -> nn.Sequential:
        s = self.spec
        return conv_norm_act(cin, s.out_channels, kernel, stride, norm=s.norm, act=s.act,
                             gn_groups=s.resolved_gn_groups, leaky_slope=s.leaky_slope,
                             names=self._names)

    _names: tuple[str, str, str] | None = None

    @classmethod
    def stage_of(cls, child: str) -> str:
        """Stage of a top-level child (``merge2`` -> ``merge``, ``td_convs`` -> ``top-down``)."""
        return cls.STAGES.get(child.rstrip("0123456789"), child)


class RetinaFaceFPN(Neck):
    """RetinaFace's FPN: 1x1 laterals, top-down nearest-upsample adds, 3x3 merges.

    The coarsest level gets no merge conv, as in the original.
    """

    STAGES: ClassVar[Mapping[str, str]] = {"output": "lateral", "fuse": "merge", "merge": "merge"}

    def __init__(self, spec: NeckSpec) -> None:
        super().__init__(spec)
        for i, cin in enumerate(spec.in_channels, start=1):
            self.add_module(f"output{i}", self._block(cin, 1))
        for i in range(1, spec.num_levels):
            self.add_module(f"fuse{i}", UpsampleAdd())
            self.add_module(f"merge{i}", self._block(spec.out_channels, 3))

    def forward(self, inputs: Levels) -> tuple[torch.Tensor, ...]:
        feats = _as_levels(inputs, self.num_levels)
        outs = [getattr(self, f"output{i + 1}")(x) for i, x in enumerate(feats)]
        for i in range(self.num_levels - 2, -1, -1):  # coarse to fine
            fused = getattr(self, f"fuse{i + 1}")(outs[i], outs[i + 1])
            outs[i] = getattr(self, f"merge{i + 1}")(fused)
        return tuple(outs)


class PAFPN(Neck):
    """SCRFD's PAFPN: lateral 1x1 -> top-down add -> 3x3 per level -> bottom-up
    stride-2 3x3 add -> 3x3 output conv per level.
    """

    STAGES: ClassVar[Mapping[str, str]] = {
        "lateral_convs": "lateral",
        "td_fuse": "top-down",
        "td_convs": "top-down",
        "bu_convs": "bottom-up",
        "bu_fuse": "bottom-up",
        "bu_out_convs": "output",
    }

    def __init__(self, spec: NeckSpec) -> None:
        super().__init__(spec)
        self._names = SEED_GN_NAMES if spec.norm is Norm.GN else None
        n = spec.num_levels
        self.lateral_convs = nn.ModuleList(self._block(c, 1) for c in spec.in_channels)
        self.td_fuse = nn.ModuleList(UpsampleAdd() for _ in range(n - 1))
        self.td_convs = nn.ModuleList(self._block(spec.out_channels, 3) for _ in range(n))
        self.bu_convs = nn.ModuleList(self._block(spec.out_channels, 3, 2) for _ in range(n - 1))
        self.bu_fuse = nn.ModuleList(Add() for _ in range(n - 1))
        self.bu_out_convs = nn.ModuleList(self._block(spec.out_channels, 3) for _ in range(n))
        self._init_weights()

    def _init_weights(self) -> None:
        # The seed's init: He-normal (fan_out) convs, unit-scale zero-shift norms.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Levels) -> tuple[torch.Tensor, ...]:
        feats = _as_levels(inputs, self.num_levels)
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats, strict=True)]
        for i in range(self.num_levels - 1, 0, -1):
            laterals[i - 1] = self.td_fuse[i - 1](laterals[i - 1], laterals[i])
        td_outs = [conv(x) for conv, x in zip(self.td_convs, laterals, strict=True)]
        bu_outs = [td_outs[0]]
        for i in range(self.num_levels - 1):
            bu_outs.append(self.bu_fuse[i](td_outs[i + 1], self.bu_convs[i](bu_outs[-1])))
        return tuple(conv(x) for conv, x in zip(self.bu_out_convs, bu_outs, strict=True))


FAMILIES: dict[Family, type[Neck]] = {Family.FPN: RetinaFaceFPN, Family.PAFPN: PAFPN}
