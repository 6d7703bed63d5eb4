"""Building blocks shared by both neck families."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from necktool.spec.fields import Activation, Norm

# Child names of the SCRFD seed's ConvGNReLU; a BN or norm-free block keeps the seed's
# (and Pytorch_Retinaface's) nn.Sequential indices 0/1/2 so checkpoints load strictly.
SEED_GN_NAMES = ("conv", "gn", "relu")


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    norm: Norm,
    act: Activation,
    gn_groups: int,
    leaky_slope: float = 0.1,
    names: tuple[str, str, str] | None = None,
) -> nn.Sequential:
    """Conv (padding ``k // 2``) + norm + activation, as one ``nn.Sequential``.

    The conv has no bias unless ``norm`` is ``none`` (a norm's shift makes one redundant).

    Args:
        names: Child names; ``None`` keeps the indices ``0, 1, 2``.
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                     bias=norm is Norm.NONE)
    norm_layer: nn.Module
    if norm is Norm.GN:
        norm_layer = nn.GroupNorm(gn_groups, out_channels)
    elif norm is Norm.BN:
        norm_layer = nn.BatchNorm2d(out_channels)
    else:
        norm_layer = nn.Identity()
    act_layer: nn.Module
    if act is Activation.RELU:
        act_layer = nn.ReLU(inplace=True)
    elif act is Activation.LEAKY_RELU:
        act_layer = nn.LeakyReLU(negative_slope=leaky_slope, inplace=True)
    else:
        act_layer = nn.Identity()
    layers = (conv, norm_layer, act_layer)
    if names is None:
        return nn.Sequential(*layers)
    return nn.Sequential(OrderedDict(zip(names, layers, strict=True)))


class UpsampleAdd(nn.Module):
    """``fine + nearest_upsample(coarse, size=fine's size)``; holds no parameters.

    A module rather than an inline expression so profilers attribute the fusion ops to
    a named stage. Resizing to the finer map's exact size (not ``scale_factor=2``) is what
    both seeds do, and it keeps odd sizes such as 640x480 -> 15 -> 30 consistent.
    """

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return fine + F.interpolate(coarse, size=[fine.size(2), fine.size(3)], mode="nearest")


class Add(nn.Module):
    """``a + b``; holds no parameters (a module so profilers can name its stage)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b
