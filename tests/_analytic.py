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


def activation_bytes(family: str, levels: int, norm: str, c: int, h: int, w: int,
                     batch: int = 1) -> list[int]:
    """fp32 bytes the forward creates at each level (4 bytes per element)."""
    maps = LEVEL_MAPS[family](levels, norm)
    return [m * 4 * batch * c * lh * lw for m, (lh, lw) in zip(maps, level_sizes(h, w, levels),
                                                                strict=True)]


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


# -- the tables tests pick from, keyed by family (a new family adds one row each) -----
#: family -> conv MACs per output level, (in_channels, out, H, W, batch) -> [per level]
CONV_MACS = {"fpn": fpn_conv_macs, "pafpn": pafpn_conv_macs}
#: family -> parameter count, (in_channels, out, norm) -> int
PARAMS = {"fpn": fpn_params, "pafpn": pafpn_params}
#: family -> independent functional forward on a state dict
REFERENCE = {"fpn": reference_fpn, "pafpn": reference_pafpn}
#: family -> activation maps created per level, (levels, norm) -> [per level]
LEVEL_MAPS = {"fpn": fpn_level_maps, "pafpn": pafpn_level_maps}
