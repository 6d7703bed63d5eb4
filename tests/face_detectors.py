"""Small YuNet, YOLO5Face and YOLOv8-face detectors exported to ONNX the way their authors
export them, for the detector tests of the Concat/Add necks.

Each detector is a faithful small backbone (YuNet's DPU stages with max-pools; YOLO5Face's
stem, C3 and SPP; YOLOv8's C2f and SPPF), a neck (necktool's module, or the authors'
structure written out here), and the authors' per-level head, exported with the
TorchScript exporter as their tools do:

* YuNet (libfacedetection.train): opset 11, input ``input``, outputs ``cls_8 ... kps_32``
  flattened per level, static or dynamic input;
* YOLO5Face (deepcam-cn/yolov5-face ``export.py``): opset 12, input ``input``, static,
  BatchNorm fused, Detect decoding inside the graph, output ``output``;
* ultralytics (yolov8-face): input ``images``, output ``output0`` with the decoding
  (DFL, anchors, strides) inside, C2f's ``split``, opset 12 to 17.

Nothing here is a test.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import pathlib
import warnings
from collections.abc import Callable, Sequence

import onnx
import torch
from torch import nn


def _trained_bn(model: nn.Module, seed: int) -> None:
    """BatchNorm statistics and affines away from the identity, so folding matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)


# -- YuNet (libfacedetection.train) -------------------------------------------------------
class DPU(nn.Module):
    """ConvDPUnit: 1x1 conv (bias) -> 3x3 depthwise conv (bias) [-> BN -> ReLU]."""

    def __init__(self, cin: int, cout: int, bn_relu: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, 1, 0, bias=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=True, groups=cout)
        self.bn_relu = bn_relu
        if bn_relu:
            self.bn = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        return self.relu(self.bn(x)) if self.bn_relu else x


class YuNetBackbone(nn.Module):
    """Conv_head (3x3 s2 conv + BN + ReLU + DPU), then Conv4layerBlocks (two DPUs) with a
    2x2 max-pool after stages 0, 2, 3, 4; outputs of stages 3, 4, 5 (strides 8, 16, 32)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  DPU(16, 16))
        chans = [(16, width), (width, width), (width, width), (width, width), (width, width)]
        self.stages = nn.ModuleList(nn.Sequential(DPU(a, a), DPU(a, b)) for a, b in chans)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = nn.functional.max_pool2d(self.stem(x), 2)
        outs = []
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i >= 3:
                outs.append(x)
            if i in (2, 3, 4):
                x = nn.functional.max_pool2d(x, 2)
        return outs


class YuNetTFPN(nn.Module):
    """The authors' TFPN: ``P5 = DPU(C5)``, ``P4 = DPU(C4 + up(P5))``, ``P3 = DPU(C3 +
    up(P4))`` (``lateral_convs`` run after each add but the coarsest)."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(DPU(c, c) for c in channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(feats)
        for i in range(len(feats) - 1, 0, -1):
            feats[i] = self.lateral_convs[i](feats[i])
            feats[i - 1] = feats[i - 1] + nn.functional.interpolate(feats[i], scale_factor=2.0,
                                                                    mode="nearest")
        feats[0] = self.lateral_convs[0](feats[0])
        return feats


class YuNetHead(nn.Module):
    """YuNet_Head (shared_stacked_convs=1): a DPU per level, then cls/obj/bbox/kps
    ConvDPUnits without BN; in export, flattened per level (sigmoid on cls and obj)."""

    def __init__(self, channels: int, levels: int = 3) -> None:
        super().__init__()
        self.share = nn.ModuleList(DPU(channels, channels) for _ in range(levels))
        self.cls = nn.ModuleList(DPU(channels, 1, False) for _ in range(levels))
        self.obj = nn.ModuleList(DPU(channels, 1, False) for _ in range(levels))
        self.bbox = nn.ModuleList(DPU(channels, 4, False) for _ in range(levels))
        self.kps = nn.ModuleList(DPU(channels, 10, False) for _ in range(levels))

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        def flat(t: torch.Tensor) -> torch.Tensor:
            return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])

        shared = [m(f) for m, f in zip(self.share, feats, strict=True)]
        cls = [flat(m(f)).sigmoid() for m, f in zip(self.cls, shared, strict=True)]
        obj = [flat(m(f)).sigmoid() for m, f in zip(self.obj, shared, strict=True)]
        bbox = [flat(m(f)) for m, f in zip(self.bbox, shared, strict=True)]
        kps = [flat(m(f)) for m, f in zip(self.kps, shared, strict=True)]
        return (*cls, *obj, *bbox, *kps)


# -- YOLO building blocks (yolov5-face models/common.py, ultralytics nn/modules) -----------
class Conv(nn.Module):
    """conv (no bias) + BatchNorm + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool, k: tuple[int, int]) -> None:
        super().__init__()
        self.cv1 = Conv(c1, c2, k[0])
        self.cv2 = Conv(c2, c2, k[1])
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        c_ = c2 // 2
        self.cv1, self.cv2, self.cv3 = Conv(c1, c_), Conv(c1, c_), Conv(2 * c_, c2)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, (1, 3)) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, (3, 3)) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # ultralytics' export: split
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPP(nn.Module):
    def __init__(self, c1: int, c2: int, k: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_)
        self.cv2 = Conv(c_ * (len(k) + 1), c2)
        self.m = nn.ModuleList(nn.MaxPool2d(x, 1, x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1, self.cv2 = Conv(c1, c_), Conv(c_ * 4, c2)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class StemBlock(nn.Module):
    """yolov5-face's stem: 3x3 s2 conv, then (1x1 -> 3x3 s2) beside a 2x2 max-pool,
    concatenated, 1x1 (stride 4)."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.stem_1 = Conv(c1, c2, 3, 2)
        self.stem_2a = Conv(c2, c2 // 2, 1, 1)
        self.stem_2b = Conv(c2 // 2, c2, 3, 2)
        self.stem_2p = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.stem_3 = Conv(c2 * 2, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.stem_1(x)
        return self.stem_3(torch.cat((self.stem_2b(self.stem_2a(s1)), self.stem_2p(s1)), 1))


class YOLO5FaceBackbone(nn.Module):
    """StemBlock, C3, Conv s2 + C3 (x3), SPP, C3 (no shortcut): outputs the stride 8 and 16
    C3s and the last C3 (stride 32), as the yaml's layers 3, 5 and 8."""

    def __init__(self, outs: Sequence[int] = (128, 256, 512), stem: int = 16) -> None:
        super().__init__()
        c3, c4, c5 = outs
        self.stem = StemBlock(3, stem)
        self.c2 = C3(stem, stem)
        self.down3, self.c3 = Conv(stem, c3, 3, 2), C3(c3, c3)
        self.down4, self.c4 = Conv(c3, c4, 3, 2), C3(c4, c4)
        self.down5, self.spp = Conv(c4, c5, 3, 2), SPP(c5, c5)
        self.c5 = C3(c5, c5, 1, shortcut=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.c2(self.stem(x))
        p3 = self.c3(self.down3(x))
        p4 = self.c4(self.down4(p3))
        return [p3, p4, self.c5(self.spp(self.down5(p4)))]


class C3PANRef(nn.Module):
    """The yolov5-face yaml's head before Detect: laterals, C3 top-down, C3 bottom-up
    partnered with the laterals (written out from the yaml, for the tests)."""

    def __init__(self, ins: Sequence[int], widths: Sequence[int], n: int) -> None:
        super().__init__()
        (c3, c4, c5), (w3, w4, w5) = ins, widths
        self.lat5 = Conv(c5, w4)
        self.td4 = C3(w4 + c4, w4, n, False)
        self.lat4 = Conv(w4, w3)
        self.td3 = C3(w3 + c3, w3, n, False)
        self.down3 = Conv(w3, w3, 3, 2)
        self.bu4 = C3(w3 + w3, w4, n, False)
        self.down4 = Conv(w4, w4, 3, 2)
        self.bu5 = C3(w4 + w4, w5, n, False)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        up = nn.functional.interpolate
        l5 = self.lat5(c5)
        l4 = self.lat4(self.td4(torch.cat((up(l5, scale_factor=2.0), c4), 1)))
        p3 = self.td3(torch.cat((up(l4, scale_factor=2.0), c3), 1))
        p4 = self.bu4(torch.cat((self.down3(p3), l4), 1))
        p5 = self.bu5(torch.cat((self.down4(p4), l5), 1))
        return [p3, p4, p5]


class YOLO5FaceDetect(nn.Module):
    """Detect with landmarks (16 outputs per anchor, 3 anchors): a 1x1 conv per level,
    decoded inside the graph (sigmoid, grid, stride, anchors) into one ``output``."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        self.no, self.na = 16, 3
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)
        self.strides = strides

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        z = []
        for i, f in enumerate(feats):
            x = self.m[i](f)
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float()
            xy = (x[..., 0:2].sigmoid() * 2.0 - 0.5 + grid) * self.strides[i]
            wh = (x[..., 2:4].sigmoid() * 2) ** 2 * (4.0 * self.strides[i])
            rest = torch.cat((x[..., 4:5].sigmoid(), x[..., 5:15], x[..., 15:].sigmoid()), -1)
            z.append(torch.cat((xy, wh, rest), -1).view(bs, -1, self.no))
        return torch.cat(z, 1)


class ShuffleV2Block(nn.Module):
    """yolov5-face's ShuffleV2Block (and yolov8-lite's Shuffle_Block): stride 2, two
    branches (3x3 depthwise s2 + 1x1; 1x1 + 3x3 depthwise s2 + 1x1) concatenated; stride 1,
    half the channels through the second branch; then the channel shuffle
    (view -> transpose -> view)."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        bf = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                                         nn.BatchNorm2d(inp), nn.Conv2d(inp, bf, 1, bias=False),
                                         nn.BatchNorm2d(bf), nn.SiLU())
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else bf, bf, 1, bias=False), nn.BatchNorm2d(bf),
            nn.SiLU(), nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False),
            nn.BatchNorm2d(bf), nn.Conv2d(bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        b, c, h, w = out.shape
        out = out.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous()
        return out.view(b, -1, h, w)


class ShuffleBackbone(nn.Module):
    """yolov5n-0.5 / yolov8-lite: StemBlock, then a stride-2 ShuffleV2Block and a stride-1
    one per level (strides 8, 16, 32); ``sppf`` adds yolov8-lite's SPPF at the end."""

    def __init__(self, outs: Sequence[int], stem: int = 16, sppf: bool = False) -> None:
        super().__init__()
        self.stem = StemBlock(3, stem)
        chans = [stem, *outs]
        self.levels = nn.ModuleList(
            nn.Sequential(ShuffleV2Block(a, b, 2), ShuffleV2Block(b, b, 1))
            for a, b in itertools.pairwise(chans))
        self.sppf = SPPF(outs[-1], outs[-1]) if sppf else nn.Identity()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for level in self.levels:
            x = level(x)
            outs.append(x)
        outs[-1] = self.sppf(outs[-1])
        return outs


# -- YOLOv8 (ultralytics) ---------------------------------------------------------------
class YOLOv8Backbone(nn.Module):
    """Conv s2 x2, C2f, Conv s2 + C2f (x3), SPPF (shortcut bottlenecks, as the yaml)."""

    def __init__(self, outs: Sequence[int] = (64, 128, 256), stem: int = 16) -> None:
        super().__init__()
        c3, c4, c5 = outs
        self.l0, self.l1, self.l2 = Conv(3, stem, 3, 2), Conv(stem, 2 * stem, 3, 2), \
            C2f(2 * stem, 2 * stem, 1, True)
        self.l3, self.l4 = Conv(2 * stem, c3, 3, 2), C2f(c3, c3, 1, True)
        self.l5, self.l6 = Conv(c3, c4, 3, 2), C2f(c4, c4, 1, True)
        self.l7, self.l8 = Conv(c4, c5, 3, 2), C2f(c5, c5, 1, True)
        self.l9 = SPPF(c5, c5)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.l2(self.l1(self.l0(x)))
        p3 = self.l4(self.l3(x))
        p4 = self.l6(self.l5(p3))
        return [p3, p4, self.l9(self.l8(self.l7(p4)))]


class C2fPANRef(nn.Module):
    """The YOLOv8 yaml's head before Detect (written out from the yaml, for the tests)."""

    def __init__(self, ins: Sequence[int], widths: Sequence[int], n: int) -> None:
        super().__init__()
        (c3, c4, c5), (w3, w4, w5) = ins, widths
        self.td4 = C2f(c5 + c4, w4, n)
        self.td3 = C2f(w4 + c3, w3, n)
        self.down3 = Conv(w3, w3, 3, 2)
        self.bu4 = C2f(w3 + w4, w4, n)
        self.down4 = Conv(w4, w4, 3, 2)
        self.bu5 = C2f(w4 + c5, w5, n)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        up = nn.functional.interpolate
        t4 = self.td4(torch.cat((up(c5, scale_factor=2.0), c4), 1))
        p3 = self.td3(torch.cat((up(t4, scale_factor=2.0), c3), 1))
        p4 = self.bu4(torch.cat((self.down3(p3), t4), 1))
        p5 = self.bu5(torch.cat((self.down4(p4), c5), 1))
        return [p3, p4, p5]


class YOLOv8Detect(nn.Module):
    """Detect (nc=1, reg_max=16) plus the pose branch (5 keypoints x 3): per level cv2 (box),
    cv3 (class), cv4 (keypoints), each Conv 3x3, Conv 3x3, Conv2d 1x1; decoded inside the
    graph (DFL, anchors, strides, sigmoid) into ``output0`` ``[1, 4 + 1 + 15, anchors]``."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        self.reg_max, self.nk = 16, 15
        c2, c3, c4 = max(16, channels[0] // 4, 64), max(channels[0], 1), max(channels[0] // 4,
                                                                                  self.nk)
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * self.reg_max, 1))
                                 for x in channels)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3),
                                               nn.Conv2d(c3, 1, 1)) for x in channels)
        self.cv4 = nn.ModuleList(nn.Sequential(Conv(x, c4, 3), Conv(c4, c4, 3),
                                               nn.Conv2d(c4, self.nk, 1)) for x in channels)
        self.dfl = nn.Conv2d(self.reg_max, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.dfl.weight.copy_(torch.arange(self.reg_max, dtype=torch.float)
                                  .view(1, self.reg_max, 1, 1))
        self.strides = strides

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        bs = feats[0].shape[0]
        x = [torch.cat((self.cv2[i](f), self.cv3[i](f)), 1) for i, f in enumerate(feats)]
        kpt = torch.cat([self.cv4[i](f).view(bs, self.nk, -1) for i, f in enumerate(feats)], -1)
        anchors, strides = [], []
        for f, s in zip(feats, self.strides, strict=True):
            h, w = f.shape[2:]
            sy, sx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(s)))
        anchor = torch.cat(anchors).transpose(0, 1).unsqueeze(0)
        stride = torch.cat(strides).transpose(0, 1)
        flat = torch.cat([xi.view(bs, 4 * self.reg_max + 1, -1) for xi in x], 2)
        box, cls = flat.split((4 * self.reg_max, 1), 1)
        a = box.shape[-1]
        dist = self.dfl(box.view(bs, 4, self.reg_max, a).transpose(2, 1).softmax(1))
        dist = dist.view(bs, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = anchor - lt, anchor + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * stride
        kp = kpt.view(bs, 5, 3, -1)
        kxy = (kp[:, :, :2] * 2.0 + (anchor.unsqueeze(1) - 0.5)) * stride
        kpts = torch.cat((kxy, kp[:, :, 2:].sigmoid()), 2).view(bs, self.nk, -1)
        return torch.cat((dbox, cls.sigmoid(), kpts), 1)


# -- whole detectors ---------------------------------------------------------------------
class FaceDetector(nn.Module):
    """backbone -> neck -> head, in eval mode with trained-looking BatchNorm statistics."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module,
                 seed: int = 0) -> None:
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        _trained_bn(self, seed)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.head(self.neck(self.backbone(x)))


def yunet_names(levels: int = 3) -> list[str]:
    strides = [8 * 2 ** i for i in range(levels)]
    return [f"{what}_{s}" for what in ("cls", "obj", "bbox", "kps") for s in strides]


def fuse_bn(model: nn.Module) -> nn.Module:
    """yolov5-face's ``model.fuse()``: every Conv block's BatchNorm folded into its conv
    (the exported graph then has no BatchNormalization node)."""
    for m in model.modules():
        if isinstance(m, Conv) and isinstance(m.bn, nn.BatchNorm2d):
            conv, bn = m.conv, m.bn
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                              conv.stride, conv.padding, groups=conv.groups, bias=True)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            with torch.no_grad():
                fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                fused.bias.copy_(bn.bias - bn.running_mean * scale)
            m.conv, m.bn = fused, nn.Identity()
    return model


def export(model: nn.Module, size: tuple[int, int], *, opset: int, input_name: str,
           output_names: Sequence[str], dynamic: bool = False) -> onnx.ModelProto:
    """The TorchScript exporter, BatchNorm folded (eval), as the authors' tools call it."""
    buf = io.BytesIO()
    kwargs: dict[str, object] = {}
    if dynamic:
        kwargs["dynamic_axes"] = {input_name: {0: "batch", 2: "height", 3: "width"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, *size),), buf, dynamo=False,
                          opset_version=opset, input_names=[input_name],
                          output_names=list(output_names), do_constant_folding=True, **kwargs)
    return onnx.load_from_string(buf.getvalue())


NeckFactory = Callable[[], nn.Module]


def yunet(neck: nn.Module | None = None, width: int = 64, seed: int = 0) -> FaceDetector:
    return FaceDetector(YuNetBackbone(width), neck or YuNetTFPN([width] * 3),
                        YuNetHead(width), seed)


def yolo5face(neck: nn.Module | None = None, ins: Sequence[int] = (128, 256, 512),
              widths: Sequence[int] = (128, 256, 512), n: int = 1,
              seed: int = 0) -> FaceDetector:
    return FaceDetector(YOLO5FaceBackbone(ins), neck or C3PANRef(ins, widths, n),
                        YOLO5FaceDetect(widths), seed)


def yolov8(neck: nn.Module | None = None, ins: Sequence[int] = (64, 128, 256),
           widths: Sequence[int] = (64, 128, 256), n: int = 1, seed: int = 0) -> FaceDetector:
    return FaceDetector(YOLOv8Backbone(ins), neck or C2fPANRef(ins, widths, n),
                        YOLOv8Detect(widths), seed)


def conv_macs(model: nn.Module, image: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Per top-level part (backbone, neck, head): conv multiply-adds counted by forward
    hooks, and the convs' parameters."""
    out: dict[str, list[int]] = {}
    handles = []
    for part, module in model.named_children():
        out[part] = [0, 0]
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                def hook(mod: nn.Conv2d, _i: object, y: torch.Tensor, part: str = part) -> None:
                    out[part][0] += y.numel() * mod.in_channels // mod.groups * \
                        math.prod(mod.kernel_size)
                handles.append(m.register_forward_hook(hook))
                out[part][1] += sum(p.numel() for p in m.parameters())
    with torch.no_grad():
        model(image)
    for h in handles:
        h.remove()
    return {k: (v[0], v[1]) for k, v in out.items()}


# -- the suite the tests share, built once per process ------------------------------------
YUNET_SIZE = (160, 160)  # every level even: 20x20, 10x10, 5x5
YOLO_SIZE = (128, 128)


@dataclasses.dataclass
class Face:
    """One test detector file: the torch model, the preset its neck is, the ONNX file."""

    model: FaceDetector
    preset: str
    path: pathlib.Path
    size: tuple[int, int]
    static: bool
    opset: int


def real_neck(preset: str, size: tuple[int, int], seed: int = 0) -> nn.Module:
    """necktool's own neck of ``preset`` (seeded weights)."""
    from necktool.necks.weights import seeded_model
    from necktool.spec.registry import PRESETS

    return seeded_model(PRESETS[preset].spec.replace(input_size=size), seed)


_FACES: dict[str, Face] | None = None


def faces() -> dict[str, Face]:
    """Build (once per process) and save every variant under a temporary directory:
    ``*_authors`` variants hold the neck written out from the authors' yaml/code above,
    the others necktool's own module."""
    global _FACES
    if _FACES is not None:
        return _FACES
    import atexit
    import shutil
    import tempfile

    root = pathlib.Path(tempfile.mkdtemp(prefix="necktool-faces-"))
    atexit.register(shutil.rmtree, root, True)
    out: dict[str, Face] = {}

    def add(name: str, model: FaceDetector, preset: str, size: tuple[int, int], opset: int,
            input_name: str, outputs: Sequence[str], dynamic: bool = False) -> None:
        path = root / f"{name}.onnx"
        onnx.save(export(model, size, opset=opset, input_name=input_name,
                         output_names=outputs, dynamic=dynamic), str(path))
        out[name] = Face(model, preset, path, size, not dynamic, opset)

    yn = yunet(real_neck("yunet", YUNET_SIZE))
    add("yunet", yn, "yunet", YUNET_SIZE, 11, "input", yunet_names())
    add("yunet_dynamic", yn, "yunet", YUNET_SIZE, 11, "input", yunet_names(), dynamic=True)
    add("yunet_authors", yunet(), "yunet", YUNET_SIZE, 11, "input", yunet_names())
    y5 = yolo5face(real_neck("yolo5face_s", YOLO_SIZE), seed=1)
    add("yolo5face_s", fuse_bn(y5), "yolo5face_s", YOLO_SIZE, 12, "input", ["output"])
    add("yolo5face_authors", fuse_bn(yolo5face(seed=2)), "yolo5face_s", YOLO_SIZE, 12,
        "input", ["output"])
    v8 = yolov8(real_neck("yolov8n_face", YOLO_SIZE), seed=3)
    add("yolov8n_opset17", v8, "yolov8n_face", YOLO_SIZE, 17, "images", ["output0"])
    add("yolov8n_opset12", v8, "yolov8n_face", YOLO_SIZE, 12, "images", ["output0"])
    add("yolov8_authors", yolov8(seed=4), "yolov8n_face", YOLO_SIZE, 17, "images",
        ["output0"])
    n05 = FaceDetector(ShuffleBackbone((64, 128, 256)), real_neck("yolo5face_n0.5", YOLO_SIZE),
                       YOLO5FaceDetect((64, 64, 64)), seed=5)
    add("yolo5face_n0.5", n05, "yolo5face_n0.5", YOLO_SIZE, 12, "input", ["output"])
    lite = FaceDetector(ShuffleBackbone((48, 96, 192), sppf=True),
                        real_neck("yolov8_lite_t", YOLO_SIZE), YOLOv8Detect((48, 48, 48)),
                        seed=6)
    add("yolov8_lite_t", lite, "yolov8_lite_t", YOLO_SIZE, 12, "images", ["output0"])
    _FACES = out
    return out
