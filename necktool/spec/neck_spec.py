"""Typed neck specifications: every knob of a neck, validated in one place (torch-free).

A :class:`NeckSpec` is a frozen description of a neck. ``family`` names a registered
family (:mod:`necktool.spec.families`), which says which fields it takes; the field kinds
(:mod:`necktool.spec.fields`) check each value's type and range. Validation happens here,
before any tensor exists, so a bad value is a one-line :class:`~necktool.errors.SpecError`
instead of a shape error deep in torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from necktool.errors import InputError, SpecError
from necktool.report import size_text
from necktool.spec.families import FamilyInfo, families_taking, get_family
from necktool.spec.fields import (
    BASE_STRIDE,
    FIELD,
    MAX_INPUT_SIDE,
    MAX_LEVELS,
    MIN_LEVELS,
    Activation,
    BadValue,
    ExtraConvs,
    Norm,
    describe_value,
)
from necktool.units import UNIT, UNIT_NOTE

SEED_GN_GROUPS = 16  # the SCRFD seed starts from 16 groups and reduces until it divides
_SHOWN_DIVISORS = 12

__all__ = ["MAX_INPUT_SIDE", "Activation", "ExtraConvs", "NeckSpec", "Norm", "parse_channels",
           "parse_size"]


def retinaface_leaky_slope(out_channels: int) -> float:
    """The slope Pytorch_Retinaface's FPN picks: 0.1 for narrow necks, else 0 (ReLU)."""
    return 0.1 if out_channels <= 64 else 0.0


def seed_gn_groups(out_channels: int, start: int = SEED_GN_GROUPS) -> int:
    """The SCRFD seed's group rule: ``min(start, out)`` reduced until it divides ``out``."""
    groups = min(start, out_channels)
    while out_channels % groups:
        groups -= 1
    return groups


def _divisors(n: int) -> str:
    """The first divisors of ``n``, in bounded time (n is at most MAX_CHANNELS here)."""
    found: list[int] = []
    for d in range(1, min(n, 1 << 16) + 1):
        if n % d == 0:
            found.append(d)
            if len(found) > _SHOWN_DIVISORS:
                return ", ".join(map(str, found[:_SHOWN_DIVISORS])) + ", ..."
    return ", ".join(map(str, found))


@dataclasses.dataclass(frozen=True)
class NeckSpec:
    """A complete, validated description of one neck.

    Attributes:
        family: Which registered family builds it (``fpn``, ``pafpn``, ``custom``...).
        in_channels: Backbone channels per input level, finest (stride 8) first.
        out_channels: Channels of every output level.
        norm: Normalisation after each conv.
        act: Activation after each norm.
        leaky_slope: Negative slope when ``act`` is ``leaky_relu``.
        gn_groups: GroupNorm groups; ``None`` applies the seed's rule
            (:func:`seed_gn_groups`). An explicit value must divide ``out_channels``.
        input_size: Default image size ``(H, W)`` the neck is profiled at.
        name: The preset this spec came from, if any.
        factory: For the ``custom`` family: the import path ``package.module:factory``.
        num_outs: Output levels (mmdetection families); ``None`` means one per input
            level. Levels beyond the inputs are extra levels P6, P7, ... whose stride
            keeps doubling.
        extra_convs: What computes the extra levels (mmdetection's ``add_extra_convs``).
        relu_before_extra_convs: ReLU before every extra conv after the first.

    A field the family does not take must keep its default; giving one is an error
    naming the families that take it.

    Example:
        >>> spec = NeckSpec("pafpn", (48, 48, 80), 40, Norm.GN, Activation.RELU)
        >>> spec.level_sizes((640, 480))
        [(80, 60), (40, 30), (20, 15)]
    """

    family: str
    in_channels: tuple[int, ...]
    out_channels: int
    norm: Norm = Norm.NONE
    act: Activation = Activation.NONE
    leaky_slope: float = 0.1
    gn_groups: int | None = None
    input_size: tuple[int, int] = (640, 640)
    name: str | None = None
    factory: str | None = None
    num_outs: int | None = None
    extra_convs: ExtraConvs = ExtraConvs.NONE
    relu_before_extra_convs: bool = False

    def __post_init__(self) -> None:
        info = get_family(self.family)
        object.__setattr__(self, "family", info.name)
        for field in dataclasses.fields(self):
            desc = FIELD.get(field.name)
            value = getattr(self, field.name)
            if desc is None or value is None:
                continue
            try:
                object.__setattr__(self, field.name, desc.check(value))
            except BadValue as exc:
                raise SpecError(f"{field.name}: {exc.message(describe_value(value))}") \
                    from None
            if not info.takes(field.name) and getattr(self, field.name) != field.default:
                raise _not_taken(field.name, info, self.label)
        self._validate(info)

    def _validate(self, info: FamilyInfo) -> None:
        if info.needs_factory != (self.factory is not None):
            raise SpecError("a custom neck needs an import path (factory='package.module:attr') "
                            f"and only a custom neck takes one; got family={self.family}, "
                            f"factory={self.factory!r}")
        chans = list(self.in_channels)
        if not MIN_LEVELS <= len(chans) <= MAX_LEVELS:
            raise SpecError(
                f"in_channels has {len(chans)} level(s) {chans}; give {MIN_LEVELS} to "
                f"{MAX_LEVELS} channel counts, finest level first, e.g. 64,128,256"
            )
        if self.num_outs is not None and self.num_outs < len(chans):
            raise SpecError(
                f"num_outs={self.num_outs} is fewer than the {len(chans)} input levels "
                f"{chans}; give at least {len(chans)}, or pass only the levels the neck uses "
                "(mmdetection's start_level drops the finest backbone outputs)")
        if self.gn_groups is not None and self.norm is Norm.GN \
                and self.out_channels % self.gn_groups:
            raise SpecError(
                f"gn_groups={self.gn_groups} does not divide out_channels={self.out_channels}; "
                f"valid: {_divisors(self.out_channels)}"
            )
        self.check_size(self.input_size)

    def check_size(self, input_size: Sequence[int]) -> None:
        """Raise :class:`SpecError` unless this neck can run at ``input_size`` ``(H, W)``."""
        text = size_text(input_size)
        if len(input_size) != 2:
            raise SpecError(f"input_size must be (H, W), got {list(input_size)}")
        if any(s > MAX_INPUT_SIDE for s in input_size):
            raise SpecError(f"input size {text} is too large; each side must be at most "
                            f"{MAX_INPUT_SIDE}")
        coarsest = self.input_strides[-1]
        if any(s < coarsest for s in input_size):
            raise SpecError(f"input size {text} is smaller than the coarsest stride {coarsest} "
                            f"(level {self.level_names[self.num_inputs - 1]}); use at least "
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
    def info(self) -> FamilyInfo:
        return get_family(self.family)

    @property
    def label(self) -> str:
        """How messages and reports name this neck: the preset, import path or family."""
        return self.name or self.factory or self.family

    @property
    def num_inputs(self) -> int:
        """Backbone levels the neck takes (C3, C4, ...)."""
        return len(self.in_channels)

    @property
    def num_levels(self) -> int:
        """Output levels (P3, P4, ...): ``num_outs``, else one per input level."""
        return self.num_outs if self.num_outs is not None else len(self.in_channels)

    @property
    def num_extra_levels(self) -> int:
        """Output levels beyond the input levels (P6, P7, ... after three inputs)."""
        return self.num_levels - self.num_inputs

    @property
    def strides(self) -> list[int]:
        """Stride of each output level."""
        return [BASE_STRIDE * 2**i for i in range(self.num_levels)]

    @property
    def input_strides(self) -> list[int]:
        return [BASE_STRIDE * 2**i for i in range(self.num_inputs)]

    @property
    def level_names(self) -> list[str]:
        """``P3``, ``P4``, ...: the level's stride is ``2**k`` for ``Pk``."""
        return [f"P{3 + i}" for i in range(self.num_levels)]

    @property
    def input_names(self) -> list[str]:
        return [f"c{3 + i}" for i in range(self.num_inputs)]

    @property
    def output_names(self) -> list[str]:
        return [n.lower() for n in self.level_names]

    @property
    def resolved_gn_groups(self) -> int:
        return self.gn_groups if self.gn_groups is not None else seed_gn_groups(self.out_channels)

    def level_sizes(self, input_size: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """Spatial size of each output level: ``ceil(image / stride)``."""
        return _sizes(input_size or self.input_size, self.strides)

    def input_sizes(self, input_size: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """Spatial size of each input level: ``ceil(image / stride)``."""
        return _sizes(input_size or self.input_size, self.input_strides)

    def replace(self, **overrides: Any) -> NeckSpec:
        """Return a copy with ``overrides`` applied; ``None`` values are dropped.

        Dropping ``None`` is what lets unset CLI flags leave preset fields alone. A field
        the family does not take is an error naming the families that do.
        """
        changes = {k: v for k, v in overrides.items() if v is not None}
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise SpecError(f"unknown neck field(s) {unknown}; valid: {', '.join(names)}")
        info = self.info
        for key in changes:
            if key in FIELD and not info.takes(key):
                raise _not_taken(key, info, self.label)
        if not changes:  # a spec is validated when made: nothing to check again
            return self
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved spec as JSON-ready values (GN groups made explicit).

        Holds the family, the factory of a custom neck, every field the family takes
        (``num_outs`` resolved to the output level count), and the output strides.
        """
        out: dict[str, Any] = {"family": self.family}
        if self.factory is not None:
            out["factory"] = self.factory
        for name in FIELD:
            if self.info.takes(name):
                value = getattr(self, name)
                if name == "gn_groups":
                    value = self.resolved_gn_groups if self.norm is Norm.GN else None
                elif name == "num_outs":
                    value = self.num_levels
                out[name] = None if value is None else FIELD[name].kind.to_json(value)
        out["strides"] = self.strides
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> NeckSpec:
        """Inverse of :meth:`to_dict` (derived keys such as ``strides`` are ignored).

        Raises:
            SpecError: not a mapping, an unknown family, a missing or malformed field.
        """
        if not isinstance(data, Mapping):
            raise SpecError(f"a neck spec must be a mapping, got {describe_value(data)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields and v is not None}
        if name is not None:
            kwargs["name"] = name
        for required in ("family", "in_channels", "out_channels"):
            if required not in kwargs:
                raise SpecError(f"incomplete neck spec: no {required!r}")
        if not isinstance(kwargs["family"], str):
            raise SpecError(f"family: expected a string, got {describe_value(kwargs['family'])}")
        for key in ("name", "factory"):
            if key in kwargs and not isinstance(kwargs[key], str):
                raise SpecError(f"{key}: expected a string, got {describe_value(kwargs[key])}")
        return cls(**kwargs)


def _sizes(size: tuple[int, int], strides: list[int]) -> list[tuple[int, int]]:
    h, w = size
    return [(-(-h // s), -(-w // s)) for s in strides]


def _not_taken(field: str, info: FamilyInfo, label: str) -> SpecError:
    takers = families_taking(field)
    flag = FIELD[field].flag
    return SpecError(f"{flag} does not apply to {label} (family {info.name}); the families "
                     f"that take it: {', '.join(takers) or 'none'}")


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"640x480"`` (H x W) or ``"640"`` (square) into ``(H, W)``.

    Example:
        >>> parse_size("640x480")
        (640, 480)
    """
    try:
        return FIELD["input_size"].kind.from_text(text)
    except BadValue as exc:
        raise InputError(f"malformed input size {text!r}; {exc.reason()}") from None


def parse_channels(text: str) -> tuple[int, ...]:
    """Parse ``"64,128,256"`` into ``(64, 128, 256)``."""
    try:
        return FIELD["in_channels"].kind.from_text(text)
    except BadValue as exc:
        raise InputError(f"malformed channel list {text!r}; {exc.reason()}") from None


def neck_header(spec: NeckSpec, input_size: Sequence[int], batch: int) -> dict[str, Any]:
    """The keys every per-neck JSON result starts with, in one order: ``neck``, ``family``,
    ``config`` (the fully resolved spec), ``input_size``, ``batch``, ``unit``."""
    return {
        "neck": spec.label,
        "family": spec.family,
        "config": spec.to_dict(),
        "input_size": list(input_size),
        "batch": batch,
        "unit": UNIT,
        "unit_note": UNIT_NOTE,
    }
