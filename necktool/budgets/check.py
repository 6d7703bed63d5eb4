"""Checking budgets: profile each entry once, compare with its limits and a baseline.

Counts are deterministic, so comparisons are exact: an entry fails when actual > limit
(equal passes), with the limit taken as the decimal the user wrote.

Example:
    >>> from pathlib import Path
    >>> config = load_config(Path("examples/necktool.toml"), Path.cwd())
    >>> report = check_budgets(config)
    >>> bool(report), report.entries[0].budget.name
    (True, 'scrfd_10g')
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from necktool.analysis.plan import ProfilePlan
from necktool.budgets.baseline import Baseline, baseline_document
from necktool.budgets.config import (
    METRIC,
    METRICS,
    Budget,
    BudgetConfig,
    Metric,
    parse_percent,
)
from necktool.errors import ConfigError, InputError, NecktoolError
from necktool.report import Block, Column, Heading, Note, Verdict, num, size_text, table
from necktool.units import CROSS_CHECK, MEMORY_SCALE_NOTE, SCALE_NOTE, UNIT, UNIT_NOTE

if TYPE_CHECKING:
    from necktool.analysis.profiling import ProfileResult
    from necktool.budgets.cache import CachedFigures, ResultCache
    from necktool.budgets.hints import Hints
    from necktool.spec.neck_spec import NeckSpec

HINT_LIMIT = "raise the budget or reduce the neck"
HINT_BASELINE = ("reduce the neck, or if the growth is intended save a new baseline "
                 "with --save-baseline")
HEADROOM_NOTE = "headroom = (limit - actual) / limit"
CROSS_CHECKED = f"conv MACs cross-checked with {CROSS_CHECK} for every entry: equal"


def _pct(value: float, sign: str = "") -> str:
    """A percentage with two decimals, or two significant digits when smaller than that."""
    if math.isinf(value):
        return f"{sign}inf%"
    return f"{value:{sign}.2f}%" if abs(value) >= 0.01 or value == 0 else f"{value:{sign}.2g}%"


def _exact(value: float) -> Fraction:
    # repr() round-trips the decimal the user wrote, so 0.3 compares as 3/10 exactly.
    return Fraction(repr(value))


def _pair(limit: float, actual: float) -> tuple[str, str]:
    """Format limit and actual with enough decimals that unequal values never look equal."""
    digits = 4
    while digits < 12 and limit != actual and f"{limit:.{digits}f}" == f"{actual:.{digits}f}":
        digits += 1
    return f"{limit:.{digits}f}", f"{actual:.{digits}f}"


@dataclasses.dataclass(frozen=True)
class LimitCheck:
    """One limit against one measured count (``level`` is ``None`` for the whole neck)."""

    metric: Metric  # its name ("gflops") keys the limit, its base ("flops") the count
    level: str | None
    limit: float
    count: int  # the exact count (flops in fvcore units, parameters...)

    @property
    def actual(self) -> float:
        return self.count / self.metric.scale

    @property
    def passed(self) -> bool:
        return Fraction(self.count) <= _exact(self.limit) * self.metric.scale

    @property
    def headroom_pct(self) -> float:
        """``(limit - actual) / limit * 100``; negative when over."""
        return (self.limit - self.actual) / self.limit * 100

    @property
    def label(self) -> str:
        unit = self.metric.label
        return f"{self.level} {unit}" if self.level else unit

    def message(self, name: str) -> str:
        limit, actual = _pair(self.limit, self.actual)
        metric = self.metric
        unit = metric.unit_label
        what = f"level {self.level} {metric.label}" if self.level else metric.label
        over = self.actual - self.limit
        return (f"{name}: {what} {actual} exceeds the budget {limit} by {over:.4g} {unit} "
                f"({_pct(-self.headroom_pct)} over); {HINT_LIMIT}")

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric.name, "level": self.level, "limit": self.limit,
                "actual": self.actual, "count": self.count,
                "headroom_pct": round(self.headroom_pct, 4), "passed": self.passed}


@dataclasses.dataclass(frozen=True)
class BaselineCheck:
    """Growth of one total against the baseline, allowed up to ``max_increase`` percent."""

    metric: Metric  # the same kind of value as LimitCheck.metric; growth is of its base
    baseline: int
    count: int
    max_increase: float

    @property
    def change_pct(self) -> float:
        if self.baseline == 0:
            return 0.0 if self.count == 0 else math.inf
        return (self.count - self.baseline) / self.baseline * 100

    @property
    def passed(self) -> bool:
        growth = Fraction(self.count - self.baseline) * 100
        return growth <= _exact(self.max_increase) * self.baseline

    def message(self, name: str) -> str:
        return (f"{name}: {self.metric.base_label} grew {_pct(self.change_pct, '+')} "
                f"against the baseline ({self.baseline:,} -> {self.count:,}), more than the "
                f"allowed {self.max_increase:g}%; {HINT_BASELINE}")

    def to_dict(self) -> dict[str, Any]:
        change = self.change_pct
        return {"baseline": self.baseline, "actual": self.count,
                "change_pct": round(change, 4) if math.isfinite(change) else None,
                "max_increase_pct": self.max_increase, "passed": self.passed}


@dataclasses.dataclass(frozen=True)
class EntryResult(Verdict):
    """One budget entry: its profile, its limit checks and its baseline checks.

    ``in_baseline`` is ``None`` when no baseline was given, ``False`` for an entry the
    baseline does not know (its growth is not checked). ``from_cache``: the figures were
    read from the result cache (:mod:`necktool.budgets.cache`), not measured now.
    """

    budget: Budget
    profile: ProfileResult | CachedFigures
    limits: tuple[LimitCheck, ...]
    growth: tuple[BaselineCheck, ...] = ()
    in_baseline: bool | None = None
    from_cache: bool = False

    @property
    def passed(self) -> bool:
        """Every check passed, and the profile's two conv counts agree (a disagreement is
        a counting bug, so no figure of this entry can be trusted)."""
        return all(c.passed for c in self.checks) and self.profile.cross_check.agree

    @property
    def checks(self) -> list[LimitCheck | BaselineCheck]:
        """Every check of this entry: limits first, then baseline growth."""
        return [*self.limits, *self.growth]

    def counts(self) -> dict[str, int]:
        """Whole-neck counts by metric base name."""
        return {m.base: m.total(self.profile) for m in METRICS}

    def failures(self) -> list[str]:
        """One actionable message per failed check (and one if the counts disagree)."""
        out = [c.message(self.budget.name) for c in self.checks if not c.passed]
        if not self.profile.cross_check.agree:
            out.append(f"{self.budget.name}: {self.profile.cross_check.failure()}")
        return out

    def figures(self) -> dict[str, Any]:
        """What a baseline records for this entry."""
        b = self.budget
        return {"neck": b.neck, "input_size": list(b.input_size), "batch": b.batch,
                **self.counts(),
                "levels": {lv.name: {m.base: m.level(lv) for m in METRICS if m.level}
                           for lv in self.profile.levels}}

    def to_dict(self) -> dict[str, Any]:
        b = self.budget
        counts = self.counts()
        return {
            "name": b.name,
            "neck": b.neck,
            "family": b.spec.family,
            "config": b.spec.to_dict(),
            "input_size": list(b.input_size),
            "batch": b.batch,
            "passed": self.passed,
            **counts,
            **{m.name: counts[m.base] / m.scale for m in METRICS},
            "levels": [{"name": lv.name, **{m.base: m.level(lv) for m in METRICS if m.level}}
                       for lv in self.profile.levels],
            "checks": [c.to_dict() for c in self.limits],
            "cross_check": self.profile.cross_check.to_dict(),
            "baseline": None if self.in_baseline is None else
            {"known": self.in_baseline, **{c.metric.base: c.to_dict() for c in self.growth}},
            "failures": self.failures(),
            "from_cache": self.from_cache,
        }

    def rows(self, with_baseline: bool) -> list[tuple[str, ...]]:
        """Table rows: every metric of the whole neck (limited or not), then level limits.

        Cells: check, limit, actual, headroom, [vs baseline,] result.
        """
        rows: list[tuple[str, ...]] = []
        by_metric = {(c.metric.name, c.level): c for c in self.limits}
        growth = {c.metric.base: c for c in self.growth}
        for m in METRICS:
            limit = by_metric.get((m.name, None))
            grew = growth.get(m.base)
            actual = m.total(self.profile) / m.scale
            checks = [c for c in (limit, grew) if c is not None]
            result = ("PASS" if all(c.passed for c in checks) else "FAIL") if checks else "-"
            if limit is not None:
                limit_s, actual_s = _pair(limit.limit, actual)
                headroom = f"{limit.headroom_pct:.1f}%"
            else:
                limit_s, actual_s, headroom = "-", f"{actual:.4f}", "-"
            change = [self._change(grew)] if with_baseline else []
            rows.append((m.label, limit_s, actual_s, headroom, *change, result))
        for check in self.limits:
            if check.level is not None:
                limit_s, actual_s = _pair(check.limit, check.actual)
                change = [""] if with_baseline else []
                rows.append((check.label, limit_s, actual_s, f"{check.headroom_pct:.1f}%",
                             *change, "PASS" if check.passed else "FAIL"))
        return rows

    def _change(self, check: BaselineCheck | None) -> str:
        if self.in_baseline is None:
            return ""
        if check is None:  # a new entry, or a figure older baselines do not hold
            return "new" if not self.in_baseline else "-"
        return _pct(check.change_pct, "+")


@dataclasses.dataclass(frozen=True)
class CheckReport(Verdict):
    """The outcome of :func:`check_budgets`: true when every entry passed.

    Attributes:
        config: The config that was checked.
        entries: One result per budget entry, in file order.
        baseline: The baseline compared against, if any.
        dropped: Baseline names no longer in the config.
        cache: The result cache's folder, or ``None`` when no cache was used.
        hints: Looser limits and stale baseline entries (``check --suggest``), if asked.
        strict: A hint fails the check too (``--strict``).
    """

    config: BudgetConfig
    entries: tuple[EntryResult, ...]
    baseline: Baseline | None = None
    dropped: tuple[str, ...] = ()
    cache: str | None = None
    hints: Hints | None = None
    strict: bool = False

    @property
    def from_cache(self) -> int:
        """How many entries' figures came from the result cache."""
        return sum(e.from_cache for e in self.entries)

    def cross_check_note(self) -> str:
        """What was cross-checked in this run, and what was when its cache entry was
        written: never a check claimed that did not run now."""
        cached = self.from_cache
        if not cached:
            return CROSS_CHECKED
        measured = len(self.entries) - cached
        now = (f"conv MACs cross-checked with {CROSS_CHECK} now for the {measured} measured "
               f"entr{'y' if measured == 1 else 'ies'}: equal; " if measured else "")
        return (f"{now}the {cached} entr{'y' if cached == 1 else 'ies'} from the cache "
                f"{'was' if cached == 1 else 'were'} cross-checked with {CROSS_CHECK} when "
                f"{'its entry was' if cached == 1 else 'their entries were'} written (equal)")

    def cache_note(self) -> str | None:
        if self.cache is None:
            return None
        return (f"{self.from_cache} of {len(self.entries)} entries from the cache "
                f"{self.cache}; --no-cache measures every entry")

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.entries) and not self._strict_hints()

    def _strict_hints(self) -> bool:
        return self.strict and self.hints is not None and len(self.hints) > 0

    @property
    def summary(self) -> str:
        ok = sum(e.passed for e in self.entries)
        verdict = "all passed" if self.passed else f"{len(self.entries) - ok} failed"
        return f"{ok} of {len(self.entries)} budgets passed ({verdict})"

    def failures(self) -> list[tuple[EntryResult, str]]:
        return [(e, msg) for e in self.entries for msg in e.failures()]

    def warnings(self) -> list[tuple[EntryResult | None, str]]:
        """Things that weaken the gate without failing it (baseline coverage)."""
        if self.baseline is None:
            return []
        out: list[tuple[EntryResult | None, str]] = [
            (e, f"{e.budget.name}: not in the baseline {self.baseline.path}, so its growth "
                "was not checked; save a new baseline with --save-baseline")
            for e in self.entries if e.in_baseline is False]
        out.extend((None, f"{name}: stale baseline entry: in the baseline "
                          f"{self.baseline.path}, but no entry of {self.config.display_path} "
                          "produces it any more; save a new baseline with --save-baseline")
                   for name in self.dropped)
        return out

    def failure(self) -> str | None:
        if self._strict_hints() and all(e.passed for e in self.entries):
            assert self.hints is not None
            return f"--strict: {self.hints.summary()}; tighten them or drop --strict"
        return None  # the failures are part of the report on stdout

    def to_dict(self) -> dict[str, Any]:
        """Stable, JSON-ready results; every count is an exact integer."""
        return {
            "passed": self.passed,
            "config_file": self.config.display_path,
            "unit": UNIT,
            "unit_note": UNIT_NOTE,
            "scale_note": f"{SCALE_NOTE}; {MEMORY_SCALE_NOTE}",
            "baseline": self.baseline.path if self.baseline else None,
            "entries": [e.to_dict() for e in self.entries],
            "warnings": [msg for _, msg in self.warnings()],
            "cache": None if self.cache is None else
            {"directory": str(self.cache), "from_cache": self.from_cache},
            "stale_baseline": list(self.dropped),
            **({"hints": self.hints.to_dict(), "strict": self.strict}
               if self.hints is not None else {}),
        }

    def baseline_document(self) -> dict[str, Any]:
        """The figures as a baseline file (:func:`load_baseline` reads it back)."""
        return baseline_document(self.config.display_path,
                                 {e.budget.name: e.figures() for e in self.entries})

    def blocks(self) -> list[Block]:
        """A heading with the verdict, the file, one block of rows per entry, then one line
        per failure and per warning."""
        with_baseline = self.baseline is not None
        rows, sections = [], []
        for entry in self.entries:
            b = entry.budget
            where = f"{b.neck} {size_text(b.input_size)}" + (f" b{b.batch}" if b.batch != 1
                                                              else "")
            for i, cells in enumerate(entry.rows(with_baseline)):
                rows.append((b.name if i == 0 else "", where if i == 0 else "", *cells))
            sections.append(len(rows) - 1)
        headers: list[str | Column] = [
            "budget", "neck", "check", num("limit"), num("actual"), num("headroom"),
            *([num("vs baseline")] if with_baseline else []), "result"]
        mark = "✅" if self.passed else "❌"
        source = f"config: {self.config.display_path}" + (
            f"; baseline: {self.baseline.path}" if self.baseline else "")
        return [
            Heading(f"necktool check: {self.summary}", mark),
            Note(source),
            table(None, headers, rows, sections=tuple(sections), verdict=len(headers) - 1,
                  caption=f"{SCALE_NOTE}; {MEMORY_SCALE_NOTE}; {HEADROOM_NOTE}"),
            *([Note(self.cross_check_note())] if all(e.profile.cross_check.agree
                                                     for e in self.entries) else []),
            *(Note(msg, "fail") for _, msg in self.failures()),
            *(Note(msg, "warn") for _, msg in self.warnings()),
            *(self.hints.blocks() if self.hints is not None else []),
            *([Note(note)] if (note := self.cache_note()) else []),
        ]

    def annotations(self) -> list[str]:
        """GitHub workflow commands: ``::error`` per failed check and ``::warning`` per
        baseline gap, on the config file (named relative to the repository root)."""
        file = _escape_property(annotation_path(self.config.path, self.config.display_path))
        out = []
        for level, items in (("error", self.failures()), ("warning", self.warnings())):
            for entry, msg in items:
                props = f"file={file}"
                if entry is not None and entry.budget.line is not None:
                    props += f",line={entry.budget.line}"
                title = "necktool budget exceeded" if level == "error" else "necktool baseline"
                out.append(f"::{level} {props},title={_escape_property(title)}::"
                           f"{_escape_data(msg)}")
        return out


def _escape_data(text: str) -> str:
    # GitHub workflow-command escaping: '%' first, then line breaks.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation_path(path: Path, fallback: str) -> str:
    """``path`` as GitHub places annotations: relative to ``$GITHUB_WORKSPACE`` when set,
    else to the git work tree's root, else ``fallback``."""
    roots = [os.environ.get("GITHUB_WORKSPACE") or "", _git_root(path.parent) or ""]
    for root in roots:
        if root:
            full, base = path.resolve(), Path(root).resolve()
            if full.is_relative_to(base):
                return full.relative_to(base).as_posix()
    return fallback


def _git_root(directory: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=directory,
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


# -- checking -------------------------------------------------------------------------
def check_budgets(
    config: BudgetConfig,
    baseline: Baseline | None = None,
    max_increase: float | None = None,
    on_progress: Callable[[str], None] | None = None,
    cache: ResultCache | None = None,
    before_profiling: Callable[[], None] | None = None,
) -> CheckReport:
    """Profile every entry once and check it against its limits (and the baseline).

    Args:
        config: From :func:`load_config`.
        baseline: Saved figures (:func:`load_baseline`); entries whose counts grew more than
            the allowed percentage fail even under their absolute budget.
        max_increase: Growth tolerance in percent. An entry's own ``max-increase`` wins,
            then this, then the file's top-level ``max-increase``, then 0 (any growth fails).
        on_progress: Called with each entry's name once it is measured.
        cache: A result cache (:class:`~necktool.budgets.cache.ResultCache`): entries found
            there are not profiled (and torch is not imported for them); entries measured
            are stored. ``None`` (the default) measures everything.
        before_profiling: Called once, before the first entry that must be profiled.

    Returns:
        A :class:`CheckReport`; ``bool(report)`` is whether every entry passed.

    Raises:
        ConfigError: ``max_increase`` without a ``baseline``, or an entry's neck that cannot
            be profiled (a custom neck that fails to build, say).
    """
    if max_increase is not None and baseline is None:
        raise ConfigError("max_increase needs a baseline to compare against (--baseline FILE)")
    if max_increase is not None:
        try:
            max_increase = parse_percent(max_increase, "max_increase")
        except InputError as exc:
            raise ConfigError(str(exc)) from None
    measured: dict[tuple[NeckSpec, int], tuple[ProfileResult | CachedFigures, bool]] = {}
    started = False
    entries = []
    for budget in config.budgets:
        # Entries that differ only in name (e.g. 'fpn' and 'retinaface_mnet') share one trace.
        spec = dataclasses.replace(budget.spec, name=None)
        key = (spec, budget.batch)
        if key not in measured:
            # The plan's hash and the key it is filed under, worked out once per entry.
            plan = _plan(spec, budget.batch) if cache is not None else None
            entry = (plan, cache.key(plan)) if cache is not None and plan is not None else None
            found = cache.get(entry[1], spec.level_names) \
                if cache is not None and entry is not None else None
            if found is None:
                if not started and before_profiling is not None:
                    before_profiling()
                started = True
                measured[key] = (_profile(config, budget, cache, entry), False)
            else:
                measured[key] = (found, True)
        figures, cached = measured[key]
        entries.append(_check_entry(budget, figures, config, baseline, max_increase, cached))
        if on_progress is not None:
            on_progress(budget.name)
    names = {b.name for b in config.budgets}
    dropped = tuple(n for n in baseline.entries if n not in names) if baseline else ()
    return CheckReport(config=config, entries=tuple(entries), baseline=baseline,
                       dropped=dropped, cache=None if cache is None else cache.label)


def _plan(spec: NeckSpec, batch: int) -> str | None:
    """What a cache key is made of (the profile plan's content hash; the cache adds the
    versions), or ``None`` for a neck that is never cached (a custom neck: its code is
    not part of any key)."""
    if spec.factory is not None:
        return None
    return ProfilePlan(spec, batch).content_hash()


def _profile(config: BudgetConfig, budget: Budget, cache: ResultCache | None,
             entry: tuple[str, str] | None) -> ProfileResult:
    """Profile one entry now, and store its figures in the cache (``entry``: the plan's
    hash and the key it is filed under, worked out once by the caller)."""
    from necktool.analysis import profiling  # torch: only once the config is known to be good

    try:
        result = profiling.run_profile(ProfilePlan(budget.spec, budget.batch))[0]
    except NecktoolError as exc:
        raise ConfigError(f"{config.display_path}: {budget.key_path}: {exc}") from None
    if cache is not None and entry is not None:
        from necktool.budgets.cache import CachedFigures

        figures = CachedFigures.of(result)
        if [lv.name for lv in figures.levels] == list(budget.spec.level_names):
            cache.put(entry[1], entry[0], figures)
    return result


def _check_entry(budget: Budget, result: ProfileResult | CachedFigures, config: BudgetConfig,
                 baseline: Baseline | None, max_increase: float | None,
                 from_cache: bool = False) -> EntryResult:
    checks = [LimitCheck(METRIC[m], None, limit, METRIC[m].total(result))
              for m, limit in budget.limits.items()]
    levels = {lv.name: lv for lv in result.levels}
    for name, limits in budget.level_limits.items():
        for m, limit in limits.items():
            read = METRIC[m].level
            assert read is not None  # level limits exist only for metrics with levels
            checks.append(LimitCheck(METRIC[m], name, limit, read(levels[name])))
    if baseline is None:
        return EntryResult(budget, result, tuple(checks), from_cache=from_cache)
    saved = baseline.entries.get(budget.name)
    if saved is None:
        return EntryResult(budget, result, tuple(checks), (), in_baseline=False,
                           from_cache=from_cache)
    allowed = next((v for v in (budget.max_increase, max_increase, config.max_increase)
                    if v is not None), 0.0)
    growth = tuple(BaselineCheck(m, saved.counts[m.base], m.total(result), allowed)
                   for m in METRICS if m.base in saved.counts)
    return EntryResult(budget, result, tuple(checks), growth, in_baseline=True,
                       from_cache=from_cache)
