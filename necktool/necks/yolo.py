"""The YOLO face necks: YOLO5Face's C3 PAN, the YOLOv8 C2f PAN and yolov8-lite.

All three are built from the authors' yaml layer lists, so their modules sit at the
yaml's layer indices, ``model.<i>``, exactly where the authors' ``model.<i>.`` state dict
keys put them (``spec.first_layer`` is the index of the neck's first layer, the
backbone's layer count). The parameter-free ``nn.Upsample`` layer of a top-down step has
no module here: its upsample runs inside the next layer's merge (:class:`UpsampleCat`,
the ``Concat`` index), in the form an export asks for.

* **YOLO5Face** (deepcam-cn/yolov5-face ``models/yolov5*.yaml``): per top-down step a
  lateral 1x1 ``Conv``, upsample, ``Concat`` with the backbone level, ``C3``; per
  bottom-up step a stride-2 3x3 ``Conv``, ``Concat`` with that level's *lateral output*,
  ``C3``.
* **YOLOv8** (ultralytics ``cfg/models/v8/yolov8.yaml``): no laterals; top-down
  upsample, ``Concat``, ``C2f``; bottom-up stride-2 ``Conv``, ``Concat`` with the
  top-down output of the level (the coarsest: the backbone's SPPF output), ``C2f``.
* **yolov8-lite** (derronqi/yolov8-face ``yolov8-lite-*.yaml``): YOLO5Face's layout with
  ``DWConvblock`` for C3, a stride-2 ``DWConvblock`` for the down conv, and ``ADD`` for
  the bottom-up ``Concat``.

Blocks follow the authors' ``models/common.py`` / ``nn/modules/block.py``: ``Conv`` =
conv (no bias) + BatchNorm + SiLU (children ``conv``, ``bn``, ``act``); ``C3(c1, c2, n)``
with ``cv1``/``cv2`` 1x1 to ``c2 // 2``, ``n`` bottlenecks (1x1 then 3x3, no residual in
the neck) in ``m``, ``cv3`` 1x1 on the concat; ``C2f(c1, c2, n)`` with ``cv1`` 1x1 to
``2c`` (``c = c2 // 2``) split in two, ``n`` bottlenecks (3x3, 3x3) chained on the second
half, ``cv2`` 1x1 on the ``2 + n`` parts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from necktool.necks.base import Levels, Neck, as_levels
from necktool.necks.layers import Add, Concat, UpsampleCat, activation, norm_layer
from necktool.spec.families import Inferred, Shapes
from necktool.spec.fields import Activation, Norm
from necktool.spec.neck_spec import NeckSpec

LATERAL, TOP_DOWN, DOWNSAMPLE, BOTTOM_UP = "lateral", "top-down", "downsample", "bottom-up"


# -- the authors' blocks -------------------------------------------------------------------
class Conv(nn.Module):
    """conv (padding ``k // 2``, bias only without a norm) -> norm -> activation."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, *, norm: Norm,
                 act: Activation, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=groups, bias=norm is Norm.NONE)
        self.bn = norm_layer(norm, c2)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """``cv1`` (k0 x k0) -> ``cv2`` (k1 x k1), same width; no shortcut in a neck."""

    def __init__(self, c: int, kernels: tuple[int, int], *, norm: Norm,
                 act: Activation) -> None:
        super().__init__()
        self.cv1 = Conv(c, c, kernels[0], norm=norm, act=act)
        self.cv2 = Conv(c, c, kernels[1], norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


class C3(nn.Module):
    """YOLOv5's CSP block with three convs (``shortcut=False``, as in the neck)."""

    def __init__(self, c1: int, c2: int, n: int, *, norm: Norm, act: Activation) -> None:
        super().__init__()
        c_ = int(c2 * 0.5)
        self.cv1 = Conv(c1, c_, 1, norm=norm, act=act)
        self.cv2 = Conv(c1, c_, 1, norm=norm, act=act)
        self.cv3 = Conv(2 * c_, c2, 1, norm=norm, act=act)
        self.m = nn.Sequential(*(Bottleneck(c_, (1, 3), norm=norm, act=act) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class C2f(nn.Module):
    """YOLOv8's CSP block with two convs, keeping every bottleneck's output."""

    def __init__(self, c1: int, c2: int, n: int, *, norm: Norm, act: Activation) -> None:
        super().__init__()
        self.c = int(c2 * 0.5)
        self.cv1 = Conv(c1, 2 * self.c, 1, norm=norm, act=act)
        self.cv2 = Conv((2 + n) * self.c, c2, 1, norm=norm, act=act)
        self.m = nn.ModuleList(Bottleneck(self.c, (3, 3), norm=norm, act=act)
                               for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DWConvblock(nn.Module):
    """yolov8-lite's block: depthwise k x k (stride s) -> norm -> act -> 1x1 -> norm -> act."""

    def __init__(self, c1: int, c2: int, k: int, s: int, *, norm: Norm,
                 act: Activation) -> None:
        super().__init__()
        bias = norm is Norm.NONE
        self.conv1 = nn.Conv2d(c1, c1, k, s, k // 2, groups=c1, bias=bias)
        self.bn1 = norm_layer(norm, c1)
        self.act1 = activation(act)
        self.conv2 = nn.Conv2d(c1, c2, 1, 1, 0, bias=bias)
        self.bn2 = norm_layer(norm, c2)
        self.act2 = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))


# -- the necks -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layer:
    """One yaml layer of the neck: its index, stage and the output level it computes."""

    index: int
    stage: str
    level: int


class YoloPAN(Neck):
    """What the three YOLO necks share: layers at yaml indices under ``model``, and the
    stage and level of each (``lateral``, ``top-down``, ``downsample``, ``bottom-up``)."""

    LATERALS = True  # a 1x1 Conv before each top-down upsample (YOLO5Face, lite)
    TD_STEP = 4  # yaml layers per top-down step: [Conv,] Upsample, Concat, block
    BU_STEP = 3  # per bottom-up step: down conv, Concat/ADD, block

    def __init__(self, spec: NeckSpec) -> None:
        super().__init__(spec)
        self.model = nn.ModuleDict()
        self.layers: dict[int, Layer] = {}
        self.plan: list[tuple[str, int, int]] = []  # (kind, index, level) in forward order
        self._build()
        for m in self.modules():  # the authors' BatchNorm settings (ultralytics initialize_weights)
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03

    # subclass hooks -----------------------------------------------------------------------
    def td_block(self, cin: int, cout: int) -> nn.Module:
        raise NotImplementedError

    def bu_block(self, cin: int, cout: int) -> nn.Module:
        return self.td_block(cin, cout)

    def down(self, c: int) -> nn.Module:
        s = self.spec
        return Conv(c, c, 3, 2, norm=s.norm, act=s.act)

    def bu_merge(self) -> nn.Module:
        return Concat()

    def bu_partner_channels(self, level: int, lateral: list[int], td: list[int]) -> int:
        """Channels of what the bottom-up merge at ``level`` takes besides the down conv."""
        return lateral[level]

    # ----------------------------------------------------------------------------------------
    def _add(self, index: int, module: nn.Module, stage: str, level: int, kind: str) -> None:
        self.model[str(index)] = module
        self.layers[index] = Layer(index, stage, level)
        self.plan.append((kind, index, level))

    def _build(self) -> None:
        s = self.spec
        c, w, n = list(s.in_channels), list(s.level_channels), s.num_levels
        j = s.first_layer
        lateral = [0] * n  # channels of the lateral output at each level (its partner)
        td = [0] * n  # channels of the top-down output at each level
        prev = c[-1]
        for k in range(n - 1, 0, -1):
            if self.LATERALS:
                self._add(j, Conv(prev, w[k - 1], 1, norm=s.norm, act=s.act), LATERAL, k,
                          "lateral")
                prev = lateral[k] = w[k - 1]
                j += 1
            else:
                lateral[k] = prev
            # j: the nn.Upsample layer (no module); j + 1: Concat with the upsample inside
            self._add(j + 1, UpsampleCat(), TOP_DOWN, k - 1, "td_merge")
            self._add(j + 2, self.td_block(prev + c[k - 1], w[k - 1]), TOP_DOWN, k - 1,
                      "td_block")
            prev = td[k - 1] = w[k - 1]
            j += 3
        lateral[n - 1] = lateral[n - 1] if self.LATERALS else c[-1]
        for k in range(1, n):
            self._add(j, self.down(w[k - 1]), DOWNSAMPLE, k, "down")
            self._add(j + 1, self.bu_merge(), BOTTOM_UP, k, "bu_merge")
            partner = self.bu_partner_channels(k, lateral, td)
            cin = w[k - 1] + partner if isinstance(self.model[str(j + 1)], Concat) \
                else w[k - 1]
            self._add(j + 2, self.bu_block(cin, w[k]), BOTTOM_UP, k, "bu_block")
            j += 3

    def forward(self, inputs: Levels) -> tuple[torch.Tensor, ...]:
        feats = as_levels(inputs, self.spec.num_inputs)
        n = len(feats)
        lateral: list[torch.Tensor] = list(feats)  # without laterals: the maps merged
        td: list[torch.Tensor] = list(feats)
        x = feats[-1]
        outs: list[torch.Tensor] = list(feats)
        for kind, index, level in self.plan:
            layer = self.model[str(index)]
            if kind == "lateral":
                x = lateral[level] = layer(x)
            elif kind == "td_merge":
                x = layer(feats[level], x)
            elif kind == "td_block":
                x = td[level] = layer(x)
            elif kind == "down":
                x = layer(outs[level - 1] if level > 1 else td[0])
            elif kind == "bu_merge":
                x = layer(x, self.partner(level, lateral, td, n))
            else:  # bu_block
                x = outs[level] = layer(x)
        outs[0] = td[0]
        return tuple(outs)

    def partner(self, level: int, lateral: list[torch.Tensor], td: list[torch.Tensor],
                n: int) -> torch.Tensor:
        """What the bottom-up merge at ``level`` takes besides the down conv."""
        return lateral[level]

    # stages -------------------------------------------------------------------------------
    def stage_parts(self) -> list[tuple[str, str, nn.Module]]:
        return [(f"model.{i}", self.layers[i].stage, m)
                for i, m in ((int(k), v) for k, v in self.model.items())]

    def part_of(self, path: str) -> tuple[str, int] | None:
        """``model.16.cv1.conv`` -> the stage and output level of yaml layer 16."""
        found = _LAYER.match(path)
        if not found:
            return None
        layer = self.layers.get(int(found.group(1)))
        return None if layer is None else (layer.stage, layer.level)


_LAYER = re.compile(r"model\.(\d+)(?:\.|$)")


class C3PAN(YoloPAN):
    """YOLO5Face's neck (3 or 4 levels): laterals, Concat merges, C3 blocks."""

    def td_block(self, cin: int, cout: int) -> nn.Module:
        return C3(cin, cout, self.spec.repeats, norm=self.spec.norm, act=self.spec.act)


class C2fPAN(YoloPAN):
    """The YOLOv8 neck: no laterals, Concat merges, C2f blocks."""

    LATERALS = False

    def td_block(self, cin: int, cout: int) -> nn.Module:
        return C2f(cin, cout, self.spec.repeats, norm=self.spec.norm, act=self.spec.act)

    def bu_partner_channels(self, level: int, lateral: list[int], td: list[int]) -> int:
        # the top-down output of the level; the coarsest level's is the backbone map itself
        return td[level] if level < len(td) - 1 else self.spec.in_channels[-1]

    def partner(self, level: int, lateral: list[torch.Tensor], td: list[torch.Tensor],
                n: int) -> torch.Tensor:
        return td[level]  # td[n - 1] is the coarsest input: no top-down block there


class LitePAN(YoloPAN):
    """yolov8-lite's neck: laterals, Concat top-down, Add bottom-up, DWConvblocks."""

    def td_block(self, cin: int, cout: int) -> nn.Module:
        return DWConvblock(cin, cout, 3, 1, norm=self.spec.norm, act=self.spec.act)

    def down(self, c: int) -> nn.Module:
        return DWConvblock(c, c, 3, 2, norm=self.spec.norm, act=self.spec.act)

    def bu_merge(self) -> nn.Module:
        return Add()


# -- reading a state dict ------------------------------------------------------------------
_KEY = re.compile(r"model\.(\d+)\.(.+)")


def _by_layer(shapes: Shapes) -> dict[int, dict[str, tuple[int, ...]]]:
    layers: dict[int, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        found = _KEY.fullmatch(key)
        if found:
            layers.setdefault(int(found.group(1)), {})[found.group(2)] = tuple(shape)
    return layers


def _is_c3(layer: Mapping[str, Any]) -> bool:
    return "cv3.conv.weight" in layer and "m.0.cv1.conv.weight" in layer


def _is_c2f(layer: Mapping[str, Any]) -> bool:
    return "cv1.conv.weight" in layer and "cv2.conv.weight" in layer \
        and "cv3.conv.weight" not in layer and "m.0.cv2.conv.weight" in layer


def _is_dw(layer: Mapping[str, Any]) -> bool:
    return "conv1.weight" in layer and "conv2.weight" in layer


def _norm(layer: Mapping[str, Any], key: str) -> Norm:
    return Norm.BN if key in layer else Norm.NONE


def _find_levels(layers: dict[int, dict[str, tuple[int, ...]]], is_block: Any,
                 per_step: int, blocks_per_step: int) -> list[tuple[int, int]]:
    """Candidate ``(first layer, levels)`` of the neck: it ends at the last layer (a
    neck-only state dict) or just before the head (the highest index, when that is no
    block), spans ``per_step`` layers per level step, with ``blocks_per_step`` blocks in
    each; deepest pyramids first."""
    if not layers:
        return []
    top = max(layers)
    last = top if is_block(layers[top]) else top - 1
    found = []
    for levels in range(6, 1, -1):
        first = last - per_step * (levels - 1) + 1
        if first < 0 or not is_block(layers.get(last, {})):
            continue
        blocks = [i for i in range(first, last + 1) if i in layers and is_block(layers[i])]
        if len(blocks) == blocks_per_step * (levels - 1):
            found.append((first, levels))
    return found


def _infer(shapes: Shapes, is_block: Any, laterals: bool) -> Inferred | None:
    """Read the neck among a whole model's ``model.<i>.`` tensors: where it starts, its
    level count, then the channels, walking the yaml's layers as :class:`YoloPAN` builds
    them (top-down steps of [lateral,] upsample, Concat, block; bottom-up steps of down
    conv, Concat/ADD, block)."""
    layers = _by_layer(shapes)
    dw = is_block is _is_dw
    per_step_td = 4 if laterals else 3
    for first, n in _find_levels(layers, is_block, per_step_td + 3, 3 if dw else 2):
        read = _read(layers, first, n, laterals, per_step_td)
        if read is None:
            continue
        c, w, repeats, norm = read
        if min(c) <= 0 or min(w) <= 0 or (dw and len(set(w)) != 1):
            continue
        fields: dict[str, Any] = {"in_channels": tuple(c), "out_channels": w[0],
                                  "norm": norm, "act": Activation.SILU, "first_layer": first}
        if not dw:
            fields["repeats"] = repeats
            fields["widths"] = tuple(w) if len(set(w)) > 1 else None
        return Inferred(fields, ("activation: not stored in the weights; the authors' SiLU "
                                 "assumed",))
    return None


def _read(layers: dict[int, dict[str, tuple[int, ...]]], first: int, n: int, laterals: bool,
          per_step_td: int) -> tuple[list[int], list[int], int, Norm] | None:
    c, w = [0] * n, [0] * n
    j = first
    prev = 0  # channels of the map upsampled next (0: the coarsest input, not yet known)
    top_down_in = 0
    repeats, norm = 1, Norm.NONE
    for k in range(n - 1, 0, -1):
        if laterals:
            lat = layers.get(j, {}).get("conv.weight")
            if lat is None or len(lat) != 4 or lat[2:] != (1, 1):
                return None
            if k == n - 1:
                c[-1] = lat[1]
            prev = lat[0]
        cin, cout, repeats, norm = _block_shape(layers.get(j + per_step_td - 1, {}))
        if cin is None:
            return None
        if prev:
            c[k - 1] = cin - prev
        else:
            top_down_in = cin  # C_{n-1} + C_{n-2}: split once C_{n-1} is read bottom-up
        w[k - 1] = prev = cout
        j += per_step_td
    for k in range(1, n):
        cin, cout, _, _ = _block_shape(layers.get(j + 2, {}))
        if cin is None:
            return None
        w[k] = cout
        if not laterals and k == n - 1:  # cat(down(P_{n-2}), C_{n-1})
            c[-1] = cin - w[k - 1]
            c[n - 2] = top_down_in - c[-1]
        j += 3
    return c, w, repeats, norm


def _block_shape(block: Mapping[str, tuple[int, ...]]
                 ) -> tuple[int | None, int, int, Norm]:
    """``(input channels, output channels, bottlenecks, norm)`` of a C3 / C2f /
    DWConvblock's tensors, ``None`` input channels when it is none of them."""
    if _is_c3(block):
        n = len({k.split(".")[1] for k in block if k.startswith("m.")})
        return (block["cv1.conv.weight"][1], block["cv3.conv.weight"][0], n,
                _norm(block, "cv1.bn.running_mean"))
    if _is_c2f(block):
        n = len({k.split(".")[1] for k in block if k.startswith("m.")})
        return (block["cv1.conv.weight"][1], block["cv2.conv.weight"][0], n,
                _norm(block, "cv1.bn.running_mean"))
    if _is_dw(block):
        return (block["conv1.weight"][0], block["conv2.weight"][0], 1,
                _norm(block, "bn1.running_mean"))
    return None, 0, 0, Norm.NONE


def infer_c3(shapes: Shapes) -> Inferred | None:
    """The spec of a YOLO5Face neck among a ``model.<i>.`` state dict's tensors."""
    return _infer(shapes, _is_c3, laterals=True)


def infer_c2f(shapes: Shapes) -> Inferred | None:
    """The spec of a YOLOv8 neck among a ``model.<i>.`` state dict's tensors."""
    return _infer(shapes, _is_c2f, laterals=False)


def infer_lite(shapes: Shapes) -> Inferred | None:
    """The spec of a yolov8-lite neck among a ``model.<i>.`` state dict's tensors."""
    return _infer(shapes, _is_dw, laterals=True)
