"""Upper bounds of a neck's parameters from its spec, one per family design (torch-free).

A family declares its bound in its registration (:mod:`necktool.spec.families`); the
memory checks (:mod:`necktool.resources`) use it before anything is built, so a neck too
large for the machine is refused before torch allocates it. Each bound is at least the
real count (tests/test_resources.py builds every preset and compares).
"""

from __future__ import annotations

from typing import Any

NORM_PER_CHANNEL = 6  # a norm's weight and bias, a BN's statistics, a conv bias


def conv_stack(spec: Any) -> int:
    """A lateral 1x1 per input, then up to three 3x3 convs per level (the FPN/PAFPN
    designs: RetinaFace, the SCRFD seed, mmdetection; also the bound for a custom neck)."""
    out = spec.out_channels
    per_level = out * out * 9 * 3 + NORM_PER_CHANNEL * out
    return sum(c * out for c in spec.in_channels) + spec.num_levels * per_level


def dpu_stack(spec: Any) -> int:
    """YuNet's TFPN: one depthwise-separable unit (1x1, 3x3 depthwise, norm) per level."""
    out = spec.out_channels
    return sum(c * out + (9 + 2 * NORM_PER_CHANNEL) * out for c in spec.in_channels)


def _widest(spec: Any) -> int:
    return max(*spec.in_channels, *spec.level_channels)


def csp_pan(spec: Any) -> int:
    """The YOLO PANs (C3 or C2f blocks): per level a lateral 1x1, a stride-2 3x3, and two
    CSP blocks whose inputs are at most twice the widest map, each with ``repeats``
    bottlenecks of a 1x1 (or 3x3) and a 3x3, and its 1x1 convs (a C2f's output conv
    reads ``2 + repeats`` halves)."""
    k = _widest(spec)
    block = 2 * (2 * k) * k + (2 + spec.repeats) * k * k + spec.repeats * 18 * k * k
    per_level = k * k + 9 * k * k + 2 * block + 12 * NORM_PER_CHANNEL * k
    return spec.num_levels * per_level


def dw_pan(spec: Any) -> int:
    """yolov8-lite: per level a lateral 1x1 and three depthwise-separable blocks whose
    inputs are at most twice the widest map."""
    k = _widest(spec)
    block = 9 * 2 * k + 2 * k * k + 2 * NORM_PER_CHANNEL * 2 * k
    return spec.num_levels * (k * k + 3 * block + NORM_PER_CHANNEL * k)
