"""Hand-worked cost and memory formulas and an independent functional re-implementation.

Nothing here imports necktool's modules: the tests compare necktool against these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def level_sizes(h: int, w: int, levels: int) -> list[tuple[int, int]]:
    return [(math.ceil(h / (8 * 2**i)), math.ceil(w / (8 * 2**i))) for i in range(levels)]


def conv_macs(cout: int, hout: int, wout: int, cin: int, k: int, batch: int = 1) -> int:
    """Cout * Hout * Wout * Cin * kh * kw (groups = 1; bias not counted)."""
    return batch * cout * hout * wout * cin * k * k


def pafpn_conv_macs(cin: list[int], c: int, h: int, w: int, batch: int = 1) -> list[int]:
    """Conv MACs per level; a stride-2 bottom-up conv counts at the level it outputs."""
    sizes = level_sizes(h, w, len(cin))
    per_level = []
    for i, (hi, wi) in enumerate(sizes):
        macs = conv_macs(c, hi, wi, cin[i], 1, batch)  # lateral
        macs += 2 * conv_macs(c, hi, wi, c, 3, batch)  # td conv + output conv
        if i > 0:
            macs += conv_macs(c, hi, wi, c, 3, batch)  # bottom-up conv from level i-1
        per_level.append(macs)
    return per_level


def fpn_conv_macs(cin: list[int], c: int, h: int, w: int, batch: int = 1) -> list[int]:
    sizes = level_sizes(h, w, len(cin))
    per_level = []
    for i, (hi, wi) in enumerate(sizes):
        macs = conv_macs(c, hi, wi, cin[i], 1, batch)  # lateral (outputN)
        if i < len(cin) - 1:
            macs += conv_macs(c, hi, wi, c, 3, batch)  # mergeN
        per_level.append(macs)
    return per_level


def norm_params(c: int, norm: str) -> int:
    return 2 * c if norm in ("gn", "bn") else c  # affine weight+bias, or a conv bias


def pafpn_params(cin: list[int], c: int, norm: str = "gn") -> int:
    n = len(cin)
    blocks = sum(ci * c + norm_params(c, norm) for ci in cin)  # laterals
    blocks += (3 * n - 1) * (9 * c * c + norm_params(c, norm))  # td, bu (n-1), out
    return blocks


def fpn_params(cin: list[int], c: int, norm: str = "bn") -> int:
    n = len(cin)
    return sum(ci * c + norm_params(c, norm) for ci in cin) + \
        (n - 1) * (9 * c * c + norm_params(c, norm))


# -- activation memory by hand ---------------------------------------------------------
# Every tensor a forward creates is a full (batch, C, h, w) fp32 map at some level. A
# conv+norm+act block creates two (the conv's output, then the norm's; the activation is
# in place) or one without a norm (Identity returns its input). Upsample-and-add creates
# two (the upsampled map, then the sum); a plain add one.
def _block_maps(norm: str) -> int:
    return 1 if norm == "none" else 2


def pafpn_level_maps(levels: int, norm: str) -> list[int]:
    """Maps created at each level: lateral, td and output blocks; the upsample and add
    from the coarser level (all but the coarsest); the stride-2 bottom-up block from the
    finer level and its add (all but the finest)."""
    b = _block_maps(norm)
    return [3 * b + (2 if i < levels - 1 else 0) + (b + 1 if i > 0 else 0)
            for i in range(levels)]


def fpn_level_maps(levels: int, norm: str) -> list[int]:
    """Maps created at each level: the lateral block; then, for all but the coarsest, the
    upsample and add and the merge block."""
    b = _block_maps(norm)
    return [b + (2 + b if i < levels - 1 else 0) for i in range(levels)]


def mmdet_level_maps(spec, *, pafpn: bool = False) -> list[int]:  # type: ignore[no-untyped-def]
    """Maps created at each level by mmdetection's FPN (and PAFPN): the lateral and fpn
    blocks; the upsample and add from the coarser level (all used levels but the
    coarsest); with PAFPN, the stride-2 downsample block, its add and the pafpn block (all
    used levels but the finest). Extra levels: a block each with extra convs (plus, with
    relu_before_extra_convs, the out-of-place ReLU of the level before each later one);
    none for the max-pool levels, which are strided views of P5."""
    cin, _, outs, mode, norm = _mmdet_shape(spec)
    b, used = _block_maps(norm), len(cin)
    maps = [2 * b + (2 if i < used - 1 else 0) + (2 * b + 1 if pafpn and i > 0 else 0)
            for i in range(used)] + [0] * (outs - used)
    if mode != "none":
        for j in range(used, outs):
            maps[j] += b
            if j > used and spec.relu_before_extra_convs:
                maps[j - 1] += 1
    return maps


def activation_bytes(spec, h: int, w: int, batch: int = 1) -> list[int]:  # type: ignore[no-untyped-def]
    """fp32 bytes the forward creates at each output level (4 bytes per element)."""
    if spec.family in LEVEL_ELEMENTS:
        channels = LEVEL_ELEMENTS[spec.family](spec)
    else:
        channels = [m * spec.out_channels for m in LEVEL_MAPS[spec.family](spec)]
    return [c * 4 * batch * lh * lw
            for c, (lh, lw) in zip(channels, level_sizes(h, w, spec.num_levels), strict=True)]


# -- independent forward passes on the same state dict --------------------------------
def _block(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, *, stride: int,
           norm: str, act: str, slope: float, groups: int, names: tuple[str, str]) -> torch.Tensor:
    conv, nrm = names
    weight = sd[f"{prefix}.{conv}.weight"]
    k = weight.shape[-1]
    x = F.conv2d(x, weight, sd.get(f"{prefix}.{conv}.bias"), stride=stride, padding=k // 2)
    if norm == "gn":
        x = F.group_norm(x, groups, sd[f"{prefix}.{nrm}.weight"], sd[f"{prefix}.{nrm}.bias"])
    elif norm == "bn":
        x = F.batch_norm(x, sd[f"{prefix}.{nrm}.running_mean"], sd[f"{prefix}.{nrm}.running_var"],
                         sd[f"{prefix}.{nrm}.weight"], sd[f"{prefix}.{nrm}.bias"], training=False)
    if act == "relu":
        x = F.relu(x)
    elif act == "leaky_relu":
        x = F.leaky_relu(x, slope)
    return x


def reference_fpn(sd: dict[str, torch.Tensor], feats: list[torch.Tensor], *, norm: str = "bn",
                  act: str = "leaky_relu", slope: float = 0.1,
                  groups: int = 1) -> list[torch.Tensor]:
    """Pytorch_Retinaface's FPN.forward, generalised to N levels."""
    kw = dict(stride=1, norm=norm, act=act, slope=slope, groups=groups, names=("0", "1"))
    outs = [_block(sd, f"output{i + 1}", x, **kw) for i, x in enumerate(feats)]  # type: ignore[arg-type]
    for i in range(len(feats) - 2, -1, -1):
        up = F.interpolate(outs[i + 1], size=[outs[i].size(2), outs[i].size(3)], mode="nearest")
        outs[i] = _block(sd, f"merge{i + 1}", outs[i] + up, **kw)  # type: ignore[arg-type]
    return outs


def reference_pafpn(sd: dict[str, torch.Tensor], feats: list[torch.Tensor], *, norm: str = "gn",
                    act: str = "relu", slope: float = 0.1, groups: int = 16) -> list[torch.Tensor]:
    """The SCRFD seed's PAFPN.forward."""
    names = ("conv", "gn") if norm == "gn" else ("0", "1")
    kw = dict(norm=norm, act=act, slope=slope, groups=groups, names=names)
    n = len(feats)
    lat = [_block(sd, f"lateral_convs.{i}", x, stride=1, **kw) for i, x in enumerate(feats)]  # type: ignore[arg-type]
    for i in range(n - 1, 0, -1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    td = [_block(sd, f"td_convs.{i}", x, stride=1, **kw) for i, x in enumerate(lat)]  # type: ignore[arg-type]
    bu = [td[0]]
    for i in range(n - 1):
        bu.append(td[i + 1] + _block(sd, f"bu_convs.{i}", bu[-1], stride=2, **kw))  # type: ignore[arg-type]
    return [_block(sd, f"bu_out_convs.{i}", x, stride=1, **kw) for i, x in enumerate(bu)]  # type: ignore[arg-type]


# -- mmdetection's FPN and PAFPN (mmdet/models/necks/fpn.py, pafpn.py) -----------------
def _mmdet_shape(spec) -> tuple[list[int], int, int, str, str]:  # type: ignore[no-untyped-def]
    """in_channels, out, outputs, extra mode and norm, read off a spec as plain values."""
    return (list(spec.in_channels), spec.out_channels, spec.num_outs or len(spec.in_channels),
            str(spec.extra_convs), str(spec.norm))


def _mmdet_extra_cins(spec) -> list[int]:  # type: ignore[no-untyped-def]
    """Input channels of each extra conv (none for max-pool extra levels)."""
    cin, c, outs, mode, _ = _mmdet_shape(spec)
    extra = outs - len(cin)
    if mode == "none":
        return []
    return [cin[-1] if i == 0 and mode == "on_input" else c for i in range(extra)]


def mmdet_conv_macs(spec, h: int, w: int, batch: int = 1, *,  # type: ignore[no-untyped-def]
                    pafpn: bool = False) -> list[int]:
    """Conv MACs per output level; a stride-2 conv counts at the level it outputs."""
    cin, c, outs, _, _ = _mmdet_shape(spec)
    sizes = level_sizes(h, w, outs)
    per_level = []
    for i, (hi, wi) in enumerate(sizes[:len(cin)]):
        macs = conv_macs(c, hi, wi, cin[i], 1, batch)  # lateral_convs[i]
        macs += conv_macs(c, hi, wi, c, 3, batch)  # fpn_convs[i]
        if pafpn and i > 0:
            macs += 2 * conv_macs(c, hi, wi, c, 3, batch)  # downsample_convs[i-1], pafpn_convs
        per_level.append(macs)
    extra_cins = _mmdet_extra_cins(spec)
    for j, (hj, wj) in enumerate(sizes[len(cin):]):
        per_level.append(conv_macs(c, hj, wj, extra_cins[j], 3, batch) if extra_cins else 0)
    return per_level


def mmdet_params(spec, *, pafpn: bool = False) -> int:  # type: ignore[no-untyped-def]
    cin, c, _, _, norm = _mmdet_shape(spec)
    block = sum(ci * c + norm_params(c, norm) for ci in cin)  # lateral_convs
    block += len(cin) * (9 * c * c + norm_params(c, norm))  # fpn_convs on the used levels
    if pafpn:
        block += 2 * (len(cin) - 1) * (9 * c * c + norm_params(c, norm))  # downsample, pafpn
    block += sum(9 * ci * c + norm_params(c, norm) for ci in _mmdet_extra_cins(spec))
    return block


def mmdet_level_flops(spec, h: int, w: int, batch: int = 1, *,  # type: ignore[no-untyped-def]
                      pafpn: bool = False) -> list[int]:
    """Every fvcore flop per output level: convs, norms (BN 2, GN 5 per element of every
    block output), the top-down upsample and add (one each per element of the finer level
    they feed), the bottom-up adds; max-pool and ReLU count 0."""
    cin, c, outs, _, norm = _mmdet_shape(spec)
    elements = [batch * c * hi * wi for hi, wi in level_sizes(h, w, outs)]
    used = len(cin)
    per_element = {"bn": 2, "gn": 5}.get(norm, 0)
    convs = mmdet_conv_macs(spec, h, w, batch, pafpn=pafpn)
    extra_convs = bool(_mmdet_extra_cins(spec))
    out = []
    for i, e in enumerate(elements):
        if i < used:
            blocks = 2 + (2 if pafpn and i > 0 else 0)  # lateral, fpn (+ downsample, pafpn)
            fusion = 2 * e if i < used - 1 else 0  # upsample + add from the coarser level
            fusion += e if pafpn and i > 0 else 0  # the bottom-up add
        else:
            blocks, fusion = (1 if extra_convs else 0), 0
        out.append(convs[i] + per_element * blocks * e + fusion)
    return out


def _mmdet_block(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, spec,  # type: ignore[no-untyped-def]
                 stride: int = 1) -> torch.Tensor:
    """mmcv ConvModule: conv (bias iff no norm), then bn/gn, then the activation."""
    weight = sd[f"{prefix}.conv.weight"]
    bias = sd.get(f"{prefix}.conv.bias")
    assert (bias is None) == (str(spec.norm) != "none"), prefix  # bias='auto'
    x = F.conv2d(x, weight, bias, stride=stride, padding=weight.shape[-1] // 2)
    if str(spec.norm) == "bn":
        x = F.batch_norm(x, sd[f"{prefix}.bn.running_mean"], sd[f"{prefix}.bn.running_var"],
                         sd[f"{prefix}.bn.weight"], sd[f"{prefix}.bn.bias"], training=False)
    elif str(spec.norm) == "gn":
        x = F.group_norm(x, spec.resolved_gn_groups, sd[f"{prefix}.gn.weight"],
                         sd[f"{prefix}.gn.bias"])
    if str(spec.act) == "relu":
        x = F.relu(x)
    elif str(spec.act) == "leaky_relu":
        x = F.leaky_relu(x, spec.leaky_slope)
    return x


def reference_mmdet_fpn(sd: dict[str, torch.Tensor], feats: list[torch.Tensor], spec,  # type: ignore[no-untyped-def]
                        *, pafpn: bool = False) -> list[torch.Tensor]:
    """mmdetection's FPN.forward (or PAFPN.forward), written out with F.* on a state dict."""
    used = len(feats)
    num_outs = spec.num_outs or used
    mode = str(spec.extra_convs)
    laterals = [_mmdet_block(sd, f"lateral_convs.{i}", x, spec) for i, x in enumerate(feats)]
    for i in range(used - 1, 0, -1):
        prev_shape = laterals[i - 1].shape[2:]
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=prev_shape,
                                                          mode="nearest")
    outs = [_mmdet_block(sd, f"fpn_convs.{i}", laterals[i], spec) for i in range(used)]
    if pafpn:
        inter_outs = outs
        for i in range(0, used - 1):
            inter_outs[i + 1] = inter_outs[i + 1] + _mmdet_block(
                sd, f"downsample_convs.{i}", inter_outs[i], spec, stride=2)
        outs = [inter_outs[0]]
        outs.extend(_mmdet_block(sd, f"pafpn_convs.{i - 1}", inter_outs[i], spec)
                    for i in range(1, used))
    if num_outs > len(outs):
        if mode == "none":
            for _ in range(num_outs - used):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        else:
            source = {"on_input": feats[used - 1], "on_lateral": laterals[-1],
                      "on_output": outs[-1]}[mode]
            outs.append(_mmdet_block(sd, f"fpn_convs.{used}", source, spec, stride=2))
            for i in range(used + 1, num_outs):
                prev = F.relu(outs[-1]) if spec.relu_before_extra_convs else outs[-1]
                outs.append(_mmdet_block(sd, f"fpn_convs.{i}", prev, spec, stride=2))
    return outs


# -- YuNet's TFPN and the YOLO necks, from the authors' code and yaml files ------------------
# YuNet (libfacedetection.train tfpn.py): per level a ConvDPUnit (1x1 + bias, 3x3 depthwise +
# bias, BN, ReLU); C_i + up(P_{i+1}) before the unit of level i.
def yunet_conv_macs(s, h: int, w: int, b: int = 1) -> list[int]:  # type: ignore[no-untyped-def]
    c = s.out_channels
    return [b * (ci * c + 9 * c) * lh * lw
            for ci, (lh, lw) in zip(s.in_channels, level_sizes(h, w, s.num_levels), strict=True)]


def yunet_params(s) -> int:  # type: ignore[no-untyped-def]
    c = s.out_channels
    bn = 2 * c if str(s.norm) == "bn" else 0
    return sum(ci * c + c + 9 * c + c + bn for ci in s.in_channels)


def yunet_level_elements(s) -> list[int]:  # type: ignore[no-untyped-def]
    """Channels of the maps created per level: conv1, conv2, BN outputs (ReLU in place);
    the upsample and add into every level but the coarsest."""
    c, n = s.out_channels, s.num_levels
    unit = 3 * c if str(s.norm) == "bn" else 2 * c
    return [unit + (2 * c if i < n - 1 else 0) for i in range(n)]


def _act(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return F.relu(x)
    if act == "leaky_relu":
        return F.leaky_relu(x, 0.1)
    if act == "silu":
        return F.silu(x)
    return x


def reference_yunet(sd: dict[str, torch.Tensor], feats: list[torch.Tensor], spec  # type: ignore[no-untyped-def]
                    ) -> list[torch.Tensor]:
    def unit(x: torch.Tensor, i: int) -> torch.Tensor:
        p = f"lateral_convs.{i}."
        x = F.conv2d(x, sd[p + "conv1.weight"], sd[p + "conv1.bias"])
        x = F.conv2d(x, sd[p + "conv2.weight"], sd[p + "conv2.bias"], 1, 1, 1, x.shape[1])
        if str(spec.norm) == "bn":
            x = F.batch_norm(x, sd[p + "bn.running_mean"], sd[p + "bn.running_var"],
                             sd[p + "bn.weight"], sd[p + "bn.bias"], False)
        return _act(x, str(spec.act))

    outs = list(feats)
    outs[-1] = unit(feats[-1], len(feats) - 1)
    for i in range(len(feats) - 2, -1, -1):
        up = F.interpolate(outs[i + 1], size=feats[i].shape[2:], mode="nearest")
        outs[i] = unit(feats[i] + up, i)
    return outs


def yolo_layers(s) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """The neck's yaml layers, as the authors' files list them: index, what it is, channels
    in and out, the level it runs at, and what it reads. YOLO5Face / lite: per top-down step
    [Conv 1x1, Upsample, Concat, block], per bottom-up step [down, Concat (ADD), block];
    YOLOv8: no Conv 1x1 in the top-down steps."""
    fam = s.family
    lateral = fam != "yolov8"
    n = s.num_levels
    c = list(s.in_channels)
    w = list(s.widths) if s.widths else [s.out_channels] * n
    block = {"yolo5face": "c3", "yolov8": "c2f", "yolov8_lite": "dw"}[fam]
    layers: list[dict] = []  # type: ignore[type-arg]
    j = s.first_layer
    prev, prev_src = c[-1], ("in", n - 1)
    lat_src: dict[int, tuple[str, object]] = {}
    lat_ch: dict[int, int] = {}
    td_src: dict[int, tuple[str, object]] = {n - 1: ("in", n - 1)}
    for k in range(n - 1, 0, -1):
        if lateral:
            layers.append(dict(i=j, kind="conv", cin=prev, cout=w[k - 1], k=1, s=1, level=k,
                               src=prev_src))
            prev, prev_src = w[k - 1], ("layer", j)
            lat_src[k], lat_ch[k] = prev_src, prev
            j += 1
        layers.append(dict(i=j + 1, kind="upcat", cin=prev, cfine=c[k - 1], level=k - 1,
                           src=prev_src, fine=("in", k - 1)))
        layers.append(dict(i=j + 2, kind=block, cin=prev + c[k - 1], cout=w[k - 1],
                           level=k - 1, src=("layer", j + 1), s=1))
        prev, prev_src = w[k - 1], ("layer", j + 2)
        td_src[k - 1] = prev_src
        j += 3
    out_src = {0: prev_src}
    for k in range(1, n):
        down = "dw" if block == "dw" else "conv"
        layers.append(dict(i=j, kind=down, cin=w[k - 1], cout=w[k - 1], k=3, s=2, level=k,
                           src=out_src[k - 1]))
        if block == "dw":
            layers.append(dict(i=j + 1, kind="add", cin=w[k - 1], level=k,
                               src=("layer", j), other=lat_src[k]))
            cin = w[k - 1]
        else:
            partner_ch = lat_ch[k] if lateral else (w[k] if k < n - 1 else c[-1])
            partner = lat_src[k] if lateral else td_src[k]
            layers.append(dict(i=j + 1, kind="cat", cin=w[k - 1] + partner_ch, level=k,
                               src=("layer", j), other=partner))
            cin = w[k - 1] + partner_ch
        layers.append(dict(i=j + 2, kind=block, cin=cin, cout=w[k], level=k,
                           src=("layer", j + 1), s=1))
        out_src[k] = ("layer", j + 2)
        j += 3
    return layers


def _yolo_cost(s, layer: dict) -> tuple[int, int, int]:  # type: ignore[no-untyped-def,type-arg]
    """(conv MACs per output pixel, params, channels of the maps created) of one layer."""
    bn = str(s.norm) == "bn"
    maps = 2 if bn else 1  # a conv's output, then BN's (the activation is in place)

    def conv(c1: int, c2: int, k: int = 1, groups: int = 1) -> tuple[int, int, int]:
        macs = c1 // groups * c2 * k * k
        return macs, macs + (2 * c2 if bn else c2), maps * c2

    def total(*parts: tuple[int, int, int]) -> tuple[int, int, int]:
        return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts))

    kind, cin = layer["kind"], layer["cin"]
    n = s.repeats
    if kind == "conv":
        return conv(cin, layer["cout"], layer["k"])
    if kind == "dw":
        return total(conv(cin, cin, 3, groups=cin), conv(cin, layer["cout"]))
    if kind == "c3":
        h = layer["cout"] // 2
        return total(conv(cin, h), conv(cin, h), *[conv(h, h)] * n, *[conv(h, h, 3)] * n,
                     (0, 0, 2 * h), conv(2 * h, layer["cout"]))
    if kind == "c2f":
        h = layer["cout"] // 2  # the split halves are views: nothing created
        return total(conv(cin, 2 * h), *[conv(h, h, 3)] * (2 * n), (0, 0, (2 + n) * h),
                     conv((2 + n) * h, layer["cout"]))
    if kind == "upcat":  # the upsampled map, then the concat
        return 0, 0, cin + cin + layer["cfine"]
    return 0, 0, cin  # a Concat's or an ADD's output


def yolo_conv_macs(s, h: int, w: int, b: int = 1) -> list[int]:  # type: ignore[no-untyped-def]
    sizes = level_sizes(h, w, s.num_levels)
    out = [0] * s.num_levels
    for layer in yolo_layers(s):
        lh, lw = sizes[layer["level"]]
        out[layer["level"]] += b * _yolo_cost(s, layer)[0] * lh * lw
    return out


def yolo_params(s) -> int:  # type: ignore[no-untyped-def]
    return sum(_yolo_cost(s, layer)[1] for layer in yolo_layers(s))


def yolo_level_elements(s) -> list[int]:  # type: ignore[no-untyped-def]
    out = [0] * s.num_levels
    for layer in yolo_layers(s):
        out[layer["level"]] += _yolo_cost(s, layer)[2]
    return out


def reference_yolo(sd: dict[str, torch.Tensor], feats: list[torch.Tensor], spec  # type: ignore[no-untyped-def]
                   ) -> list[torch.Tensor]:
    """The YOLO necks' forward from their yaml layers, with functional ops; BatchNorm eps
    1e-3 as ultralytics and yolov5 set it."""
    act, bn = str(spec.act), str(spec.norm) == "bn"

    def cbn(x: torch.Tensor, p: str, conv: str, norm: str, k: int, s: int = 1,
            groups: int = 1) -> torch.Tensor:
        x = F.conv2d(x, sd[f"{p}{conv}.weight"], sd.get(f"{p}{conv}.bias"), s, k // 2, 1,
                     groups)
        if bn:
            x = F.batch_norm(x, sd[f"{p}{norm}.running_mean"], sd[f"{p}{norm}.running_var"],
                             sd[f"{p}{norm}.weight"], sd[f"{p}{norm}.bias"], False, 0.0, 1e-3)
        return _act(x, act)

    def conv(x: torch.Tensor, p: str, k: int = 1, s: int = 1) -> torch.Tensor:
        return cbn(x, p, "conv", "bn", k, s)

    n = spec.repeats
    out: dict[int, torch.Tensor] = {}

    def get(src: tuple) -> torch.Tensor:  # type: ignore[type-arg]
        return feats[src[1]] if src[0] == "in" else out[src[1]]

    for layer in yolo_layers(spec):
        p, kind, x = f"model.{layer['i']}.", layer["kind"], get(layer["src"])
        if kind == "conv":
            y = conv(x, p, layer["k"], layer["s"])
        elif kind == "upcat":
            fine = get(layer["fine"])
            up = F.interpolate(x, size=fine.shape[2:], mode="nearest")
            y = torch.cat([up, fine], 1)
        elif kind == "cat":
            y = torch.cat([x, get(layer["other"])], 1)
        elif kind == "add":
            y = x + get(layer["other"])
        elif kind == "dw":
            y = cbn(x, p, "conv1", "bn1", 3, layer["s"], x.shape[1])
            y = cbn(y, p, "conv2", "bn2", 1)
        elif kind == "c3":
            a = conv(x, p + "cv1.")
            for i in range(n):
                a = conv(conv(a, f"{p}m.{i}.cv1."), f"{p}m.{i}.cv2.", 3)
            y = conv(torch.cat([a, conv(x, p + "cv2.")], 1), p + "cv3.")
        else:  # c2f
            parts = list(conv(x, p + "cv1.").chunk(2, 1))
            for i in range(n):
                parts.append(conv(conv(parts[-1], f"{p}m.{i}.cv1.", 3), f"{p}m.{i}.cv2.", 3))
            y = conv(torch.cat(parts, 1), p + "cv2.")
        out[layer["i"]] = y
    blocks = [layer for layer in yolo_layers(spec) if layer["kind"] in ("c3", "c2f", "dw")
              and layer["s"] == 1]
    by_level = {}
    for layer in blocks:  # the last block at each level is its output
        by_level[layer["level"]] = out[layer["i"]]
    return [by_level[k] for k in range(spec.num_levels)]


# -- the tables tests pick from, keyed by family (a new family adds one row each) -----
# Each takes the spec (read as plain values) so a family's own fields reach its formula.
#: family -> conv MACs per output level, (spec, H, W, batch) -> [per level]
CONV_MACS = {
    "fpn": lambda s, h, w, b=1: fpn_conv_macs(list(s.in_channels), s.out_channels, h, w, b),
    "pafpn": lambda s, h, w, b=1: pafpn_conv_macs(list(s.in_channels), s.out_channels, h, w, b),
    "mmdet_fpn": lambda s, h, w, b=1: mmdet_conv_macs(s, h, w, b),
    "mmdet_pafpn": lambda s, h, w, b=1: mmdet_conv_macs(s, h, w, b, pafpn=True),
    "yunet": yunet_conv_macs,
    "yolo5face": yolo_conv_macs,
    "yolov8": yolo_conv_macs,
    "yolov8_lite": yolo_conv_macs,
}
#: family -> parameter count, (spec) -> int
PARAMS = {
    "fpn": lambda s: fpn_params(list(s.in_channels), s.out_channels, str(s.norm)),
    "pafpn": lambda s: pafpn_params(list(s.in_channels), s.out_channels, str(s.norm)),
    "mmdet_fpn": lambda s: mmdet_params(s),
    "mmdet_pafpn": lambda s: mmdet_params(s, pafpn=True),
    "yunet": yunet_params,
    "yolo5face": yolo_params,
    "yolov8": yolo_params,
    "yolov8_lite": yolo_params,
}


def _seed_reference(function):  # type: ignore[no-untyped-def]
    def run(sd, feats, spec):  # type: ignore[no-untyped-def]
        groups = spec.resolved_gn_groups
        return function(sd, feats, norm=str(spec.norm), act=str(spec.act),
                        slope=spec.leaky_slope, groups=groups)
    return run


#: family -> independent functional forward, (state dict, inputs, spec) -> outputs
REFERENCE = {
    "fpn": _seed_reference(reference_fpn),
    "pafpn": _seed_reference(reference_pafpn),
    "mmdet_fpn": lambda sd, feats, spec: reference_mmdet_fpn(sd, feats, spec),
    "mmdet_pafpn": lambda sd, feats, spec: reference_mmdet_fpn(sd, feats, spec, pafpn=True),
    "yunet": reference_yunet,
    "yolo5face": reference_yolo,
    "yolov8": reference_yolo,
    "yolov8_lite": reference_yolo,
}
#: family -> activation maps created per output level, (spec) -> [per level]
LEVEL_MAPS = {
    "fpn": lambda s: fpn_level_maps(s.num_levels, str(s.norm)),
    "pafpn": lambda s: pafpn_level_maps(s.num_levels, str(s.norm)),
    "mmdet_fpn": lambda s: mmdet_level_maps(s),
    "mmdet_pafpn": lambda s: mmdet_level_maps(s, pafpn=True),
}
#: family -> channels of all the maps created per output level, for the families whose
#: maps differ in width, (spec) -> [per level]
LEVEL_ELEMENTS = {
    "yunet": yunet_level_elements,
    "yolo5face": yolo_level_elements,
    "yolov8": yolo_level_elements,
    "yolov8_lite": yolo_level_elements,
}
