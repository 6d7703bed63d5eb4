"""mmdetection's FPN and PAFPN, written from their published structure (no mmdet/mmcv).

Blocks are shaped like mmcv's ``ConvModule``: a child ``conv``, then ``bn``/``gn`` when
there is a norm, then ``activate`` when there is an activation; the conv has a bias
exactly when there is no norm (``bias='auto'``). The containers are mmdetection's
(``lateral_convs``, ``fpn_convs`` with the extra-level convs appended, ``downsample_convs``,
``pafpn_convs``), so the ``neck.*`` tensors of an mmdetection checkpoint (the released
SCRFD models, RetinaNet) load with ``strict=True``.

The neck takes the levels it uses, finest (stride 8) first. mmdetection's ``start_level``
is expressed by passing only those: ``in_channels=[40, 72, 152, 288], start_level=1``
there is ``in_channels=(72, 152, 288)`` here, and its ``lateral_convs.0`` is the same
tensor in both. Output levels beyond the inputs (``num_outs``) are the extra levels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from necktool.necks.base import Levels, Neck, as_levels
from necktool.necks.layers import Add, UpsampleAdd
from necktool.spec.families import Inferred, lateral_weights, norm_from
from necktool.spec.fields import Activation, ExtraConvs, Norm
from necktool.spec.neck_spec import NeckSpec

#: the order stages are reported in, following the data
STAGE_ORDER = ("lateral", "top-down", "fpn", "bottom-up", "pafpn", "extra")


def conv_module(spec: NeckSpec, cin: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """mmcv ``ConvModule(cin, out, kernel, stride, padding=kernel // 2)`` for ``spec``."""
    out = spec.out_channels
    children: list[tuple[str, nn.Module]] = [
        ("conv", nn.Conv2d(cin, out, kernel, stride, kernel // 2, bias=spec.norm is Norm.NONE))]
    if spec.norm is Norm.BN:
        children.append(("bn", nn.BatchNorm2d(out)))
    elif spec.norm is Norm.GN:
        children.append(("gn", nn.GroupNorm(spec.resolved_gn_groups, out)))
    if spec.act is Activation.RELU:
        children.append(("activate", nn.ReLU(inplace=True)))
    elif spec.act is Activation.LEAKY_RELU:
        children.append(("activate", nn.LeakyReLU(spec.leaky_slope, inplace=True)))
    return nn.Sequential(OrderedDict(children))


class StridedPick(nn.Module):
    """mmdetection's extra level without extra convs, ``F.max_pool2d(x, 1, stride=2)``.

    A max-pool with kernel 1 takes every other row and column (size ``ceil(s / 2)``) and
    compares nothing, so it is written as that slice: bit-identical, no pooling op for a
    FLOP counter to report as uncounted, one ``Slice`` in ONNX.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2, ::2]


class MMDetFPN(Neck):
    """mmdetection's FPN: 1x1 laterals, top-down nearest upsample (to the finer level's
    size) and add, a 3x3 ``fpn_convs`` block per level, then the extra levels.
    """

    STAGES: ClassVar[Mapping[str, str]] = {
        "lateral_convs": "lateral",
        "td_fuse": "top-down",
        "fpn_convs": "fpn",
        "extra_pools": "extra",
        "downsample_convs": "bottom-up",
        "bu_fuse": "bottom-up",
        "pafpn_convs": "pafpn",
    }
    LEVEL_OFFSET: ClassVar[Mapping[str, int]] = {
        "downsample_convs": 1, "bu_fuse": 1, "pafpn_convs": 1}

    def __init__(self, spec: NeckSpec) -> None:
        super().__init__(spec)
        used, extra, out = spec.num_inputs, spec.num_extra_levels, spec.out_channels
        self.used_levels = used
        self.lateral_convs = nn.ModuleList(conv_module(spec, c, 1) for c in spec.in_channels)
        self.fpn_convs = nn.ModuleList(conv_module(spec, out, 3) for _ in range(used))
        if spec.extra_convs is not ExtraConvs.NONE:
            for i in range(extra):  # appended to fpn_convs, as mmdetection does
                first_on_input = i == 0 and spec.extra_convs is ExtraConvs.ON_INPUT
                cin = spec.in_channels[-1] if first_on_input else out
                self.fpn_convs.append(conv_module(spec, cin, 3, 2))
        self._build_bottom_up()
        # Parameter-free, so the state dict is mmdetection's; modules so that profiles can
        # name the stage of the fusion ops.
        self.td_fuse = nn.ModuleList(UpsampleAdd() for _ in range(used - 1))
        if spec.extra_convs is ExtraConvs.NONE:
            self.extra_pools = nn.ModuleList(StridedPick() for _ in range(extra))
        self._init_weights()

    def _build_bottom_up(self) -> None:
        """The PAFPN's extra containers (none in the FPN)."""

    def _init_weights(self) -> None:
        # mmdetection's FPN init_cfg: Xavier-uniform convs, zero biases; unit-scale norms.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_parts(self) -> list[tuple[str, str, nn.Module]]:
        """Like :meth:`Neck.stage_parts`, with the extra convs (appended to ``fpn_convs``)
        in stage ``extra``, in the data's order."""
        parts: list[tuple[str, str, nn.Module]] = []
        for name, child in self.named_children():
            if name == "fpn_convs":
                parts.extend((f"{name}.{i}", "fpn" if i < self.used_levels else "extra", m)
                             for i, m in enumerate(self.fpn_convs))
            else:
                parts.append((name, self.stage_of(name), child))
        return sorted(parts, key=lambda part: STAGE_ORDER.index(part[1]))

    def part_of(self, path: str) -> tuple[str, int] | None:
        """Like :meth:`Neck.part_of`; the extra convs appended to ``fpn_convs`` and the
        extra pools are stage ``extra`` at the levels past the inputs."""
        part = super().part_of(path)
        if part is None:
            return None
        stage, level = part
        if path.startswith("extra_pools."):
            return "extra", level + self.used_levels
        if path.startswith("fpn_convs.") and level >= self.used_levels:
            return "extra", level
        return stage, level

    def _top_down(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats, strict=True)]
        for i in range(self.used_levels - 1, 0, -1):
            laterals[i - 1] = self.td_fuse[i - 1](laterals[i - 1], laterals[i])
        return laterals

    def _extra(self, outs: list[torch.Tensor], coarsest_input: torch.Tensor,
               coarsest_lateral: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Append the extra levels to ``outs`` (mmdetection's "part 3")."""
        spec, used = self.spec, self.used_levels
        if spec.num_extra_levels == 0:
            return tuple(outs)
        if spec.extra_convs is ExtraConvs.NONE:
            for pool in self.extra_pools:
                outs.append(pool(outs[-1]))
            return tuple(outs)
        source = {ExtraConvs.ON_INPUT: coarsest_input, ExtraConvs.ON_LATERAL: coarsest_lateral,
                  ExtraConvs.ON_OUTPUT: outs[-1]}[spec.extra_convs]
        outs.append(self.fpn_convs[used](source))
        for i in range(used + 1, spec.num_levels):
            prev = F.relu(outs[-1]) if spec.relu_before_extra_convs else outs[-1]
            outs.append(self.fpn_convs[i](prev))
        return tuple(outs)

    def forward(self, inputs: Levels) -> tuple[torch.Tensor, ...]:
        feats = as_levels(inputs, self.used_levels)
        laterals = self._top_down(feats)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(self.used_levels)]
        return self._extra(outs, feats[-1], laterals[-1])


class MMDetPAFPN(MMDetFPN):
    """mmdetection's PAFPN: the FPN's laterals, top-down path and ``fpn_convs``, then a
    cascading bottom-up path (``downsample_convs``, 3x3 stride 2, added to the next
    level) and ``pafpn_convs`` on every level but the finest, then the extra levels
    (``on_output`` takes the coarsest output after its pafpn conv).
    """

    def _build_bottom_up(self) -> None:
        spec, used = self.spec, self.used_levels
        self.downsample_convs = nn.ModuleList(conv_module(spec, spec.out_channels, 3, 2)
                                              for _ in range(used - 1))
        self.pafpn_convs = nn.ModuleList(conv_module(spec, spec.out_channels, 3)
                                         for _ in range(used - 1))
        self.bu_fuse = nn.ModuleList(Add() for _ in range(used - 1))

    def forward(self, inputs: Levels) -> tuple[torch.Tensor, ...]:
        feats = as_levels(inputs, self.used_levels)
        laterals = self._top_down(feats)
        inter = [self.fpn_convs[i](laterals[i]) for i in range(self.used_levels)]
        for i in range(self.used_levels - 1):  # cascading: inter[i] already has its add
            inter[i + 1] = self.bu_fuse[i](inter[i + 1], self.downsample_convs[i](inter[i]))
        outs = [inter[0]] + [self.pafpn_convs[i - 1](inter[i])
                             for i in range(1, self.used_levels)]
        return self._extra(outs, feats[-1], laterals[-1])


# -- reading a checkpoint's shapes ----------------------------------------------------
def _count(shapes: Mapping[str, tuple[int, ...]], container: str) -> int:
    n = 0
    while f"{container}.{n}.conv.weight" in shapes:
        n += 1
    return n


def _infer(shapes: Mapping[str, tuple[int, ...]], pafpn: bool) -> Inferred | None:
    laterals = lateral_weights(shapes, lambda i: f"lateral_convs.{i}.conv.weight")
    if laterals is None:
        return None
    used = len(laterals)
    out = laterals[0][0]
    in_channels = tuple(s[1] for s in laterals)
    norm = norm_from(shapes, "lateral_convs.0.bn.weight", "lateral_convs.0.gn.weight")
    extra = _count(shapes, "fpn_convs") - used
    if extra < 0:
        return None
    if pafpn and not _count(shapes, "downsample_convs") == _count(shapes, "pafpn_convs") \
            == used - 1:
        return None
    notes = ["activation: not stored in the weights; mmdetection's default (none) assumed"]
    if norm is Norm.GN:
        notes.append("GroupNorm groups: not stored in the weights; give --gn-groups as in "
                     "the config (mmdetection's usual 32)")
    mode = ExtraConvs.NONE
    if extra:
        first = shapes[f"fpn_convs.{used}.conv.weight"][1]
        if first == in_channels[-1] != out:
            mode = ExtraConvs.ON_INPUT
        elif first == out:
            mode = ExtraConvs.ON_OUTPUT
            alike = "on_input, on_lateral" if in_channels[-1] == out else "on_lateral"
            notes.append(f"extra convs: on_output assumed; {alike} hold the same tensors")
        else:
            return None
        if extra > 1:
            notes.append("relu_before_extra_convs: not stored in the weights; false assumed")
    else:
        notes.append("max-pool extra levels (--extra-convs none) hold no weights: with "
                     f"--num-outs above {used} the same file loads too")
    fields = {"in_channels": in_channels, "out_channels": out, "norm": norm,
              "act": Activation.NONE, "num_outs": used + extra, "extra_convs": mode}
    return Inferred(fields, tuple(notes))


def infer_fpn(shapes: Mapping[str, tuple[int, ...]]) -> Inferred | None:
    """The ``mmdet_fpn`` spec fields a state dict's shapes imply (keys at the neck's root)."""
    return _infer(shapes, pafpn=False)


def infer_pafpn(shapes: Mapping[str, tuple[int, ...]]) -> Inferred | None:
    """The ``mmdet_pafpn`` spec fields a state dict's shapes imply."""
    return _infer(shapes, pafpn=True)


def conv_keys(spec: NeckSpec, role: str, level: int) -> tuple[str, str]:
    """The module a detector file's neck conv loads into: ``(conv, norm)`` paths."""
    container, index = {"lateral": ("lateral_convs", level), "fpn": ("fpn_convs", level),
                        "extra": ("fpn_convs", level),
                        "downsample": ("downsample_convs", level - 1),
                        "pafpn": ("pafpn_convs", level - 1)}[role]
    norm = "gn" if spec.norm is Norm.GN else "bn"
    return f"{container}.{index}.conv", f"{container}.{index}.{norm}"
