"""Your own neck: an import path ``package.module:factory`` wherever a NECK is accepted.

The factory is an ``nn.Module`` class or a function called as
``factory(in_channels=[...], out_channels=N)``. Its ``forward`` takes a sequence of level
tensors (finest first, stride 8 * 2**i) and returns one tensor per level, like the
shipped necks. The current directory is importable, as with ``python -m``, so
``necktool profile examples.custom_neck:BiFPN --in-channels 40,80,160`` works from a checkout.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import TYPE_CHECKING, Any

from necktool.errors import NecktoolError, SpecError
from necktool.specs import Activation, Family, NeckSpec, Norm

if TYPE_CHECKING:
    from torch import nn

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
DEFAULT_OUT_CHANNELS = 64
_NOT_FOR_CUSTOM = ("norm", "act", "gn_groups", "leaky_slope")


class CustomNeckError(NecktoolError):
    """A custom neck that cannot be imported, built or run as a neck."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` names a custom neck (``module:attribute``) rather than a preset."""
    return ":" in name


def custom_spec(target: str, **overrides: Any) -> NeckSpec:
    """The spec of a custom neck; ``in_channels`` is required, the factory decides the rest."""
    if not _IMPORT_PATH.match(target):
        raise SpecError(f"malformed import path {target!r}; expected package.module:factory, "
                        "e.g. examples.custom_neck:BiFPN")
    given = {k: v for k, v in overrides.items() if v is not None}
    misplaced = [k for k in _NOT_FOR_CUSTOM if k in given]
    if misplaced:
        flags = ", ".join("--" + k.replace("_", "-") for k in misplaced)
        raise SpecError(f"{flags} cannot apply to custom neck {target!r}: its factory takes "
                        "only in_channels and out_channels")
    if "in_channels" not in given:
        raise SpecError(f"custom neck {target!r} needs --in-channels (one count per level, "
                        "finest first), e.g. --in-channels 64,128,256")
    unknown = set(given) - {"in_channels", "out_channels", "input_size", "name", "family",
                            "factory"}
    if unknown:
        raise SpecError(f"unknown field(s) {sorted(unknown)} for custom neck {target!r}")
    return NeckSpec(
        Family.CUSTOM,
        given["in_channels"],
        given.get("out_channels", DEFAULT_OUT_CHANNELS),
        Norm.NONE,
        Activation.NONE,
        input_size=given.get("input_size", (640, 640)),
        name=target,
        factory=target,
    )


def load_custom(spec: NeckSpec) -> nn.Module:
    """Import and call ``spec.factory``; every failure is a one-line :class:`CustomNeckError`."""
    from torch import nn

    assert spec.factory is not None  # guaranteed by NeckSpec validation
    module_name, _, attr_path = spec.factory.partition(":")
    if os.getcwd() not in sys.path:  # like `python -m`: the working directory is importable
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # an import can raise anything; report it, never a traceback
        raise CustomNeckError(f"cannot import {module_name!r} for custom neck "
                              f"{spec.factory!r}: {type(exc).__name__}: {exc}") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in vars(obj) if not n.startswith("_"))[:12]
            raise CustomNeckError(f"{module_name!r} has no attribute {attr_path!r}; "
                                  f"it defines: {', '.join(public) or 'nothing public'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CustomNeckError(f"{spec.factory!r} is a {type(obj).__name__}, not a class or "
                              "function; point at an nn.Module class or a factory")
    args = {"in_channels": list(spec.in_channels), "out_channels": spec.out_channels}
    try:
        model = obj(**args)
    except Exception as exc:  # user code: any exception is a bad neck, not our crash
        raise CustomNeckError(f"custom neck {spec.factory!r} raised {type(exc).__name__}: "
                              f"{exc} (called with in_channels={args['in_channels']}, "
                              f"out_channels={args['out_channels']})") from None
    if not isinstance(model, nn.Module):
        raise CustomNeckError(f"custom neck {spec.factory!r} returned "
                              f"{type(model).__name__}; expected a torch.nn.Module")
    return model


def check_outputs(spec: NeckSpec, outputs: Any, batch: int,
                  input_size: tuple[int, int]) -> None:
    """Raise unless ``outputs`` is one ``(batch, out_channels, H_i, W_i)`` tensor per level."""
    import torch

    name = spec.factory or spec.name or spec.family.value
    if not isinstance(outputs, (tuple, list)) or len(outputs) != spec.num_levels or \
            not all(isinstance(o, torch.Tensor) for o in outputs):
        got = (f"{len(outputs)} item(s)" if isinstance(outputs, (tuple, list))
               else type(outputs).__name__)
        raise CustomNeckError(f"{name}: forward must return one tensor per level "
                              f"({spec.num_levels}: {', '.join(spec.level_names)}), got {got}")
    for level, out, (h, w) in zip(spec.level_names, outputs, spec.level_sizes(
            input_size), strict=True):
        expected = (batch, spec.out_channels, h, w)
        if tuple(out.shape) != expected:
            raise CustomNeckError(f"{name}: output {level} has shape {tuple(out.shape)}; "
                                  f"expected {expected} (batch, out_channels, H, W)")
