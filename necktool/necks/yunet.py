"""YuNet's top-down "TFPN", after libfacedetection.train ``mmdet/models/necks/tfpn.py``.

Each level has one depthwise-separable unit (the authors' ``ConvDPUnit``: 1x1 conv with
bias -> 3x3 depthwise conv with bias -> BatchNorm -> ReLU). Top-down only, merging by Add:
``P5 = DPU(C5)``, ``P4 = DPU(C4 + up(P5))``, ``P3 = DPU(C3 + up(P4))``. The units keep
the authors' names ``lateral_convs.<i>`` (``conv1``, ``conv2``, ``bn``), although they run
after the add, so a checkpoint's ``neck.*`` weights load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from necktool.necks.base import Levels, Neck, as_levels
from necktool.necks.layers import UpsampleAdd, activation, norm_layer
from necktool.spec.families import Inferred, Shapes, lateral_weights
from necktool.spec.fields import Activation, Norm
from necktool.spec.neck_spec import NeckSpec


class DPUnit(nn.Module):
    """1x1 conv -> 3x3 depthwise conv (both with bias) -> norm -> activation."""

    def __init__(self, cin: int, cout: int, norm: Norm, act: Activation) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, 1, 0, bias=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=True, groups=cout)
        self.bn = norm_layer(norm, cout)
        self.relu = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class TFPN(Neck):
    """YuNet's neck: a unit per level, top-down nearest x2 upsample-and-add."""

    STAGES: ClassVar[Mapping[str, str]] = {"lateral_convs": "dpu", "td_fuse": "top-down"}

    def __init__(self, spec: NeckSpec) -> None:
        super().__init__(spec)
        out = spec.out_channels
        self.lateral_convs = nn.ModuleList(DPUnit(c, out, spec.norm, spec.act)
                                           for c in spec.in_channels)
        # td_fuse[i] adds the upsampled unit output of level i + 1 into level i
        self.td_fuse = nn.ModuleList(UpsampleAdd() for _ in range(spec.num_levels - 1))
        self._init_weights()

    def _init_weights(self) -> None:
        # The authors' init: Xavier-normal convs (all have a bias, filled with 0.02).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Levels) -> tuple[torch.Tensor, ...]:
        feats = as_levels(inputs, self.spec.num_inputs)
        n = len(feats)
        outs: list[torch.Tensor] = [feats[-1]] * n
        outs[-1] = self.lateral_convs[-1](feats[-1])
        for i in range(n - 2, -1, -1):
            outs[i] = self.lateral_convs[i](self.td_fuse[i](feats[i], outs[i + 1]))
        return tuple(outs)


def infer(shapes: Shapes) -> Inferred | None:
    """The spec fields a TFPN state dict's shapes imply (``lateral_convs.<i>.conv1``)."""
    units = lateral_weights(shapes, lambda i: f"lateral_convs.{i}.conv1.weight")
    if units is None:
        return None
    norm = Norm.BN if "lateral_convs.0.bn.running_mean" in shapes else Norm.NONE
    fields = {"in_channels": tuple(s[1] for s in units), "out_channels": units[0][0],
              "norm": norm, "act": Activation.RELU}
    return Inferred(fields, ("activation: not stored in the weights; YuNet's ReLU assumed",))
