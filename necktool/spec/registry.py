"""The preset registry and name resolution (torch-free, timm-style).

A plain dict from name to :class:`NeckSpec`. :func:`resolve_spec` turns anything a user
can name (a preset, a family's bare preset, an import path ``package.module:factory``, a
spec) into a validated spec without importing torch, so ``necktool list``, ``--help`` and
budget-config errors stay instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
import os
import re
from typing import Any

from necktool.errors import SpecError, UnknownNeckError
from necktool.report import Block, channels_text, num, size_text, table
from necktool.spec.families import FAMILIES
from necktool.spec.fields import Activation, ExtraConvs, Norm
from necktool.spec.neck_spec import NeckSpec, retinaface_leaky_slope


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named spec plus a one-line description for ``necktool list``."""

    name: str
    spec: NeckSpec
    description: str


PRESETS: dict[str, Preset] = {}
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
CUSTOM_FAMILY = next(f.name for f in FAMILIES.values() if f.needs_factory)
CUSTOM_DEFAULTS: dict[str, Any] = {"out_channels": 64, "input_size": (640, 640)}


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


def is_import_path(name: str) -> bool:
    """Whether ``name`` names a custom neck (``module:attribute``) rather than a preset."""
    return ":" in name


def bare_families() -> list[str]:
    """Families that are also presets of the same name (usable as a NECK with flags)."""
    return [f for f in FAMILIES if f in PRESETS]


def unknown_neck(name: str) -> UnknownNeckError:
    """An error naming the closest preset, and the valid ones; for a name that is a file
    here, the likely cause: a pattern the shell expanded because it was not quoted."""
    if os.path.lexists(name):
        return UnknownNeckError(
            f"unknown neck {name!r}, which is a file here: if you meant a pattern such as "
            "'scrfd_*', quote it so the shell does not expand it to file names")
    close = difflib.get_close_matches(name[:100], list(PRESETS), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return UnknownNeckError(f"unknown neck {name[:100]!r}; {hint}valid: {', '.join(PRESETS)}")


def get_spec(name: str, **overrides: Any) -> NeckSpec:
    """The preset's spec with ``overrides`` applied (``None`` values ignored).

    Raises:
        UnknownNeckError: ``name`` is not registered (with a close-match suggestion).
        SpecError: an override makes the neck invalid, or the family does not take it.
    """
    try:
        preset = PRESETS[name]
    except KeyError:
        raise unknown_neck(name) from None
    return preset.spec.replace(**overrides)


def custom_spec(target: str, **overrides: Any) -> NeckSpec:
    """The spec of a custom neck; ``in_channels`` is required, the factory decides the rest."""
    if not _IMPORT_PATH.match(target):
        raise SpecError(f"malformed import path {target!r}; expected package.module:factory, "
                        "e.g. examples.custom_neck:BiFPN")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "in_channels" not in given:
        raise SpecError(f"custom neck {target!r} needs --in-channels (one count per level, "
                        "finest first), e.g. --in-channels 64,128,256")
    base = NeckSpec(CUSTOM_FAMILY, given.pop("in_channels"), CUSTOM_DEFAULTS["out_channels"],
                    input_size=CUSTOM_DEFAULTS["input_size"], name=target, factory=target)
    return base.replace(**given)


def resolve_spec(neck: str | NeckSpec, **overrides: Any) -> NeckSpec:
    """A preset name, an import path (``pkg.module:factory``) or a spec, with ``overrides``
    applied (``None`` values ignored). Never imports torch or the factory's module.

    Raises:
        UnknownNeckError: not a preset (with a close-match suggestion).
        SpecError: an override makes the neck invalid, or its family does not take it.
    """
    if isinstance(neck, NeckSpec):
        return neck.replace(**overrides)
    if is_import_path(neck):
        return custom_spec(neck, **overrides)
    return get_spec(neck, **overrides)


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
        NeckSpec("pafpn", _in, _out, Norm.GN, Activation.RELU, input_size=(640, 640)),
        f"SCRFD {_name.split('_')[1].upper()} tier: seed PAFPN, GroupNorm, width {_out}",
    )

register_neck(
    "retinaface_mnet",
    NeckSpec("fpn", (64, 128, 256), 64, Norm.BN, Activation.LEAKY_RELU,
             leaky_slope=retinaface_leaky_slope(64), input_size=(640, 640)),
    "RetinaFace MobileNet-0.25 FPN (Pytorch_Retinaface)",
)
register_neck(
    "retinaface_r50",
    NeckSpec("fpn", (512, 1024, 2048), 256, Norm.BN, Activation.LEAKY_RELU,
             leaky_slope=retinaface_leaky_slope(256), input_size=(840, 840)),
    "RetinaFace ResNet-50 FPN (Pytorch_Retinaface)",
)
register_neck(
    "fpn",
    NeckSpec("fpn", (64, 128, 256), 64, Norm.BN, Activation.LEAKY_RELU,
             leaky_slope=0.1, input_size=(640, 640)),
    "RetinaFace-style FPN family; build variants with flags",
)
register_neck(
    "pafpn",
    NeckSpec("pafpn", (64, 128, 256), 64, Norm.GN, Activation.RELU, input_size=(640, 640)),
    "SCRFD-style PAFPN family; build variants with flags",
)


# The released SCRFD necks (insightface detection/scrfd/configs/scrfd/*.py): mmdetection's
# PAFPN, start_level=1 (the backbone's stride-4 output is unused, so only the levels the
# neck uses are listed), add_extra_convs='on_output', num_outs=3, no norm, no activation.
_INSIGHTFACE_SCRFD = {
    "insightface_scrfd_500m": ((72, 152, 288), 16, "SCRFD_500M (scrfd_500m, _bnkps)"),
    "insightface_scrfd_1g": ((160, 216, 312), 24, "SCRFD_1G (scrfd_1g)"),
    "insightface_scrfd_2.5g": ((48, 48, 80), 24, "SCRFD_2.5G (scrfd_2.5g, _bnkps)"),
    "insightface_scrfd_10g": ((88, 88, 224), 56, "SCRFD_10G (scrfd_10g, _bnkps)"),
    "insightface_scrfd_34g": ((224, 576, 736), 128, "SCRFD_34G (scrfd_34g)"),
}
for _name, (_in, _out, _model) in _INSIGHTFACE_SCRFD.items():
    register_neck(
        _name,
        NeckSpec("mmdet_pafpn", _in, _out, Norm.NONE, Activation.NONE, input_size=(640, 640),
                 num_outs=3, extra_convs=ExtraConvs.ON_OUTPUT),
        f"released {_model} neck: mmdetection PAFPN, no norm, width {_out}",
    )

register_neck(
    "mmdet_fpn",
    NeckSpec("mmdet_fpn", (512, 1024, 2048), 256, Norm.NONE, Activation.NONE,
             input_size=(640, 640), num_outs=5, extra_convs=ExtraConvs.ON_INPUT),
    "mmdetection FPN family (RetinaNet's neck, P3-P7); build variants with flags",
)
register_neck(
    "mmdet_pafpn",
    NeckSpec("mmdet_pafpn", (64, 128, 256), 64, Norm.NONE, Activation.NONE,
             input_size=(640, 640), num_outs=3, extra_convs=ExtraConvs.ON_OUTPUT),
    "mmdetection PAFPN family (as in SCRFD); build variants with flags",
)


# YuNet (libfacedetection.train): backbone C3/C4/C5 of 64 channels in both YuNet-n and -s.
register_neck(
    "yunet",
    NeckSpec("yunet", (64, 64, 64), 64, Norm.BN, Activation.RELU, input_size=(640, 640)),
    "YuNet-s TFPN, as OpenCV's FaceDetectorYN ships it (face_detection_yunet_2023mar.onnx, "
    "640x640); YuNet-n's neck is the same; family: build variants with flags",
)


def yolo5_channels(arg: int, width: float) -> int:
    """yolov5(-face)'s channel rule: ``make_divisible(arg * width, 8)``, i.e.
    ``ceil(arg * width / 8) * 8``."""
    return math.ceil(arg * width / 8) * 8


def yolov8_channels(arg: int, width: float, max_channels: int) -> int:
    """ultralytics' rule: ``make_divisible(min(arg, max_channels) * width, 8)``."""
    return yolo5_channels(min(arg, max_channels), width)


def yolo_repeats(n: int, depth: float) -> int:
    """Both repos' depth rule: ``max(round(n * depth), 1)`` for ``n > 1``."""
    return max(round(n * depth), 1) if n > 1 else n


# YOLO5Face (deepcam-cn/yolov5-face models/*.yaml): the backbone levels' yaml args and
# multiples, the neck's first layer index (the backbone's layer count); the neck's widths
# are its C3 args (the same as the backbone's for s/m/l, 128 everywhere for the ShuffleNet
# n tiers), its C3 repeats 3 (s/m/l) or 1 (n) before the depth multiple.
_YOLO5FACE = {
    "yolo5face_n0.5": ((128, 256, 512), (128, 128, 128), 1, 1.0, 0.5, 7, "YOLOv5n-0.5"),
    "yolo5face_n": ((128, 256, 512), (128, 128, 128), 1, 1.0, 1.0, 7, "YOLOv5n"),
    "yolo5face_s": ((256, 512, 1024), (256, 512, 1024), 3, 0.33, 0.5, 9, "YOLOv5s"),
    "yolo5face_m": ((256, 512, 1024), (256, 512, 1024), 3, 0.67, 0.75, 9, "YOLOv5m"),
    "yolo5face_l": ((256, 512, 1024), (256, 512, 1024), 3, 1.0, 1.0, 9, "YOLOv5l"),
    "yolo5face_s6": ((256, 512, 768, 1024), (256, 512, 768, 1024), 3, 0.33, 0.5, 11,
                     "YOLOv5s6"),
}
for _name, (_args, _w, _n, _depth, _width, _first, _model) in _YOLO5FACE.items():
    _widths = tuple(yolo5_channels(a, _width) for a in _w)
    register_neck(
        _name,
        NeckSpec("yolo5face", tuple(yolo5_channels(a, _width) for a in _args), _widths[0],
                 Norm.BN, Activation.SILU, input_size=(640, 640),
                 widths=_widths if len(set(_widths)) > 1 else None,
                 repeats=yolo_repeats(_n, _depth), first_layer=_first),
        f"YOLO5Face {_model} neck: C3 PAN, widths {'/'.join(map(str, _widths))}",
    )

# YOLOv8 faces (stock ultralytics yolov8.yaml scales [depth, width, max_channels], used
# by yolov8-face): backbone C3 = C2f[256], C4 = C2f[512], C5 = SPPF[1024]; the neck's C2f
# args 256/512/1024 with 3 repeats; first neck layer 10.
_YOLOV8 = {
    "yolov8n_face": (0.33, 0.25, 1024, "n"),
    "yolov8s_face": (0.33, 0.50, 1024, "s"),
    "yolov8m_face": (0.67, 0.75, 768, "m"),
}
for _name, (_depth, _width, _max, _scale) in _YOLOV8.items():
    _v8: tuple[int, ...] = tuple(yolov8_channels(a, _width, _max) for a in (256, 512, 1024))
    register_neck(
        _name,
        NeckSpec("yolov8", _v8, _v8[0], Norm.BN, Activation.SILU,
                 input_size=(640, 640), widths=_v8, repeats=yolo_repeats(3, _depth),
                 first_layer=10),
        f"YOLOv8{_scale}-face neck (ultralytics yolov8.yaml): C2f PAN, widths "
        f"{'/'.join(map(str, _v8))}",
    )

# yolov8-lite (derronqi/yolov8-face yolov8-lite-t/s.yaml): ShuffleNet backbone levels
# 48/96/192 (t) or 96/192/384 (s), the neck 48 or 96 wide everywhere; first layer 8.
for _name, (_lite, _out, _tier) in {"yolov8_lite_t": ((48, 96, 192), 48, "t"),
                                  "yolov8_lite_s": ((96, 192, 384), 96, "s")}.items():
    register_neck(
        _name,
        NeckSpec("yolov8_lite", _lite, _out, Norm.BN, Activation.SILU, input_size=(640, 640),
                 first_layer=8),
        f"yolov8-lite-{_tier} face neck: Concat top-down, Add bottom-up, DWConvblocks, "
        f"width {_out}",
    )


@dataclasses.dataclass(frozen=True)
class NeckList:
    """``necktool list``'s result: the presets matching a pattern."""

    presets: tuple[Preset, ...]

    @classmethod
    def matching(cls, pattern: str = "*") -> NeckList:
        """The presets matching a shell wildcard.

        Raises:
            UnknownNeckError: nothing matches (as ``profile`` reports it).
        """
        names = list_necks(pattern)
        if not names:
            raise UnknownNeckError(f"pattern {pattern!r} matches no neck; valid: "
                                   f"{', '.join(PRESETS)}")
        return cls(tuple(PRESETS[n] for n in names))

    def to_dict(self) -> list[dict[str, Any]]:
        return [{"neck": p.name, "family": p.spec.family, "description": p.description,
                 "config": p.spec.to_dict()} for p in self.presets]

    def blocks(self) -> list[Block]:
        rows = []
        for p in self.presets:
            s = p.spec
            act = f"leaky({s.leaky_slope:g})" if s.act is Activation.LEAKY_RELU else s.act.value
            rows.append((p.name, s.family, ",".join(map(str, s.in_channels)),
                         channels_text(s.level_channels), s.norm.value, act,
                         size_text(s.input_size)))
        return [table("necktool presets (details: --format json)",
                      ["name", "family", "in_channels", num("out"), "norm", "act", "input"],
                      rows)]


def reproduce_command(spec: NeckSpec, base: str | None = None, *,
                      with_size: bool = False) -> str:
    """``necktool profile NAME [flags]`` that builds ``spec``: the flags are the fields that
    differ from ``base`` (a preset; default the family's bare preset), so a value the preset
    already has, or derives by its rule (GroupNorm groups), is never repeated."""
    from necktool.spec.fields import FIELD

    name = base or spec.factory or spec.family
    ref = PRESETS[name].spec if name in PRESETS else None
    words = ["necktool", "profile", name]
    for field in FIELD.values():
        if not field.in_spec or not spec.info.takes(field.name):
            continue
        if field.name == "input_size" and not with_size:
            continue
        value = getattr(spec, field.name)
        if value is None or (ref is not None and getattr(ref, field.name) == value):
            continue
        if field.name == "gn_groups" and (ref is None or ref.gn_groups is None) \
                and value == dataclasses.replace(spec, gn_groups=None).resolved_gn_groups:
            continue  # the rule gives it: saying it again would only pin it
        words += field.cli_args(value)
    return " ".join(words)
