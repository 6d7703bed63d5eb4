"""A small, real custom neck: one BiFPN layer (EfficientDet) with fast normalised fusion.

necktool builds it from its import path, like a preset::

    necktool profile examples.custom_neck:BiFPN --in-channels 40,80,160 --out-channels 64
    necktool export  examples.custom_neck:BiFPN --in-channels 40,80,160 --onnx -o bifpn.onnx

Any ``nn.Module`` class or function taking ``in_channels`` (a list, finest level first)
and ``out_channels`` works; ``forward`` gets the level tensors and returns one per level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SeparableConvBN(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 + BatchNorm + ReLU, EfficientDet's fusion conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.pointwise(self.depthwise(x))))


class WeightedSum(nn.Module):
    """Fast normalised fusion: ``sum(relu(w_i) * x_i) / (sum(relu(w)) + eps)``."""

    def __init__(self, n: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        w = F.relu(self.weight)
        w = w / (w.sum() + self.eps)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


class BiFPN(nn.Module):
    """One bidirectional layer over N levels: top-down, then bottom-up with skip inputs."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"BiFPN needs at least 2 levels, got {list(in_channels)}")
        n = len(in_channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.td_fuse = nn.ModuleList(WeightedSum(2) for _ in range(n - 1))
        self.td_conv = nn.ModuleList(SeparableConvBN(out_channels) for _ in range(n - 1))
        # the finest level's top-down output is final; the others fuse three inputs
        self.bu_fuse = nn.ModuleList(WeightedSum(3 if i < n - 1 else 2) for i in range(1, n))
        self.bu_conv = nn.ModuleList(SeparableConvBN(out_channels) for _ in range(n - 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        lat = [conv(x) for conv, x in zip(self.lateral, feats, strict=True)]
        n = len(lat)
        td = list(lat)
        for i in range(n - 2, -1, -1):
            up = F.interpolate(td[i + 1], size=lat[i].shape[-2:], mode="nearest")
            td[i] = self.td_conv[i](self.td_fuse[i](lat[i], up))
        out = [td[0]]
        for i in range(1, n):
            down = F.max_pool2d(out[-1], kernel_size=3, stride=2, padding=1)
            inputs = (lat[i], td[i], down) if i < n - 1 else (lat[i], down)
            out.append(self.bu_conv[i - 1](self.bu_fuse[i - 1](*inputs)))
        return tuple(out)
