"""Build flags, described once (torch-free).

Every knob of a neck is one :class:`BuildFlag`: its CLI flag, its TOML key, its value
kind (which parses command-line text and checks TOML/JSON values, with the range), its
help text and metavar. The CLI options, the budget schema and the validation messages
are all produced from :data:`FIELDS`; which families take a field is declared by each
family (:mod:`necktool.spec.families`), never here.

Numbers are parsed from ASCII digits only and range-checked where they enter, so a
Unicode digit, a 5,000-digit integer, NaN or an overflowing float is a clear error, never
an exception deep in Python or torch.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from necktool.errors import InputError
from necktool.report import size_text

T = TypeVar("T")

BASE_STRIDE = 8  # input level 0 (C3/P3) has stride 8; level i has stride 8 * 2**i
MIN_LEVELS = 2
MAX_LEVELS = 6  # P3..P8; deeper pyramids are not used by face detectors
MAX_INPUT_SIDE = 8192  # beyond this the feature maps alone need tens of GiB
MAX_CHANNELS = 16384
MAX_BATCH = 1024
MAX_DIGITS = 12  # longer integer text is refused before int() sees it

_INT = re.compile(r"[+-]?[0-9]+")  # ASCII only: str.isdigit() also accepts '²' and '٣'
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")


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


class ExtraConvs(enum.StrEnum):
    """Where mmdetection's extra output levels (beyond the inputs) come from.

    ``none``: a max-pool (kernel 1, stride 2) of the previous output, no weights;
    ``on_input`` / ``on_lateral`` / ``on_output``: a 3x3 stride-2 conv on the coarsest
    input, its lateral or its output, then on the previous output for further levels.
    """

    NONE = "none"
    ON_INPUT = "on_input"
    ON_LATERAL = "on_lateral"
    ON_OUTPUT = "on_output"


class BadValue(ValueError):
    """A value of the wrong kind; ``expected`` says what would be valid."""

    def __init__(self, expected: str, note: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.note = note

    def message(self, given: str) -> str:
        """``expected X, got <given> (note)``."""
        return f"expected {self.expected}, got {given}" + (f" ({self.note})" if self.note
                                                          else "")

    def reason(self) -> str:
        """``expected X (note)``, for when the value is already quoted."""
        return f"expected {self.expected}" + (f" ({self.note})" if self.note else "")


def toml_type(value: Any) -> str:
    """The TOML (or JSON) name of a Python value's type."""
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "float", str: "string", list: "array", tuple: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def describe_value(value: Any, limit: int = 60) -> str:
    """A value as TOML would spell it, with its type: ``string "0.3"``, ``integer 0``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, int):
        digits = len(str(abs(value))) if abs(value) < 10**MAX_DIGITS else None
        text = str(value) if digits is not None else f"an integer of {value.bit_length()} bits"
    else:
        try:
            text = repr(value)
        except (ValueError, RecursionError):  # huge ints inside a list, deep nesting
            text = "..."
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return f"{toml_type(value)} {text}"


def describe_text(text: str, limit: int = 40) -> str:
    """Command-line text, quoted and shortened, with control characters escaped."""
    shown = text if len(text) <= limit else text[:limit - 3] + "..."
    return repr(shown)


def parse_int_text(text: str, expected: str) -> int:
    """An integer from ASCII digits only, at most :data:`MAX_DIGITS` of them."""
    raw = text.strip()
    if not _INT.fullmatch(raw):
        raise BadValue(expected)
    if len(raw.lstrip("+-")) > MAX_DIGITS:
        raise BadValue(expected, f"{len(raw.lstrip('+-'))} digits")
    return int(raw)


def parse_float_text(text: str, expected: str) -> float:
    raw = text.strip()
    if not _FLOAT.fullmatch(raw):
        raise BadValue(expected)
    return float(raw)




def is_int(value: Any) -> bool:
    """An integer, not a bool (``True`` is an ``int`` to Python, never to necktool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An integer or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Kind(Generic[T]):
    """How a field's values are written and checked."""

    metavar: str = "VALUE"

    def from_text(self, text: str) -> T:
        """Parse command-line text into a checked value (raises :class:`BadValue`)."""
        raise NotImplementedError

    def check(self, value: Any) -> T:
        """Check a typed value (TOML, JSON, Python) and normalise it (raises BadValue)."""
        raise NotImplementedError

    def to_json(self, value: T) -> Any:
        return value

    def to_text(self, value: T) -> str:
        """``value`` as command-line text that :meth:`from_text` reads back."""
        return str(value)


@dataclasses.dataclass(frozen=True)
class IntKind(Kind[int]):
    low: int = 1
    high: int = MAX_CHANNELS
    metavar: str = "N"

    @property
    def expected(self) -> str:
        return "a positive integer" if self.low == 1 else f"an integer of at least {self.low}"

    def from_text(self, text: str) -> int:
        return self.check(parse_int_text(text, self.expected))

    def check(self, value: Any) -> int:
        if not is_int(value) or value < self.low:
            raise BadValue(self.expected)
        if value > self.high:
            raise BadValue(f"{self.expected} up to {self.high:,}")
        return int(value)


@dataclasses.dataclass(frozen=True)
class FloatKind(Kind[float]):
    low: float = 0.0
    high: float = 1.0
    metavar: str = "X"

    @property
    def expected(self) -> str:
        return f"a number from {self.low:g} to {self.high:g}"

    def from_text(self, text: str) -> float:
        return self.check(parse_float_text(text, self.expected))

    def check(self, value: Any) -> float:
        if not is_number(value):
            raise BadValue(self.expected)
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise BadValue(self.expected)
        return float(value)

    def to_text(self, value: float) -> str:
        return repr(float(value)).removesuffix(".0")


class ChoiceKind(Kind[T]):
    def __init__(self, choices: type[enum.StrEnum], metavar: str | None = None) -> None:
        self.choices = choices
        self.metavar = metavar or "[" + "|".join(c.value for c in choices) + "]"

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(json.dumps(c.value) for c in self.choices)

    def from_text(self, text: str) -> T:
        return self.check(text.strip())

    def check(self, value: Any) -> T:
        if isinstance(value, self.choices):
            return value  # type: ignore[return-value]
        if not isinstance(value, str) or value not in {c.value for c in self.choices}:
            raise BadValue(self.expected)
        return self.choices(value)  # type: ignore[return-value]

    def to_json(self, value: T) -> Any:
        return str(value)


class BoolKind(Kind[bool]):
    """A switch, written as a value like every other field: ``--flag true`` on the command
    line (also yes/no, on/off, 1/0), ``true``/``false`` in TOML. A value rather than a
    ``--flag/--no-flag`` pair, so that an unset flag can keep the preset's setting either
    way with one option."""

    metavar = "[true|false]"
    expected = "true or false"

    def from_text(self, text: str) -> bool:
        word = text.strip().lower()
        if word in {"true", "yes", "1", "on"}:
            return True
        if word in {"false", "no", "0", "off"}:
            return False
        raise BadValue(self.expected)

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise BadValue(self.expected)
        return value

    def to_text(self, value: bool) -> str:
        return "true" if value else "false"


@dataclasses.dataclass(frozen=True)
class ChannelsKind(Kind[tuple[int, ...]]):
    """Channel counts per level, finest first: ``64,128,256`` or ``[64, 128, 256]``."""

    high: int = MAX_CHANNELS
    max_count: int = 64  # the level count itself is the spec's rule; this bounds parsing
    metavar: str = "C3,C4,..."
    expected_text: str = "comma-separated positive integers like 64,128,256"
    expected: str = "an array of positive integers like [64, 128, 256]"

    def from_text(self, text: str) -> tuple[int, ...]:
        parts = text.split(",")
        if len(parts) > self.max_count:
            raise BadValue(self.expected_text, f"{len(parts)} items")
        values = tuple(parse_int_text(p, self.expected_text) for p in parts)
        if not all(v > 0 for v in values):
            raise BadValue(self.expected_text)
        return self._bounded(values, self.expected_text)

    def check(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)) or len(value) > self.max_count or \
                not all(is_int(v) and v > 0 for v in value):
            raise BadValue(self.expected)
        return self._bounded(tuple(int(v) for v in value), self.expected)

    def _bounded(self, values: tuple[int, ...], expected: str) -> tuple[int, ...]:
        too_big = [v for v in values if v > self.high]
        if too_big:
            raise BadValue(expected, f"{too_big[0]:,} channels; at most {self.high:,} per level")
        return values

    def to_json(self, value: tuple[int, ...]) -> Any:
        return list(value)

    def to_text(self, value: tuple[int, ...]) -> str:
        return ",".join(map(str, value))


@dataclasses.dataclass(frozen=True)
class SizeKind(Kind[tuple[int, int]]):
    """An image size ``(H, W)``: ``640x480``, ``640`` (square), or ``[H, W]`` in TOML."""

    high: int = MAX_INPUT_SIDE
    metavar: str = "HxW"
    expected_text: str = "HxW like 640x480, or one number like 640"
    expected: str = 'a size like "640x480", an integer for square, or [H, W]'

    def from_text(self, text: str) -> tuple[int, int]:
        parts = text.strip().lower().split("x")
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2:
            raise BadValue(self.expected_text)
        h, w = (parse_int_text(p, self.expected_text) for p in parts)
        return self._bounded((h, w), self.expected_text)

    def check(self, value: Any) -> tuple[int, int]:
        if isinstance(value, str):
            try:
                return self.from_text(value)
            except BadValue as exc:
                raise BadValue(self.expected, exc.note) from None
        if is_int(value):
            return self._bounded((value, value), self.expected)
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(is_int, value)):
            return self._bounded((value[0], value[1]), self.expected)
        return self._fail()

    def _fail(self) -> tuple[int, int]:
        raise BadValue(self.expected)

    def _bounded(self, size: tuple[int, int], expected: str) -> tuple[int, int]:
        if min(size) <= 0:
            raise BadValue(expected, "sides must be positive")
        if max(size) > self.high:
            raise BadValue(expected, f"each side must be at most {self.high}")
        return int(size[0]), int(size[1])

    def to_json(self, value: tuple[int, int]) -> Any:
        return list(value)

    def to_text(self, value: tuple[int, int]) -> str:
        return size_text(value)


@dataclasses.dataclass(frozen=True)
class BuildFlag:
    """One build knob, described once.

    Attributes:
        name: The :class:`~necktool.spec.neck_spec.NeckSpec` attribute (or run setting, for batch).
        flag: The CLI flag; the TOML key is the flag without its dashes.
        kind: Parses and checks values, with the range.
        help: One sentence for ``--help`` (the families that take it are appended).
        in_spec: Whether it is a NeckSpec field (``batch`` is a run setting instead).
    """

    name: str
    flag: str
    kind: Kind[Any]
    help: str
    in_spec: bool = True

    @property
    def key(self) -> str:
        """The TOML key (kebab-case, like the flag)."""
        return self.flag.removeprefix("--")

    @property
    def metavar(self) -> str:
        return self.kind.metavar

    def cli_args(self, value: Any) -> list[str]:
        """The command-line words that set this field to ``value``."""
        return [self.flag, self.kind.to_text(value)]

    def parse_text(self, text: str) -> Any:
        """Command-line text -> checked value; raises :class:`InputError` naming the flag."""
        try:
            return self.kind.from_text(text)
        except BadValue as exc:
            raise InputError(f"{self.flag}: {exc.message(describe_text(text))}") from None

    def check(self, value: Any) -> Any:
        """A typed value -> checked value; raises :class:`BadValue` (the caller adds where)."""
        return self.kind.check(value)


FIELDS: tuple[BuildFlag, ...] = (
    BuildFlag("in_channels", "--in-channels", ChannelsKind(),
              "Backbone channels per input level, finest (stride 8) first; the count sets "
              "the number of levels."),
    BuildFlag("out_channels", "--out-channels", IntKind(),
              "Channels of every output level."),
    BuildFlag("norm", "--norm", ChoiceKind(Norm),
              "Normalisation after each conv (none: the conv gets a bias)."),
    BuildFlag("gn_groups", "--gn-groups", IntKind(metavar="G"),
              "GroupNorm groups; must divide --out-channels. Default: the SCRFD seed's rule."),
    BuildFlag("act", "--act", ChoiceKind(Activation, metavar="ACT"),
              "Activation after each norm: relu, leaky_relu or none."),
    BuildFlag("leaky_slope", "--leaky-slope", FloatKind(metavar="SLOPE"),
              "Negative slope for --act leaky_relu."),
    BuildFlag("num_outs", "--num-outs", IntKind(low=MIN_LEVELS, high=MAX_LEVELS),
              "Output levels; those beyond the input levels are extra levels P6, P7, ... "
              "(strides 64, 128, ...). Default: one per input level."),
    BuildFlag("extra_convs", "--extra-convs", ChoiceKind(ExtraConvs, metavar="MODE"),
              "What computes the extra levels (mmdetection's add_extra_convs): none "
              "(max-pool), or a 3x3 stride-2 conv on_input, on_lateral or on_output."),
    BuildFlag("relu_before_extra_convs", "--relu-before-extra-convs", BoolKind(),
              "Apply ReLU before every extra conv after the first."),
    BuildFlag("input_size", "--input-size", SizeKind(),
              "Image size as HxW (640x480) or one number for square. Default: the preset's."),
    BuildFlag("batch", "--batch", IntKind(high=MAX_BATCH), "Batch size. Default: 1.",
              in_spec=False),
)
FIELD = {f.name: f for f in FIELDS}
SPEC_FIELDS = tuple(f.name for f in FIELDS if f.in_spec)


def field_for_key(key: str) -> BuildFlag | None:
    """The field whose TOML key is ``key``."""
    return next((f for f in FIELDS if f.key == key), None)


def flag_list(names: Sequence[str]) -> str:
    return ", ".join(FIELD[n].flag for n in names)
