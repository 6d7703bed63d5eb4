"""Verification options as one validated value (torch-free).

:class:`VerifyOptions` holds everything that decides whether ONNX Runtime agrees with
PyTorch: the tolerances (each a :class:`Tolerance`, a default plus per-output values in
Polygraphy's syntax, ``--atol 1e-4 p5:1e-3``), the error statistic, the number of seeded
trials and the execution provider. It is checked once, when it is made.

The rule, per output: with the element excess ``e = |ort - torch| - rtol * |torch|``, the
output passes when ``stat(e) <= atol``. With ``elemwise`` (the default) ``stat`` is the
maximum, i.e. every element must satisfy ``|ort - torch| <= atol + rtol * |torch|``, which
is ``numpy.isclose``'s rule; ``mean`` and ``median`` check that statistic instead.
This is stricter than Polygraphy's comparator, which fails an element only when it breaks
both tolerances. ``stat(e)`` (at least 0) is reported as the smallest passing ``atol``.

The default tolerances depend on the file's :class:`Precision` (:data:`PRECISION_DEFAULTS`):
an fp16 or int8 file is compared with the fp32 PyTorch module it came from, and its error
is that of the reduced precision, not of the export. A tolerance the user gives wins over
the precision's default; one given only per output (``--atol p5:1e-3``) keeps the
precision's default for the other outputs.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from necktool.errors import InputError
from necktool.spec.fields import BadValue, is_int, is_number, parse_float_text
from necktool.spec.precision import Precision

DEFAULT_ATOL = 1e-4  # fp32 (see PRECISION_DEFAULTS for fp16 and int8)
DEFAULT_RTOL = 1e-4
DEFAULT_TRIALS = 3
MAX_TRIALS = 100
DEFAULT_PROVIDER = "CPUExecutionProvider"
_OUTPUT_NAME = re.compile(r"[A-Za-z_][\w.\-/]*")
_PROVIDER = re.compile(r"[A-Za-z][A-Za-z0-9]*")
MAX_TOLERANCE = 1e6








#: Default ``(atol, rtol)`` per precision, against the fp32 PyTorch module. Measured on
#: every preset at its default size and verification's two odd sizes (seeded weights with
#: randomised norms, 3 trials per case; ``python scripts/precision_table.py``;
#: docs/explanation/verification.md): the largest max abs error was 3.0e-5 (fp32), 6.1e-3
#: (fp16) and 2.6
#: (int8, insightface_scrfd_500m, whose norm-free outputs have an RMS of 3.1 against 0.8
#: for the seed tiers), the largest smallest-passing atol at these rtols 1.0e-5, 4.5e-3
#: and 1.17. The defaults leave a margin of about 1.7x (int8) to 10x (fp32) over that,
#: while a damaged weight, a broken norm or int8 kernels that saturate (4.3 on the same
#: neck) are above them.
PRECISION_DEFAULTS: dict[Precision, tuple[float, float]] = {
    Precision.FP32: (1e-4, 1e-4),
    Precision.FP16: (1e-2, 1e-2),
    Precision.INT8: (2.0, 0.1),
}




#: The fp32 default ``atol`` is relative to each output's size: an output passes when every
#: element has ``|ort - torch| <= atol * max(1, RMS(torch)) + rtol * |torch|``. float32
#: rounding errors grow with the values that flow through the graph (about 6e-8 of each
#: value per operation, summed over a convolution's terms), so an absolute 1e-4 that holds
#: for outputs of RMS 1 fails an exact export whose outputs are large:
#: insightface_scrfd_34g with weights of standard deviation 0.1 gives max |ort - torch|
#: 1.3e-3 at 124.9 dB SQNR. Scaled by the RMS the rule keeps its margin (a relative error
#: of 1e-4 of the output's RMS is still 80 dB SQNR), while a damaged weight, whose error is
#: a sizeable part of the output, still fails. A ``--atol`` the user gives is absolute.
FP32_SCALED = True


class ErrorStat(enum.StrEnum):
    """Which statistic of the element excess is held to ``atol``."""

    ELEMWISE = "elemwise"  # every element (the maximum)
    MEAN = "mean"
    MEDIAN = "median"

    def rule(self, who: str = "ort") -> str:
        """When an output passes under this statistic, in words (captions, help); ``who``
        names the runtime whose outputs are compared with torch's."""
        if self is ErrorStat.ELEMWISE:
            return f"every element has |{who} - torch| <= atol + rtol * |torch|"
        return (f"the {self.value} over its elements of |{who} - torch| - rtol * |torch| is "
                f"<= atol (and no element is NaN/Inf)")


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """A default tolerance plus per-output overrides (``p5:1e-3``).

    Example:
        >>> t = Tolerance.parse(["1e-4", "p5:1e-3"], "atol")
        >>> t.for_output("p3"), t.for_output("p5"), str(t)
        (0.0001, 0.001, '0.0001 p5:0.001')
    """

    default: float
    per_output: tuple[tuple[str, float], ...] = ()
    #: False when the default was not given (``p5:1e-3`` alone, or no tolerance at all):
    #: :meth:`VerifyOptions.resolved` then puts the file's precision's default there.
    given: bool = dataclasses.field(default=True, compare=False)

    def __post_init__(self) -> None:
        for value in (self.default, *(v for _, v in self.per_output)):
            if not is_number(value) or not math.isfinite(value) or not 0 <= value <= MAX_TOLERANCE:
                raise InputError(f"a tolerance must be a number from 0 to {MAX_TOLERANCE:g}, "
                                 f"got {value!r}")
        names = [n for n, _ in self.per_output]
        if len(set(names)) != len(names):
            raise InputError(f"an output is given two tolerances: {names}")

    def for_output(self, name: str) -> float:
        return next((v for n, v in self.per_output if n == name), self.default)

    def filled(self, default: float) -> Tolerance:
        """This tolerance with ``default`` as its default unless one was given."""
        return self if self.given else Tolerance(default, self.per_output)

    def check_outputs(self, outputs: Iterable[str], what: str) -> None:
        """Raise unless every per-output name is one of ``outputs``."""
        valid = list(outputs)
        unknown = [n for n, _ in self.per_output if n not in valid]
        if unknown:
            raise InputError(f"--{what} names output {unknown[0]!r}, which this model does not "
                             f"have; outputs: {', '.join(valid)}")

    def __str__(self) -> str:
        return " ".join([f"{self.default:g}", *(f"{n}:{v:g}" for n, v in self.per_output)])

    def to_json(self) -> Any:
        if not self.per_output:
            return self.default
        return {"default": self.default, **dict(self.per_output)}

    @classmethod
    def of(cls, value: float | str | Sequence[str] | Tolerance, what: str) -> Tolerance:
        if isinstance(value, Tolerance):
            return value
        if isinstance(value, str):
            return cls.parse([value], what)
        if isinstance(value, (int, float)):
            return cls(value)  # __post_init__ refuses booleans, NaN and negatives
        return cls.parse(list(value), what)

    @classmethod
    def parse(cls, items: Sequence[str], what: str) -> Tolerance:
        """Parse Polygraphy-style items: a bare value is the default, ``NAME:VALUE`` one
        output's. Items may also be separated by spaces or commas within one string."""
        words = [w for item in items for w in re.split(r"[\s,]+", item.strip()) if w]
        expected = (f"VALUE and/or OUTPUT:VALUE items like '1e-4 p5:1e-3' (0 to "
                    f"{MAX_TOLERANCE:g})")
        default: float | None = None
        per_output: list[tuple[str, float]] = []
        for word in words:
            name, sep, number = word.rpartition(":")
            try:
                value = parse_float_text(number, expected)
            except BadValue:
                raise InputError(f"--{what}: cannot read {word[:40]!r}; expected {expected}") \
                    from None
            if not sep:
                if default is not None:
                    raise InputError(f"--{what}: two default values ({default:g} and "
                                     f"{value:g}); give one bare value, others as OUTPUT:VALUE")
                default = value
            elif not _OUTPUT_NAME.fullmatch(name):
                raise InputError(f"--{what}: {name[:40]!r} is not an output name; expected "
                                 f"{expected}")
            else:
                per_output.append((name, value))
        if not words:
            raise InputError(f"--{what}: no value; expected {expected}")
        fallback = DEFAULT_ATOL if what == "atol" else DEFAULT_RTOL
        try:
            return cls(fallback if default is None else default, tuple(per_output),
                       given=default is not None)
        except InputError as exc:
            raise InputError(f"--{what}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class VerifyOptions:
    """How ONNX Runtime is compared with PyTorch; validated once, here.

    ``atol`` and ``rtol`` accept a number, a :class:`Tolerance` or Polygraphy-style text.

    Example:
        >>> VerifyOptions(atol="1e-4 p5:1e-3", trials=1).atol.for_output("p5")
        0.001
    """

    atol: Tolerance = Tolerance(DEFAULT_ATOL, given=False)
    rtol: Tolerance = Tolerance(DEFAULT_RTOL, given=False)
    error_stat: ErrorStat = ErrorStat.ELEMWISE
    trials: int = DEFAULT_TRIALS
    provider: str = DEFAULT_PROVIDER
    #: ``atol`` scales with each output's magnitude: ``atol * max(1, RMS(torch output))``
    #: (the fp32 default, see :data:`FP32_SCALED`); set by :meth:`resolved`.
    atol_scaled: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "atol", Tolerance.of(self.atol, "atol"))
        object.__setattr__(self, "rtol", Tolerance.of(self.rtol, "rtol"))
        try:
            object.__setattr__(self, "error_stat", ErrorStat(self.error_stat))
        except ValueError:
            raise InputError(f"error statistic {self.error_stat!r} is not one of "
                             f"{', '.join(s.value for s in ErrorStat)}") from None
        if not is_int(self.trials) \
                or not 1 <= self.trials <= MAX_TRIALS:
            raise InputError(f"trials must be an integer from 1 to {MAX_TRIALS}, "
                             f"got {self.trials!r}")
        object.__setattr__(self, "provider", provider_name(self.provider))

    def tolerances(self, output: str) -> tuple[float, float]:
        """``(atol, rtol)`` for one output."""
        return self.atol.for_output(output), self.rtol.for_output(output)

    def check_outputs(self, outputs: Sequence[str]) -> None:
        self.atol.check_outputs(outputs, "atol")
        self.rtol.check_outputs(outputs, "rtol")

    def resolved(self, precision: Precision) -> VerifyOptions:
        """These options with ``precision``'s default tolerances wherever none was given."""
        atol, rtol = PRECISION_DEFAULTS[precision]
        scaled = self.atol_scaled or (FP32_SCALED and precision is Precision.FP32
                                      and not self.atol.given)
        return dataclasses.replace(self, atol=self.atol.filled(atol),
                                   rtol=self.rtol.filled(rtol), atol_scaled=scaled)

    def replace(self, **changes: Any) -> VerifyOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"atol": self.atol.to_json(), "atol_scaled": self.atol_scaled,
                "rtol": self.rtol.to_json(),
                "error_stat": self.error_stat.value, "trials": self.trials,
                "provider": self.provider}


def provider_name(name: str) -> str:
    """Check that ``name`` looks like a provider (``cpu``, ``cuda``, ``CPUExecutionProvider``);
    whether ONNX Runtime has it here is checked when a session is opened."""
    if not isinstance(name, str) or not _PROVIDER.fullmatch(name.strip()):
        raise InputError(f"ONNX Runtime provider {str(name)[:40]!r} is not a provider name; "
                         "e.g. cpu, cuda or CPUExecutionProvider")
    return name.strip()


