"""Your own neck: an import path ``package.module:factory`` wherever a NECK is accepted.

The factory is an ``nn.Module`` class or a function called as
``factory(in_channels=[...], out_channels=N)``. Its ``forward`` takes a sequence of level
tensors (finest first, stride 8 * 2**i) and returns one tensor per level, like the
shipped necks. The current directory is importable, as with ``python -m``, so
``necktool profile examples.custom_neck:BiFPN --in-channels 40,80,160`` works from a checkout.

This module is the ``custom`` family's builder; its spec is made torch-free by
:func:`necktool.spec.registry.custom_spec`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from torch import nn

from necktool.errors import CustomNeckError, first_line
from necktool.spec.neck_spec import NeckSpec


def build_custom(spec: NeckSpec) -> nn.Module:
    """Import and call ``spec.factory``; every failure is a one-line :class:`CustomNeckError`."""
    if spec.factory is None:
        raise CustomNeckError(f"{spec.label}: a custom neck needs an import path")
    module_name, _, attr_path = spec.factory.partition(":")
    if os.getcwd() not in sys.path:  # like `python -m`: the working directory is importable
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # user code: even SystemExit is a bad neck, not our exit
        raise CustomNeckError(f"cannot import {module_name!r} for custom neck "
                              f"{spec.factory!r}: {first_line(exc, 200)}") from None
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
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # user code: any exception, SystemExit too, is a bad neck
        raise CustomNeckError(f"custom neck {spec.factory!r} raised {first_line(exc, 200)} (called "
                              f"with in_channels={args['in_channels']}, "
                              f"out_channels={args['out_channels']})") from None
    if not isinstance(model, nn.Module):
        raise CustomNeckError(f"custom neck {spec.factory!r} returned "
                              f"{type(model).__name__}; expected a torch.nn.Module")
    return model
