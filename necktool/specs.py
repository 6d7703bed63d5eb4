"""Typed neck specifications: every knob of a neck, validated in one place.

A :class:`NeckSpec` is a frozen, torch-free description of a neck. Both families
share it; ``family`` selects the module that :func:`necktool.build_neck` makes.
Validation happens here, before any tensor exists, so a bad flag is reported as a
one-line :class:`~necktool.errors.SpecError` instead of a shape error deep in torch.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

from necktool.errors import InputError, SpecError

BASE_STRIDE = 8  # level 0 (P3) has stride 8; level i has stride 8 * 2**i
MIN_LEVELS = 2
MAX_LEVELS = 6  # P3..P8; deeper pyramids are not used by face detectors
MAX_INPUT_SIDE = 8192  # beyond this the feature maps alone need tens of GiB
SEED_GN_GROUPS = 16  # the SCRFD seed starts from 16 groups and reduces until it divides


class Family(enum.StrEnum):
    """The two neck families described by the seeds."""

    FPN = "fpn"  # RetinaFace's FPN
    PAFPN = "pafpn"  # SCRFD's path-aggregation FPN
    CUSTOM = "custom"  # a user's module, named by an import path (see necktool.custom)


class Norm(enum.StrEnum):
    """Normalisation after each conv. ``none`` gives the conv a bias instead."""

    GN = "gn"
    BN = "bn"
    NONE = "none"


class Activation(enum.StrEnum):
    """Activation after each norm."""

    RELU = "relu"
    LEAKY_RELU = "leaky_relu"
    NONE = "none"


def retinaface_leaky_slope(out_channels: int) -> float:
    """The slope Pytorch_Retinaface's FPN picks: 0.1 for narrow necks, else 0 (ReLU)."""
    return 0.1 if out_channels <= 64 else 0.0


def seed_gn_groups(out_channels: int, start: int = SEED_GN_GROUPS) -> int:
    """The SCRFD seed's group rule: ``min(start, out)`` reduced until it divides ``out``."""
    groups = min(start, out_channels)
    while out_channels % groups:
        groups -= 1
    return groups


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclasses.dataclass(frozen=True)
class NeckSpec:
    """A complete, validated description of one neck.

    Attributes:
        family: Which module to build.
        in_channels: Backbone channels per level, finest (stride 8) first.
        out_channels: Channels of every output level.
        norm: Normalisation after each conv.
        act: Activation after each norm.
        leaky_slope: Negative slope when ``act`` is ``leaky_relu``.
        gn_groups: GroupNorm groups; ``None`` applies the seed's rule
            (:func:`seed_gn_groups`). An explicit value must divide ``out_channels``.
        input_size: Default image size ``(H, W)`` the neck is profiled at.
        name: The preset this spec came from, if any.
        factory: For ``family=custom``: the import path ``package.module:factory``.

    Example:
        >>> spec = NeckSpec(Family.PAFPN, (48, 48, 80), 40, Norm.GN, Activation.RELU)
        >>> spec.level_sizes((640, 480))
        [(80, 60), (40, 30), (20, 15)]
    """

    family: Family
    in_channels: tuple[int, ...]
    out_channels: int
    norm: Norm
    act: Activation
    leaky_slope: float = 0.1
    gn_groups: int | None = None
    input_size: tuple[int, int] = (640, 640)
    name: str | None = None
    factory: str | None = None

    def __post_init__(self) -> None:
        # Accept plain strings and lists (from flags, TOML, JSON) and normalise them.
        try:
            object.__setattr__(self, "family", Family(self.family))
            object.__setattr__(self, "norm", Norm(self.norm))
            object.__setattr__(self, "act", Activation(self.act))
        except ValueError as exc:
            raise SpecError(f"{exc}; valid families: fpn, pafpn, custom; norms: gn, bn, none; "
                            "activations: relu, leaky_relu, none") from None
        object.__setattr__(self, "in_channels", _int_tuple(self.in_channels, "in_channels"))
        object.__setattr__(self, "input_size", _int_tuple(self.input_size, "input_size"))
        self._validate()

    def _validate(self) -> None:
        if (self.family is Family.CUSTOM) != (self.factory is not None):
            raise SpecError("a custom neck needs an import path (factory='package.module:attr') "
                            f"and only a custom neck takes one; got family={self.family.value}, "
                            f"factory={self.factory!r}")
        chans = list(self.in_channels)
        if not MIN_LEVELS <= len(chans) <= MAX_LEVELS:
            raise SpecError(
                f"in_channels has {len(chans)} level(s) {chans}; give {MIN_LEVELS} to "
                f"{MAX_LEVELS} channel counts, finest level first, e.g. 64,128,256"
            )
        if any(c <= 0 for c in chans):
            raise SpecError(f"in_channels must all be positive integers, got {chans}")
        if isinstance(self.out_channels, bool) or not isinstance(self.out_channels, int) \
                or self.out_channels <= 0:
            raise SpecError(f"out_channels must be a positive integer, got {self.out_channels!r}")
        if not isinstance(self.leaky_slope, (int, float)) or not math.isfinite(self.leaky_slope):
            raise SpecError(f"leaky_slope must be a finite number, got {self.leaky_slope!r}")
        if self.gn_groups is not None and self.norm is Norm.GN:
            g = self.gn_groups
            if isinstance(g, bool) or not isinstance(g, int) or g <= 0 \
                    or self.out_channels % g:
                raise SpecError(
                    f"gn_groups={g!r} does not divide out_channels={self.out_channels}; "
                    f"valid: {', '.join(map(str, _divisors(self.out_channels)))}"
                )
        if len(self.input_size) != 2:
            raise SpecError(f"input_size must be (H, W), got {list(self.input_size)}")
        self.check_size(self.input_size)

    def check_size(self, input_size: Sequence[int]) -> None:
        """Raise :class:`SpecError` unless this neck can run at ``input_size`` ``(H, W)``."""
        text = "x".join(map(str, input_size))
        if any(s > MAX_INPUT_SIDE for s in input_size):
            raise SpecError(f"input size {text} is too large; each side must be at most "
                            f"{MAX_INPUT_SIDE}")
        coarsest = self.strides[-1]
        if any(s < coarsest for s in input_size):
            raise SpecError(f"input size {text} is smaller than the coarsest stride {coarsest} "
                            f"(level {self.level_names[-1]}); use at least "
                            f"{coarsest}x{coarsest}")
        h, w = self.level_sizes((input_size[0], input_size[1]))[-1]
        if self.norm is Norm.GN and h * w * self.out_channels // self.resolved_gn_groups == 1:
            # GroupNorm cannot normalise a single value (PyTorch raises at run time).
            raise SpecError(
                f"input size {text} leaves one value per GroupNorm group at level "
                f"{self.level_names[-1]} (1x1, {self.out_channels // self.resolved_gn_groups} "
                "channel per group); use a larger size or fewer --gn-groups"
            )

    # -- derived facts --------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.in_channels)

    @property
    def strides(self) -> list[int]:
        return [BASE_STRIDE * 2**i for i in range(self.num_levels)]

    @property
    def level_names(self) -> list[str]:
        """``P3``, ``P4``, ...: the level's stride is ``2**k`` for ``Pk``."""
        return [f"P{3 + i}" for i in range(self.num_levels)]

    @property
    def input_names(self) -> list[str]:
        return [f"c{3 + i}" for i in range(self.num_levels)]

    @property
    def resolved_gn_groups(self) -> int:
        return self.gn_groups if self.gn_groups is not None else seed_gn_groups(self.out_channels)

    def level_sizes(self, input_size: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """Spatial size of each level: ``ceil(image / stride)``."""
        h, w = input_size if input_size is not None else self.input_size
        return [(-(-h // s), -(-w // s)) for s in self.strides]

    def replace(self, **overrides: Any) -> NeckSpec:
        """Return a copy with ``overrides`` applied; ``None`` values are dropped.

        Dropping ``None`` is what lets unset CLI flags leave preset fields alone.
        """
        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise SpecError(f"unknown neck field(s) {sorted(unknown)}; valid: "
                            f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved spec as JSON-ready values (GN groups made explicit)."""
        if self.family is Family.CUSTOM:  # the factory decides norms and activations
            return {
                "family": self.family.value,
                "factory": self.factory,
                "in_channels": list(self.in_channels),
                "out_channels": self.out_channels,
                "input_size": list(self.input_size),
                "strides": self.strides,
            }
        return {
            "family": self.family.value,
            "in_channels": list(self.in_channels),
            "out_channels": self.out_channels,
            "norm": self.norm.value,
            "gn_groups": self.resolved_gn_groups if self.norm is Norm.GN else None,
            "act": self.act.value,
            "leaky_slope": float(self.leaky_slope),
            "input_size": list(self.input_size),
            "strides": self.strides,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> NeckSpec:
        """Inverse of :meth:`to_dict` (derived keys such as ``strides`` are ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        if kwargs.get("family") == Family.CUSTOM.value:
            kwargs.setdefault("norm", Norm.NONE)
            kwargs.setdefault("act", Activation.NONE)
        if name is not None:
            kwargs["name"] = name
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise SpecError(f"incomplete neck spec: {exc}") from None


def _int_tuple(values: Any, what: str) -> tuple[int, ...]:
    try:
        items = list(values)
    except TypeError:
        raise SpecError(f"{what} must be a list of integers, got {values!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise SpecError(f"{what} must be a list of integers, got {items!r}")
    return tuple(items)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"640x480"`` (H x W) or ``"640"`` (square) into ``(H, W)``.

    Example:
        >>> parse_size("640x480")
        (640, 480)
    """
    raw = text.strip().lower()
    parts = raw.split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(
            f"malformed input size {text!r}; expected HxW like 640x480, or one number like 640"
        )
    h, w = (int(p) for p in parts)
    if h <= 0 or w <= 0:
        raise InputError(f"input size {text!r} must be positive, e.g. 640x480")
    return h, w


def parse_channels(text: str) -> tuple[int, ...]:
    """Parse ``"64,128,256"`` into ``(64, 128, 256)``."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(
            f"malformed channel list {text!r}; expected comma-separated integers like 64,128,256"
        ) from None
    return values
