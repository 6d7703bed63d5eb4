"""SCRFD's path-aggregation FPN, the seed's design (``lateral_convs``, ``td_convs``,
``bu_convs``, ``bu_out_convs`` with the seed's block child names ``conv``/``gn``/``relu``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from necktool.necks.base import Levels, Neck, as_levels
from necktool.necks.layers import SEED_GN_NAMES, Add, UpsampleAdd
from necktool.spec.families import Inferred, lateral_weights, norm_from
from necktool.spec.fields import Activation, Norm
from necktool.spec.neck_spec import NeckSpec


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
    LEVEL_OFFSET: ClassVar[Mapping[str, int]] = {"bu_convs": 1, "bu_fuse": 1}

    def __init__(self, spec: NeckSpec) -> None:
        super().__init__(spec)
        self.block_names = SEED_GN_NAMES if spec.norm is Norm.GN else None
        n = spec.num_levels
        self.lateral_convs = nn.ModuleList(self.block(c, 1) for c in spec.in_channels)
        self.td_fuse = nn.ModuleList(UpsampleAdd() for _ in range(n - 1))
        self.td_convs = nn.ModuleList(self.block(spec.out_channels, 3) for _ in range(n))
        self.bu_convs = nn.ModuleList(self.block(spec.out_channels, 3, 2) for _ in range(n - 1))
        self.bu_fuse = nn.ModuleList(Add() for _ in range(n - 1))
        self.bu_out_convs = nn.ModuleList(self.block(spec.out_channels, 3) for _ in range(n))
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
        feats = as_levels(inputs, self.spec.num_inputs)
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats, strict=True)]
        for i in range(self.num_levels - 1, 0, -1):
            laterals[i - 1] = self.td_fuse[i - 1](laterals[i - 1], laterals[i])
        td_outs = [conv(x) for conv, x in zip(self.td_convs, laterals, strict=True)]
        bu_outs = [td_outs[0]]
        for i in range(self.num_levels - 1):
            bu_outs.append(self.bu_fuse[i](td_outs[i + 1], self.bu_convs[i](bu_outs[-1])))
        return tuple(conv(x) for conv, x in zip(self.bu_out_convs, bu_outs, strict=True))


def infer(shapes: Mapping[str, tuple[int, ...]]) -> Inferred | None:
    """The spec fields a seed-PAFPN state dict's shapes imply (``lateral_convs.0.conv.weight``
    and ``.gn.*`` with GroupNorm, ``lateral_convs.0.0.weight`` and ``.1.*`` otherwise)."""
    gn = "lateral_convs.0.gn.weight" in shapes
    conv = "conv" if gn else "0"
    laterals = lateral_weights(shapes, lambda i: f"lateral_convs.{i}.{conv}.weight")
    if laterals is None:
        return None
    norm = Norm.GN if gn else norm_from(shapes, "lateral_convs.0.1.running_mean", "")
    fields = {"in_channels": tuple(s[1] for s in laterals), "out_channels": laterals[0][0],
              "norm": norm, "act": Activation.RELU}
    notes = ["activation: not stored in the weights; the seed's ReLU assumed"]
    if gn:
        notes.append("GroupNorm groups: not stored in the weights; the seed's rule assumed")
    return Inferred(fields, tuple(notes))


def conv_keys(spec: NeckSpec, role: str, level: int) -> tuple[str, str]:
    """The module a detector file's neck conv loads into: ``(conv, norm)`` paths."""
    container = {"lateral": "lateral_convs", "fpn": "td_convs", "downsample": "bu_convs",
                 "pafpn": "bu_out_convs"}[role]
    index = level - 1 if role == "downsample" else level
    gn = spec.norm is Norm.GN
    return (f"{container}.{index}.{'conv' if gn else '0'}",
            f"{container}.{index}.{'gn' if gn else '1'}")
