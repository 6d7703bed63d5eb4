"""Building blocks shared by the neck families."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from necktool.spec.fields import Activation, Norm
from necktool.spec.graph_form import Upsample

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
    layers = (conv, norm_layer(norm, out_channels, gn_groups), activation(act, leaky_slope))
    if names is None:
        return nn.Sequential(*layers)
    return nn.Sequential(OrderedDict(zip(names, layers, strict=True)))


def activation(act: Activation, leaky_slope: float = 0.1) -> nn.Module:
    """The module of an :class:`Activation` (``none``: identity)."""
    if act is Activation.RELU:
        return nn.ReLU(inplace=True)
    if act is Activation.LEAKY_RELU:
        return nn.LeakyReLU(negative_slope=leaky_slope, inplace=True)
    if act is Activation.SILU:
        return nn.SiLU(inplace=True)
    return nn.Identity()


def norm_layer(norm: Norm, channels: int, gn_groups: int = 1) -> nn.Module:
    """The module of a :class:`Norm` over ``channels`` (``none``: identity)."""
    if norm is Norm.GN:
        return nn.GroupNorm(gn_groups, channels)
    if norm is Norm.BN:
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def upsample_like(coarse: torch.Tensor, fine: torch.Tensor, form: Upsample) -> torch.Tensor:
    """``coarse`` nearest-upsampled to ``fine``'s size, written in ``form`` (see
    :class:`UpsampleAdd`)."""
    if form is Upsample.SCALE2:
        up = F.interpolate(coarse, scale_factor=2.0, mode="nearest")
        return up[:, :, :fine.size(2), :fine.size(3)]
    return F.interpolate(coarse, size=[fine.size(2), fine.size(3)], mode="nearest")


class UpsampleAdd(nn.Module):
    """``fine + nearest_upsample(coarse)`` to the finer map's size; holds no parameters.

    A module rather than an inline expression so profilers attribute the fusion ops to
    a named stage. ``form`` is how the upsample is written, not what it computes (an export
    option, never part of the spec, so profiles and checkpoints do not see it):

    * ``size`` (default): ``interpolate(size=fine's size)``, as both seeds and mmdet's FPN
      do; it keeps odd sizes such as 640x480 -> 15 -> 30 consistent, and exports as a
      Resize whose ``sizes`` come from a Shape op.
    * ``scale2``: ``interpolate(scale_factor=2)`` cropped to the finer map's size; exports as
      a Resize with constant scales and a Slice. Equal to ``size`` whenever the coarse map
      is ``ceil(fine / 2)`` (every ``ceil(H / stride)`` level pair): for fine size ``f``,
      ``size`` reads source row ``floor(i * ceil(f/2) / f)``, which is ``i // 2`` for every
      ``i < f``, the row ``scale2`` reads (tests/test_deploy_upsample.py checks every level
      size up to a bound, in PyTorch and in ONNX Runtime).
    """

    def __init__(self, form: Upsample = Upsample.SIZE) -> None:
        super().__init__()
        self.form = form

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return fine + upsample_like(coarse, fine, self.form)

    def extra_repr(self) -> str:
        return "" if self.form is Upsample.SIZE else f"form={self.form.value}"


class UpsampleCat(UpsampleAdd):
    """``cat([nearest_upsample(coarse), fine], channels)``: the YOLO necks' top-down merge
    (their ``nn.Upsample(None, 2, 'nearest')`` then ``Concat``, upsampled part first),
    written in ``form`` like :class:`UpsampleAdd`; holds no parameters."""

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return torch.cat([upsample_like(coarse, fine, self.form), fine], 1)


class Concat(nn.Module):
    """``cat([a, b], channels)``; holds no parameters (the YOLO necks' bottom-up merge)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], 1)


def set_upsample(model: nn.Module, form: Upsample) -> int:
    """Write every :class:`UpsampleAdd` of ``model`` in ``form``; returns how many there are
    (a custom neck that upsamples in its own code has none)."""
    found = [m for m in model.modules() if isinstance(m, UpsampleAdd)]
    for module in found:
        module.form = form
    return len(found)


class Add(nn.Module):
    """``a + b``; holds no parameters (a module so profilers can name its stage)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b
