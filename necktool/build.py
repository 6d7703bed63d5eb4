"""Build necks and their example inputs from names or specs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from necktool.custom import custom_spec, is_import_path, load_custom
from necktool.necks import FAMILIES
from necktool.registry import get_spec
from necktool.specs import Family, NeckSpec


def resolve_spec(neck: str | NeckSpec, **overrides: Any) -> NeckSpec:
    """A preset name, an import path (``pkg.module:factory``) or a spec, with ``overrides``
    applied (``None`` values ignored)."""
    if isinstance(neck, NeckSpec):
        if neck.family is Family.CUSTOM:  # re-validate through the custom rules
            fields = {"in_channels": neck.in_channels, "out_channels": neck.out_channels,
                      "input_size": neck.input_size}
            fields.update({k: v for k, v in overrides.items() if v is not None})
            return custom_spec(neck.factory or "", **fields)
        return neck.replace(**overrides)
    if is_import_path(neck):
        return custom_spec(neck, **overrides)
    return get_spec(neck, **overrides)


def build_neck(neck: str | NeckSpec, *, seed: int = 0, **overrides: Any) -> nn.Module:
    """Build a neck in eval mode, its weights drawn deterministically from ``seed``.

    Args:
        neck: A preset name (``necktool list``), an import path ``pkg.module:factory``
            (see :mod:`necktool.custom`) or a :class:`NeckSpec`.
        seed: Seed for the weight init; the global RNG state is left untouched.
        **overrides: Spec fields to change (``out_channels=32``...); ``None`` is ignored.

    Example:
        >>> neck = build_neck("scrfd_2.5g", out_channels=32)
        >>> [tuple(p.shape) for p in neck(make_inputs(get_spec("scrfd_2.5g")))]
        [(1, 32, 80, 80), (1, 32, 40, 40), (1, 32, 20, 20)]
    """
    spec = resolve_spec(neck, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = load_custom(spec) if spec.family is Family.CUSTOM else FAMILIES[spec.family](spec)
    return model.eval()


def make_inputs(
    spec: NeckSpec,
    input_size: tuple[int, int] | None = None,
    batch: int = 1,
    *,
    seed: int | None = 0,
) -> list[torch.Tensor]:
    """Backbone-like features for every level: ``(batch, in_ch, ceil(H/s), ceil(W/s))``.

    ``seed=None`` gives zeros (enough for counting); otherwise seeded normal values.
    """
    size = input_size or spec.input_size
    spec.check_size(size)
    shapes = [(batch, c, h, w) for c, (h, w) in zip(spec.in_channels, spec.level_sizes(size),
                                                    strict=True)]
    if seed is None:
        return [torch.zeros(s) for s in shapes]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in shapes]
