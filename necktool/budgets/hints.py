"""Budget hints: limits looser than they need be, and baseline entries gone stale
(torch-free).

A limit with much headroom gates nothing: the neck can grow by that much unnoticed. For
each limit whose headroom is over :data:`THRESHOLD_PCT`, the hint is the limit that
leaves :data:`MARGIN_PCT` over the measured figure, rounded up to three significant
digits (so it reads like a limit a person writes, and still passes, exactly). A baseline
entry no config entry produces any more is stale. Neither fails a check unless the check
is strict.

Example:
    >>> suggested_limit(583_700_000, 10**9, 3.0)
    0.602
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol, TypeVar

from necktool.budgets.config import METRIC
from necktool.report import Block, Column, Note, num, table


class CheckedReport(Protocol):
    """What the hints read of a :class:`~necktool.budgets.check.CheckReport` (named by
    shape, since the report itself holds its hints)."""

    @property
    def entries(self) -> Sequence[Any]: ...

    @property
    def dropped(self) -> tuple[str, ...]: ...


R = TypeVar("R", bound=CheckedReport)
THRESHOLD_PCT = 10.0  # a limit with more headroom than this gets a hint
MARGIN_PCT = 3.0  # the hint leaves this much over the measured figure
DIGITS = 3  # significant digits of a suggested limit


def suggested_limit(count: int, scale: int, margin_pct: float = MARGIN_PCT) -> float:
    """``count / scale`` plus ``margin_pct`` percent, rounded up to :data:`DIGITS`
    significant digits; as a decimal that passes: ``count <= limit * scale`` exactly."""
    target = Fraction(count, scale) * (1 + Fraction(repr(margin_pct)) / 100)
    if target == 0:
        return 10.0 ** -DIGITS  # a limit must be positive; nothing measured needs more
    # Exact arithmetic throughout: a Decimal division would round at 28 digits, possibly
    # below the target.
    exponent = math.floor(math.log10(target.numerator) - math.log10(target.denominator))
    exponent -= DIGITS - 1
    while True:
        step = Fraction(10) ** exponent
        units = -(-target // step)  # ceil
        if units < 10 ** (DIGITS - 1):  # log10 overestimated the magnitude
            exponent -= 1
        elif units >= 10 ** DIGITS:  # or underestimated it
            exponent += 1
        else:
            break
    limit = float(Decimal(units).scaleb(exponent))
    while Fraction(repr(limit)) < target:  # a safeguard: the float must read back as passing
        units += 1
        limit = float(Decimal(units).scaleb(exponent))
    return limit


@dataclasses.dataclass(frozen=True, kw_only=True)
class TighterLimit:
    """One limit with more headroom than the threshold, and the limit suggested instead."""

    entry: str
    key: str  # where it is written: "max-gflops", "levels.P3.max-gflops"
    metric: str
    level: str | None
    limit: float
    count: int
    suggested: float

    @property
    def actual(self) -> float:
        return self.count / METRIC[self.metric].scale

    @property
    def headroom_pct(self) -> float:
        return (self.limit - self.actual) / self.limit * 100

    @property
    def suggested_headroom_pct(self) -> float:
        return (self.suggested - self.actual) / self.suggested * 100

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry, "key": self.key, "metric": self.metric,
                "level": self.level, "limit": self.limit, "actual": self.actual,
                "count": self.count, "headroom_pct": round(self.headroom_pct, 4),
                "suggested": self.suggested,
                "suggested_headroom_pct": round(self.suggested_headroom_pct, 4)}


@dataclasses.dataclass(frozen=True)
class Hints:
    """What ``check --suggest`` found: tighter limits and stale baseline entries."""

    threshold_pct: float
    margin_pct: float
    tighter: tuple[TighterLimit, ...]
    stale_baseline: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.tighter) + len(self.stale_baseline)

    def summary(self) -> str:
        return (f"{len(self.tighter)} limit(s) with more than {self.threshold_pct:g}% "
                f"headroom, {len(self.stale_baseline)} stale baseline entr"
                f"{'y' if len(self.stale_baseline) == 1 else 'ies'}")

    def to_dict(self) -> dict[str, Any]:
        return {"threshold_pct": self.threshold_pct, "margin_pct": self.margin_pct,
                "tighter": [t.to_dict() for t in self.tighter],
                "stale_baseline": list(self.stale_baseline)}

    def blocks(self) -> list[Block]:
        out: list[Block] = []
        if self.tighter:
            headers: list[str | Column] = ["budget", "key", num("limit"), num("actual"),
                                           num("headroom"), num("suggested"),
                                           num("headroom then")]
            rows = [(t.entry, t.key, f"{t.limit:g}", f"{t.actual:.4f}",
                     f"{t.headroom_pct:.1f}%", f"{t.suggested:g}",
                     f"{t.suggested_headroom_pct:.1f}%") for t in self.tighter]
            out.append(table(
                f"hints: limits with more than {self.threshold_pct:g}% headroom", headers, rows,
                caption=f"suggested = actual + {self.margin_pct:g}%, rounded up to {DIGITS} "
                        "significant digits (it passes); a loose limit lets the neck grow "
                        "unnoticed"))
        else:
            out.append(Note(f"hints: no limit has more than {self.threshold_pct:g}% headroom"))
        return out


def budget_hints(report: CheckedReport, threshold_pct: float = THRESHOLD_PCT,
                 margin_pct: float = MARGIN_PCT) -> Hints:
    """The hints of a check: each limit with more than ``threshold_pct`` headroom whose
    suggested limit is lower, and the baseline entries no config entry produces."""
    tighter = []
    for entry in report.entries:
        for check in entry.limits:
            metric = check.metric
            if check.headroom_pct <= threshold_pct:
                continue
            suggested = suggested_limit(check.count, metric.scale, margin_pct)
            if suggested >= check.limit:
                continue
            key = metric.key if check.level is None else f"levels.{check.level}.{metric.key}"
            tighter.append(TighterLimit(entry=entry.budget.name, key=key, metric=metric.name,
                                        level=check.level, limit=check.limit, count=check.count,
                                        suggested=suggested))
    return Hints(threshold_pct, margin_pct, tuple(tighter), tuple(report.dropped))


def with_hints(report: R, *, strict: bool = False, threshold_pct: float = THRESHOLD_PCT,
               margin_pct: float = MARGIN_PCT) -> R:
    """``report`` with its :class:`Hints`; ``strict`` makes any hint fail the check."""
    return dataclasses.replace(report,  # type: ignore[type-var]
                               hints=budget_hints(report, threshold_pct, margin_pct),
                               strict=strict)
