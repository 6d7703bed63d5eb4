"""The preset registry: a plain dict from name to :class:`NeckSpec` (timm-style).

Torch-free, so ``necktool list`` and ``--help`` stay instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any

from necktool.errors import UnknownNeckError
from necktool.specs import (
    Activation,
    Family,
    NeckSpec,
    Norm,
    retinaface_leaky_slope,
)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named spec plus a one-line description for ``necktool list``."""

    name: str
    spec: NeckSpec
    description: str


PRESETS: dict[str, Preset] = {}


def register_neck(name: str, spec: NeckSpec, description: str) -> Preset:
    """Add a preset; registering a name twice is an error, never a silent overwrite."""
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    preset = Preset(name, dataclasses.replace(spec, name=name), description)
    PRESETS[name] = preset
    return preset


def list_necks(pattern: str = "*") -> list[str]:
    """Preset names matching a shell wildcard, in registration order.

    Example:
        >>> list_necks("scrfd_*")
        ['scrfd_34g', 'scrfd_10g', 'scrfd_2.5g', 'scrfd_0.5g']
    """
    return [n for n in PRESETS if fnmatch.fnmatchcase(n, pattern)]


def is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def unknown_neck(name: str) -> UnknownNeckError:
    """An error naming the closest preset, and the valid ones."""
    close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return UnknownNeckError(
        f"unknown neck {name!r}; {hint}valid: {', '.join(PRESETS)}"
    )


def get_spec(name: str, **overrides: Any) -> NeckSpec:
    """The preset's spec with ``overrides`` applied (``None`` values ignored).

    Raises:
        UnknownNeckError: ``name`` is not registered (with a close-match suggestion).
        SpecError: an override makes the neck invalid.
    """
    try:
        preset = PRESETS[name]
    except KeyError:
        raise unknown_neck(name) from None
    return preset.spec.replace(**overrides)


def expand_names(names: list[str]) -> list[str]:
    """Expand wildcards and drop repeats, so each neck is profiled once."""
    out: list[str] = []
    for name in names:
        matches = list_necks(name) if is_pattern(name) else [name]
        if not matches:
            raise UnknownNeckError(
                f"pattern {name!r} matches no neck; valid: {', '.join(PRESETS)}"
            )
        out.extend(m for m in matches if m not in out)
    return out


# SCRFD tiers: the seed's widths; input channels from the real SCRFD backbones
# (insightface configs/scrfd), at strides 8/16/32; profiled at 640x640 like SCRFD's tool.
_SCRFD = {
    "scrfd_34g": ((224, 576, 736), 64),
    "scrfd_10g": ((88, 88, 224), 56),
    "scrfd_2.5g": ((48, 48, 80), 40),
    "scrfd_0.5g": ((72, 152, 288), 16),
}
for _name, (_in, _out) in _SCRFD.items():
    register_neck(
        _name,
        NeckSpec(Family.PAFPN, _in, _out, Norm.GN, Activation.RELU, input_size=(640, 640)),
        f"SCRFD {_name.split('_')[1].upper()} tier: seed PAFPN, GroupNorm, width {_out}",
    )

register_neck(
    "retinaface_mnet",
    NeckSpec(Family.FPN, (64, 128, 256), 64, Norm.BN, Activation.LEAKY_RELU,
             leaky_slope=retinaface_leaky_slope(64), input_size=(640, 640)),
    "RetinaFace MobileNet-0.25 FPN (Pytorch_Retinaface)",
)
register_neck(
    "retinaface_r50",
    NeckSpec(Family.FPN, (512, 1024, 2048), 256, Norm.BN, Activation.LEAKY_RELU,
             leaky_slope=retinaface_leaky_slope(256), input_size=(840, 840)),
    "RetinaFace ResNet-50 FPN (Pytorch_Retinaface)",
)
register_neck(
    "fpn",
    NeckSpec(Family.FPN, (64, 128, 256), 64, Norm.BN, Activation.LEAKY_RELU,
             leaky_slope=0.1, input_size=(640, 640)),
    "RetinaFace-style FPN family; build variants with flags",
)
register_neck(
    "pafpn",
    NeckSpec(Family.PAFPN, (64, 128, 256), 64, Norm.GN, Activation.RELU, input_size=(640, 640)),
    "SCRFD-style PAFPN family; build variants with flags",
)
