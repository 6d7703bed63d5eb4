"""Build necks and their example inputs from names or specs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from necktool.errors import CustomNeckError
from necktool.report import size_text
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.registry import resolve_spec
from necktool.spec.resources import forward_bytes, param_bound, require
from necktool.units import FP32_BYTES


def build_neck(neck: str | NeckSpec, *, seed: int = 0, **overrides: Any) -> nn.Module:
    """Build a neck in eval mode, its weights drawn deterministically from ``seed``.

    Args:
        neck: A preset name (``necktool list``), an import path ``pkg.module:factory``
            (see :mod:`necktool.necks.custom`) or a :class:`NeckSpec`.
        seed: Seed for the weight init; the global RNG state is left untouched.
        **overrides: Spec fields to change (``out_channels=32``...); ``None`` is ignored.

    Example:
        >>> neck = build_neck("scrfd_2.5g", out_channels=32)
        >>> [tuple(p.shape) for p in neck(make_inputs(neck.spec))]
        [(1, 32, 80, 80), (1, 32, 40, 40), (1, 32, 20, 20)]
    """
    spec = neck if isinstance(neck, NeckSpec) and not overrides \
        else resolve_spec(neck, **overrides)  # a spec is already valid
    require(FP32_BYTES * param_bound(spec), f"building {spec.label}")
    builder = spec.info.load_builder()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder(spec)
    return model.eval()


def require_forward(spec: NeckSpec, size: tuple[int, int], batch: int) -> None:
    """Raise unless ``spec`` can run at ``size`` and one forward fits the memory limit:
    before anything is built (a 4096-channel neck takes seconds to initialise)."""
    spec.check_size(size)
    require(forward_bytes(spec, size, batch),
            f"{spec.label} at {size_text(size)}, batch {batch},")


def make_inputs(
    spec: NeckSpec,
    input_size: tuple[int, int] | None = None,
    batch: int = 1,
    *,
    seed: int | None = 0,
) -> list[torch.Tensor]:
    """Backbone-like features for every input level: ``(batch, in_ch, ceil(H/s), ceil(W/s))``.

    ``seed=None`` gives zeros (enough for counting); otherwise seeded normal values.
    """
    size = input_size or spec.input_size
    require_forward(spec, size, batch)
    return input_tensors(spec, size, batch, seed=seed)


def input_tensors(spec: NeckSpec, input_size: tuple[int, int], batch: int, *,
                  seed: int | None) -> list[torch.Tensor]:
    """:func:`make_inputs` for a size and batch already checked (a plan's): no checks."""
    size = input_size
    shapes = [(batch, c, h, w) for c, (h, w) in zip(spec.in_channels, spec.input_sizes(size),
                                                    strict=True)]
    if seed is None:
        return [torch.zeros(s) for s in shapes]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in shapes]


def check_neck_outputs(spec: NeckSpec, outputs: Any, batch: int,
                       input_size: tuple[int, int]) -> None:
    """Raise :class:`CustomNeckError` unless ``outputs`` (any neck's, built-in or custom) is
    one ``(batch, out_channels, H_i, W_i)`` tensor per level."""
    name = spec.label
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
