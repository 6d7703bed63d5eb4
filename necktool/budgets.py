"""FLOP and parameter budgets: load them from TOML, check them, compare against a baseline.

A budget config is a ``[tool.necktool]`` table in ``pyproject.toml``, or a standalone
``necktool.toml`` (top-level keys with ``[[budget]]`` entries, or a ``[tool.necktool]``
table). The schema is strict: an unknown key, a wrong type or an unknown neck raises
:class:`~necktool.errors.ConfigError` naming the file and the key path, because a budget
that is silently ignored is the worst failure a gate can have.

Units: GFLOPs = fvcore flops / 1e9 (one fused multiply-add = one flop); Mparams =
parameters / 1e6. Counts are deterministic, so comparisons are exact: an entry fails
when actual > limit (equal passes).

Torch-free at import; torch loads when a neck is resolved or profiled.

Example:
    >>> from pathlib import Path
    >>> config = load_config(Path("examples/necktool.toml"), Path.cwd())
    >>> report = check_budgets(config)
    >>> bool(report), report.entries[0].budget.name
    (True, 'scrfd_10g')
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from necktool.errors import ConfigError, InputError, NecktoolError, UnknownNeckError
from necktool.files import replace_on_success
from necktool.specs import Activation, NeckSpec, Norm, parse_size

if TYPE_CHECKING:
    from rich.table import Table

    from necktool.profiling import ProfileResult

BASELINE_VERSION = 1
CONFIG_NAME = "necktool.toml"
PYPROJECT = "pyproject.toml"
GFLOPS_NOTE = "GFLOPs = fvcore flops / 1e9 (1 fused multiply-add = 1 flop); Mparams = params / 1e6"
HINT_LIMIT = "raise the budget or reduce the neck"
HINT_BASELINE = ("reduce the neck, or if the growth is intended save a new baseline "
                 "with --save-baseline")

# TOML key -> NeckSpec field. Kebab-case in files, like the CLI's flags.
BUILD_KEYS = {
    "in-channels": "in_channels",
    "out-channels": "out_channels",
    "norm": "norm",
    "gn-groups": "gn_groups",
    "act": "act",
    "leaky-slope": "leaky_slope",
}
LIMIT_KEYS = ("max-gflops", "max-mparams")
TOP_KEYS = (*BUILD_KEYS, "input-size", "batch", "max-increase", "budget")
ENTRY_KEYS = ("name", "neck", *BUILD_KEYS, "input-size", "batch", *LIMIT_KEYS, "levels",
              "max-increase")

# metric -> (label, scale from the raw count)
_METRICS = {"gflops": ("GFLOPs", 10**9), "mparams": ("Mparams", 10**6)}


# -- where a value came from ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Where:
    """A file and a key path inside it, for error messages."""

    file: str
    path: str = ""

    def key(self, name: str) -> _Where:
        return _Where(self.file, f"{self.path}.{name}" if self.path else name)

    def index(self, i: int) -> _Where:
        return _Where(self.file, f"{self.path}[{i}]")

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.path}: {message}" if self.path
                           else f"{self.file}: {message}")


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def _given(value: Any) -> str:
    """The value as TOML would spell it, with its type: ``string "0.3"``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    else:
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{_toml_type(value)} {text}"


def _wrong_type(where: _Where, expected: str, value: Any) -> ConfigError:
    return where.error(f"expected {expected}, got {_given(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_keys(table: Mapping[str, Any], valid: tuple[str, ...], where: _Where) -> None:
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise where.key(key).error(f"unknown key; {hint}valid: {', '.join(valid)}")


# -- value parsers: each returns the typed value or raises ConfigError at `where` --------
def _positive_int(value: Any, where: _Where) -> int:
    if not _is_int(value) or value <= 0:
        raise _wrong_type(where, "a positive integer", value)
    return int(value)


def _limit(value: Any, where: _Where) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise _wrong_type(where, "a positive number", value)
    return float(value)


def _channels(value: Any, where: _Where) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(v) and v > 0 for v in value):
        raise _wrong_type(where, "an array of positive integers like [64, 128, 256]", value)
    return tuple(value)


def _choice(value: Any, where: _Where, valid: list[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise _wrong_type(where, f"one of {', '.join(map(json.dumps, valid))}", value)
    return value


def _size(value: Any, where: _Where) -> tuple[int, int]:
    expected = 'a size like "640x480", an integer for square, or [H, W]'
    if isinstance(value, str):
        try:
            return parse_size(value)
        except InputError:
            raise _wrong_type(where, expected, value) from None
    if _is_int(value) and value > 0:
        return int(value), int(value)
    if isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    raise _wrong_type(where, expected, value)


def _build_value(key: str, value: Any, where: _Where) -> Any:
    if key == "in-channels":
        return _channels(value, where)
    if key in ("out-channels", "gn-groups"):
        return _positive_int(value, where)
    if key == "norm":
        return Norm(_choice(value, where, [n.value for n in Norm]))
    if key == "act":
        return Activation(_choice(value, where, [a.value for a in Activation]))
    if key == "leaky-slope":
        if not _is_number(value) or not math.isfinite(value):
            raise _wrong_type(where, "a finite number", value)
        return float(value)
    raise AssertionError(key)  # BUILD_KEYS and this function are kept in step


def parse_percent(value: Any, what: str = "max-increase") -> float:
    """Parse a growth tolerance: ``"2%"``, ``"2"``, ``2`` or ``2.5`` mean that many percent.

    Raises:
        InputError: not a finite, non-negative percentage.

    Example:
        >>> parse_percent("2%"), parse_percent(0.5)
        (2.0, 0.5)
    """
    number: float | None = None
    if _is_number(value):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        try:
            number = float(text)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise InputError(f"{what}: expected a non-negative percentage like \"2%\" or 2, "
                         f"got {_given(value)}")
    return number


# -- the config -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Limits:
    """Upper bounds; ``None`` means not limited."""

    max_gflops: float | None = None
    max_mparams: float | None = None

    def items(self) -> list[tuple[str, float]]:
        """``(metric, limit)`` for the limits that are set, GFLOPs first."""
        pairs = [("gflops", self.max_gflops), ("mparams", self.max_mparams)]
        return [(m, v) for m, v in pairs if v is not None]


@dataclasses.dataclass(frozen=True)
class Budget:
    """One ``[[budget]]`` entry, resolved: the neck's full spec and its limits.

    Attributes:
        name: Unique name (defaults to ``neck``); baselines are keyed by it.
        neck: The preset or family as written in the config.
        spec: The resolved spec; ``spec.input_size`` is the size it is profiled at.
        batch: Batch size to profile at.
        limits: Whole-neck limits.
        level_limits: Per-level limits by level name (``P3``...).
        max_increase: Growth tolerance in percent against a baseline, if the entry sets one.
        key_path: Where the entry is in the file (``tool.necktool.budget[0]``).
        line: The entry's ``[[budget]]`` header line, when it has one.
    """

    name: str
    neck: str
    spec: NeckSpec
    batch: int
    limits: Limits
    level_limits: Mapping[str, Limits]
    max_increase: float | None
    key_path: str
    line: int | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.spec.input_size[0], self.spec.input_size[1])


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    """A loaded budget file.

    Attributes:
        path: The file, absolute.
        display_path: The file as messages show it (relative to the working directory
            when it is below it).
        key_path: Where the necktool table is (``tool.necktool``, or ``""`` at top level).
        budgets: The entries, in file order.
        max_increase: The file's default growth tolerance in percent, if it sets one.
    """

    path: Path
    display_path: str
    key_path: str
    budgets: tuple[Budget, ...]
    max_increase: float | None = None


def _display(path: Path, cwd: Path) -> str:
    """``path`` relative to ``cwd`` when below it or in one of its parents, else absolute."""
    full, here = path.resolve(), cwd.resolve()
    if full.is_relative_to(here) or here.is_relative_to(full.parent):
        return Path(os.path.relpath(full, here)).as_posix()
    return str(full)


def _read_toml(path: Path, display: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{display}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{display}: cannot read: {exc.strerror or exc}") from None


def _has_necktool_table(data: Mapping[str, Any]) -> bool:
    tool = data.get("tool")
    return isinstance(tool, dict) and "necktool" in tool


def find_config(cwd: Path) -> Path:
    """The config that applies in ``cwd``: walk up; per directory ``necktool.toml``, then a
    ``pyproject.toml`` with a ``[tool.necktool]`` table; the first found wins.

    Raises:
        ConfigError: none found (the message says where it looked and how to make one).
    """
    start = cwd.resolve()
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
        pyproject = directory / PYPROJECT
        # A pyproject.toml that does not parse is an error, not a skip: it may hold budgets.
        if pyproject.is_file() and _has_necktool_table(
                _read_toml(pyproject, _display(pyproject, cwd))):
            return pyproject
    raise ConfigError(
        f"no budget config found: looked for {CONFIG_NAME}, and {PYPROJECT} with a "
        f"[tool.necktool] table, in {start} and every parent directory; create "
        f"{CONFIG_NAME} with a [[budget]] entry (neck = \"scrfd_2.5g\", max-gflops = 0.3), "
        "or pass --config PATH"
    )


def load_config(path: Path | None, cwd: Path) -> BudgetConfig:
    """Load and validate a budget config; every neck is resolved to a spec here.

    Args:
        path: The file (``--config``); ``None`` searches from ``cwd`` (:func:`find_config`).
        cwd: The working directory: where the search starts and what paths are relative to.

    Raises:
        ConfigError: missing file, invalid TOML, unknown key, wrong type, unknown neck,
            invalid neck, unknown level, duplicate name or an entry without limits.
    """
    if path is None:
        path = find_config(cwd)
    elif not path.is_absolute():
        path = cwd / path
    display = _display(path, cwd)
    if path.is_dir():
        raise ConfigError(f"{display}: is a directory; --config takes a TOML file")
    if not path.is_file():
        raise ConfigError(f"{display}: config file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    data = _read_toml(path, display)
    table, where = _necktool_table(data, path, _Where(display))
    defaults, max_increase = _parse_defaults(table, where)
    budgets = _parse_budgets(table, where, defaults, text)
    return BudgetConfig(path=path.resolve(), display_path=display, key_path=where.path,
                        budgets=budgets, max_increase=max_increase)


def _necktool_table(data: dict[str, Any], path: Path,
                    where: _Where) -> tuple[Mapping[str, Any], _Where]:
    """The necktool table of a file and its key path.

    ``pyproject.toml`` must hold ``[tool.necktool]``. Any other file holds either top-level
    keys or a ``[tool.necktool]`` table, never both, so a key cannot end up ignored.
    """
    if path.name == PYPROJECT or "tool" in data:
        tool = data.get("tool")
        if not isinstance(tool, dict) or "necktool" not in tool:
            raise where.error("no [tool.necktool] table; add one with [[tool.necktool.budget]] "
                              "entries")
        if path.name != PYPROJECT:
            others = [k for k in data if k != "tool"] + [f"tool.{k}" for k in tool
                                                         if k != "necktool"]
            if others:
                raise where.error(
                    f"has both a [tool.necktool] table and other keys ({', '.join(others)}); "
                    f"in {path.name} use either top-level keys or one [tool.necktool] table")
        inner = where.key("tool").key("necktool")
        if not isinstance(tool["necktool"], dict):
            raise _wrong_type(inner, "a table", tool["necktool"])
        return tool["necktool"], inner
    return data, where


def _parse_defaults(table: Mapping[str, Any],
                    where: _Where) -> tuple[dict[str, Any], float | None]:
    _check_keys(table, TOP_KEYS, where)
    defaults: dict[str, Any] = {}
    for key, field in BUILD_KEYS.items():
        if key in table:
            defaults[field] = _build_value(key, table[key], where.key(key))
    if "input-size" in table:
        defaults["input_size"] = _size(table["input-size"], where.key("input-size"))
    if "batch" in table:
        defaults["batch"] = _positive_int(table["batch"], where.key("batch"))
    max_increase = None
    if "max-increase" in table:
        max_increase = _percent(table["max-increase"], where.key("max-increase"))
    return defaults, max_increase


def _percent(value: Any, where: _Where) -> float:
    try:
        return parse_percent(value, where.path)
    except InputError as exc:
        raise ConfigError(f"{where.file}: {exc}") from None


def _header_lines(text: str, where: _Where, count: int) -> list[int | None]:
    """Line numbers of the ``[[...budget]]`` headers, for annotations.

    Entries written inline (``budget = [{...}]``) have none; then no lines are given
    rather than wrong ones.
    """
    name = re.escape(where.key("budget").path).replace(r"\.", r"\s*\.\s*")
    header = re.compile(rf"^\s*\[\[\s*{name}\s*\]\]")
    lines = [i for i, line in enumerate(text.splitlines(), 1) if header.match(line)]
    return list(lines) if len(lines) == count else [None] * count


def _parse_budgets(table: Mapping[str, Any], where: _Where, defaults: dict[str, Any],
                   text: str) -> tuple[Budget, ...]:
    at = where.key("budget")
    entries = table.get("budget")
    if entries is None:
        raise where.error("no budget entries; add at least one [[budget]] table "
                          f"({'[[' + at.path + ']]'}) with a neck and a limit")
    if not isinstance(entries, list):
        raise _wrong_type(at, f"an array of tables ([[{at.path}]])", entries)
    if not entries:
        raise at.error("is empty; a gate with no budgets checks nothing")
    lines = _header_lines(text, where, len(entries))
    budgets: list[Budget] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        budget = _parse_entry(entry, at.index(i), defaults, lines[i])
        if budget.name in seen:
            raise at.index(i).key("name").error(
                f"duplicate budget name {budget.name!r} (also {at.path}[{seen[budget.name]}]); "
                "give each entry a unique name = \"...\"")
        seen[budget.name] = i
        budgets.append(budget)
    return tuple(budgets)


def _parse_limits(table: Mapping[str, Any], where: _Where) -> Limits:
    return Limits(
        max_gflops=_limit(table["max-gflops"], where.key("max-gflops"))
        if "max-gflops" in table else None,
        max_mparams=_limit(table["max-mparams"], where.key("max-mparams"))
        if "max-mparams" in table else None,
    )


def _parse_entry(entry: Any, where: _Where, defaults: dict[str, Any],
                 line: int | None) -> Budget:
    if not isinstance(entry, dict):
        raise _wrong_type(where, "a table", entry)
    _check_keys(entry, ENTRY_KEYS, where)
    if "neck" not in entry:
        raise where.error('missing key neck (a preset or family, e.g. neck = "scrfd_2.5g")')
    neck = entry["neck"]
    if not isinstance(neck, str) or not neck:
        raise _wrong_type(where.key("neck"), "a preset or family name", neck)
    name = entry.get("name", neck)
    if not isinstance(name, str) or not name.strip():
        raise _wrong_type(where.key("name"), "a non-empty string", name)

    settings = dict(defaults)
    for key, field in BUILD_KEYS.items():
        if key in entry:
            settings[field] = _build_value(key, entry[key], where.key(key))
    if "input-size" in entry:
        settings["input_size"] = _size(entry["input-size"], where.key("input-size"))
    if "batch" in entry:
        settings["batch"] = _positive_int(entry["batch"], where.key("batch"))
    batch = settings.pop("batch", 1)
    max_increase = (_percent(entry["max-increase"], where.key("max-increase"))
                    if "max-increase" in entry else None)

    limits = _parse_limits(entry, where)
    raw_levels = entry.get("levels", {})
    if not isinstance(raw_levels, dict):
        raise _wrong_type(where.key("levels"), "a table like { P3 = { max-gflops = 0.2 } }",
                          raw_levels)
    level_limits: dict[str, Limits] = {}
    for level, table in raw_levels.items():
        at = where.key("levels").key(level)
        if not isinstance(table, dict):
            raise _wrong_type(at, "a table like { max-gflops = 0.2 }", table)
        _check_keys(table, LIMIT_KEYS, at)
        level_limits[level] = _parse_limits(table, at)
        if not level_limits[level].items():
            raise at.error("no limit; set max-gflops and/or max-mparams")
    if not limits.items() and not level_limits:
        raise where.error("no limit; set max-gflops, max-mparams or levels.<P3...>, "
                          "or the entry gates nothing")

    from necktool.build import resolve_spec  # presets, families and import paths alike

    try:
        spec = resolve_spec(neck, **settings)
    except UnknownNeckError as exc:
        raise where.key("neck").error(str(exc)) from None
    except NecktoolError as exc:  # SpecError, InputError, or whatever a neck kind raises
        raise where.error(f"invalid neck {neck!r}: {exc}") from None

    for level in level_limits:
        if level not in spec.level_names:
            close = [n for n in spec.level_names if n.lower() == level.lower()]
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise where.key("levels").key(level).error(
                f"no level {level!r} in this neck; {hint}levels: {', '.join(spec.level_names)}")
    return Budget(name=name, neck=neck, spec=spec, batch=batch, limits=limits,
                  level_limits=level_limits, max_increase=max_increase,
                  key_path=where.path, line=line)


# -- baselines ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BaselineFigures:
    """One entry's saved totals."""

    flops: int
    params: int


@dataclasses.dataclass(frozen=True)
class Baseline:
    """Saved figures by budget name (see :func:`save_baseline`)."""

    path: str
    entries: Mapping[str, BaselineFigures]


def load_baseline(path: Path) -> Baseline:
    """Read a baseline written by :func:`save_baseline` (JSON; never pickle).

    Raises:
        ConfigError: missing, unreadable, not JSON, or not a version-1 necktool baseline.
    """
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: baseline file not found; create one with "
                          "--save-baseline FILE") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read baseline: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: baseline is not valid JSON: {exc}") from None
    bad = f"{where}: not a necktool baseline (version {BASELINE_VERSION}): "
    if not isinstance(data, dict) or data.get("version") != BASELINE_VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise ConfigError(bad + f"version is {version!r}; save a new one with --save-baseline")
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise ConfigError(bad + "'entries' must be an object")
    figures: dict[str, BaselineFigures] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not all(
                _is_int(entry.get(k)) and entry[k] >= 0 for k in ("flops", "params")):
            raise ConfigError(bad + f"entries.{name} needs integer 'flops' and 'params'")
        figures[name] = BaselineFigures(int(entry["flops"]), int(entry["params"]))
    return Baseline(path=where, entries=figures)


def save_baseline(report: CheckReport, path: Path) -> None:
    """Write the report's figures as a JSON baseline, atomically (temp file + rename).

    Raises:
        ConfigError: the file cannot be written.
    """
    with replace_on_success(path, "baseline", ConfigError) as tmp:
        tmp.write_text(json.dumps(report.baseline_dict(), indent=2) + "\n", encoding="utf-8")


# -- results --------------------------------------------------------------------------
def _pct(value: float, sign: str = "") -> str:
    """A percentage with two decimals, or two significant digits when smaller than that."""
    if math.isinf(value):
        return f"{sign}inf%"
    return f"{value:{sign}.2f}%" if abs(value) >= 0.01 or value == 0 else f"{value:{sign}.2g}%"


def _exact(value: float) -> Fraction:
    # repr() round-trips the decimal the user wrote, so 0.3 compares as 3/10 exactly.
    return Fraction(repr(value))


@dataclasses.dataclass(frozen=True)
class LimitCheck:
    """One limit against one measured count (``level`` is ``None`` for the whole neck)."""

    metric: str  # "gflops" or "mparams"
    level: str | None
    limit: float
    count: int  # exact flops (fvcore units) or parameters

    @property
    def actual(self) -> float:
        return self.count / _METRICS[self.metric][1]

    @property
    def passed(self) -> bool:
        return Fraction(self.count) <= _exact(self.limit) * _METRICS[self.metric][1]

    @property
    def headroom_pct(self) -> float:
        """``(limit - actual) / limit * 100``; negative when over."""
        return (self.limit - self.actual) / self.limit * 100

    @property
    def label(self) -> str:
        unit = _METRICS[self.metric][0]
        return f"{self.level} {unit}" if self.level else unit

    def message(self, name: str) -> str:
        limit, actual = _pair(self.limit, self.actual)
        unit = _METRICS[self.metric][0]
        what = f"level {self.level} {unit}" if self.level else unit
        over = self.actual - self.limit
        return (f"{name}: {what} {actual} exceeds the budget {limit} by {over:.4g} {unit} "
                f"({_pct(-self.headroom_pct)} over); {HINT_LIMIT}")

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "level": self.level, "limit": self.limit,
                "actual": self.actual, "count": self.count,
                "headroom_pct": round(self.headroom_pct, 4), "passed": self.passed}


@dataclasses.dataclass(frozen=True)
class BaselineCheck:
    """Growth of one total against the baseline, allowed up to ``max_increase`` percent."""

    metric: str  # "flops" or "params"
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
        what = "FLOPs" if self.metric == "flops" else "params"
        return (f"{name}: {what} grew {_pct(self.change_pct, '+')} against the baseline "
                f"({self.baseline:,} -> {self.count:,}), more than the allowed "
                f"{self.max_increase:g}%; {HINT_BASELINE}")

    def to_dict(self) -> dict[str, Any]:
        change = self.change_pct
        return {"baseline": self.baseline, "actual": self.count,
                "change_pct": round(change, 4) if math.isfinite(change) else None,
                "max_increase_pct": self.max_increase, "passed": self.passed}


@dataclasses.dataclass(frozen=True)
class EntryResult:
    """One budget entry: its profile, its limit checks and its baseline checks.

    ``in_baseline`` is ``None`` when no baseline was given, ``False`` for an entry the
    baseline does not know (its growth is not checked).
    """

    budget: Budget
    profile: ProfileResult
    limits: tuple[LimitCheck, ...]
    growth: tuple[BaselineCheck, ...] = ()
    in_baseline: bool | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def checks(self) -> list[LimitCheck | BaselineCheck]:
        """Every check of this entry: limits first, then baseline growth."""
        return [*self.limits, *self.growth]

    @property
    def flops(self) -> int:
        return self.profile.flops

    @property
    def params(self) -> int:
        return self.profile.params

    def failures(self) -> list[str]:
        """One actionable message per failed check."""
        name = self.budget.name
        return [c.message(name) for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        b = self.budget
        return {
            "name": b.name,
            "neck": b.neck,
            "input_size": list(b.input_size),
            "batch": b.batch,
            "config": b.spec.to_dict(),
            "passed": self.passed,
            "flops": self.flops,
            "params": self.params,
            "gflops": self.flops / 1e9,
            "mparams": self.params / 1e6,
            "levels": [{"name": lv.name, "flops": lv.flops, "params": lv.params}
                       for lv in self.profile.levels],
            "checks": [c.to_dict() for c in self.limits],
            "baseline": None if self.in_baseline is None else
            {"known": self.in_baseline, **{c.metric: c.to_dict() for c in self.growth}},
            "failures": self.failures(),
        }


@dataclasses.dataclass(frozen=True)
class _Row:
    """One rendered line of the results table; every renderer reads these."""

    entry: EntryResult
    check: str
    limit: str
    actual: str
    headroom: str
    change: str
    result: str


def _pair(limit: float, actual: float) -> tuple[str, str]:
    """Format limit and actual with enough decimals that unequal values never look equal."""
    digits = 4
    while digits < 12 and limit != actual and f"{limit:.{digits}f}" == f"{actual:.{digits}f}":
        digits += 1
    return f"{limit:.{digits}f}", f"{actual:.{digits}f}"


def _change(check: BaselineCheck | None, in_baseline: bool | None) -> str:
    if in_baseline is None:
        return ""
    if check is None:
        return "new"
    return _pct(check.change_pct, "+")


def _rows(entry: EntryResult) -> list[_Row]:
    """Rows per entry: whole-neck GFLOPs and Mparams (always), then each level limit."""
    rows: list[_Row] = []
    by_metric = {(c.metric, c.level): c for c in entry.limits}
    growth = {c.metric: c for c in entry.growth}
    counts = {"gflops": entry.flops, "mparams": entry.params}
    for metric, base in (("gflops", "flops"), ("mparams", "params")):
        limit = by_metric.get((metric, None))
        grew = growth.get(base)
        actual = counts[metric] / _METRICS[metric][1]
        checks = [c for c in (limit, grew) if c is not None]
        result = ("PASS" if all(c.passed for c in checks) else "FAIL") if checks else "-"
        if limit is not None:
            limit_s, actual_s = _pair(limit.limit, actual)
            headroom = f"{limit.headroom_pct:.1f}%"
        else:
            limit_s, actual_s, headroom = "-", f"{actual:.4f}", "-"
        rows.append(_Row(entry, _METRICS[metric][0], limit_s, actual_s, headroom,
                         _change(grew, entry.in_baseline), result))
    for check in entry.limits:
        if check.level is not None:
            limit_s, actual_s = _pair(check.limit, check.actual)
            rows.append(_Row(entry, check.label, limit_s, actual_s,
                             f"{check.headroom_pct:.1f}%", "",
                             "PASS" if check.passed else "FAIL"))
    return rows


def _where_label(b: Budget) -> str:
    h, w = b.input_size
    return f"{b.neck} {h}x{w}" + (f" b{b.batch}" if b.batch != 1 else "")


def _escape_data(text: str) -> str:
    # GitHub workflow-command escaping: '%' first, then line breaks.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """The outcome of :func:`check_budgets`: true when every entry passed.

    Attributes:
        config: The config that was checked.
        entries: One result per budget entry, in file order.
        baseline: The baseline compared against, if any.
        dropped: Baseline names no longer in the config.
    """

    config: BudgetConfig
    entries: tuple[EntryResult, ...]
    baseline: Baseline | None = None
    dropped: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.entries)

    def __bool__(self) -> bool:
        return self.passed

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
        out.extend((None, f"{name}: in the baseline {self.baseline.path} but no longer in "
                          f"{self.config.display_path}")
                   for name in self.dropped)
        return out

    # -- renderings -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Stable, JSON-ready results; every count is an exact integer."""
        from necktool.profiling import UNIT, UNIT_NOTE

        return {
            "passed": self.passed,
            "config": self.config.display_path,
            "unit": UNIT,
            "unit_note": UNIT_NOTE,
            "scale_note": GFLOPS_NOTE,
            "baseline": self.baseline.path if self.baseline else None,
            "entries": [e.to_dict() for e in self.entries],
            "warnings": [msg for _, msg in self.warnings()],
        }

    def baseline_dict(self) -> dict[str, Any]:
        """The figures as a baseline file (:func:`load_baseline` reads it back)."""
        from necktool import __version__
        from necktool.profiling import UNIT, UNIT_NOTE

        return {
            "version": BASELINE_VERSION,
            "necktool_version": __version__,
            "unit": UNIT,
            "unit_note": UNIT_NOTE,
            "config": self.config.display_path,
            "entries": {
                e.budget.name: {
                    "neck": e.budget.neck,
                    "input_size": list(e.budget.input_size),
                    "batch": e.budget.batch,
                    "flops": e.flops,
                    "params": e.params,
                    "levels": {lv.name: {"flops": lv.flops, "params": lv.params}
                               for lv in e.profile.levels},
                } for e in self.entries
            },
        }

    def _has_baseline(self) -> bool:
        return self.baseline is not None

    def table(self) -> Table:
        """A rich table: one block of rows per entry."""
        from rich.table import Table

        table = Table(title=f"necktool check: {self.config.display_path}",
                      caption=f"{GFLOPS_NOTE}; headroom = (limit - actual) / limit",
                      caption_justify="left")
        table.add_column("budget", no_wrap=True)
        table.add_column("check", no_wrap=True)
        for col in ("limit", "actual", "headroom"):
            table.add_column(col, justify="right", no_wrap=True)
        if self._has_baseline():
            table.add_column("vs baseline", justify="right", no_wrap=True)
        table.add_column("result", no_wrap=True)
        for entry in self.entries:
            for i, row in enumerate(_rows(entry)):
                label = entry.budget.name if i == 0 else \
                    (f"[dim]{_where_label(entry.budget)}[/]" if i == 1 else "")
                result = "[green]PASS[/]" if row.result == "PASS" else \
                    "[bold red]FAIL[/]" if row.result == "FAIL" else row.result
                cells = [label, row.check, row.limit, row.actual, row.headroom]
                if self._has_baseline():
                    cells.append(row.change)
                table.add_row(*cells, result, end_section=i == len(_rows(entry)) - 1)
        return table

    def to_markdown(self) -> str:
        """A markdown table (and the failures) for a PR comment or a job summary."""
        mark = "✅" if self.passed else "❌"
        lines = [f"### {mark} necktool check: {self.summary}", "",
                 f"Config: `{self.config.display_path}`"
                 + (f"; baseline: `{self.baseline.path}`" if self.baseline else ""), ""]
        head = ["budget", "neck", "check", "limit", "actual", "headroom"]
        if self._has_baseline():
            head.append("vs baseline")
        head.append("result")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---:" if h in {"limit", "actual", "headroom", "vs baseline"}
                                    else "---" for h in head) + "|")
        for entry in self.entries:
            for row in _rows(entry):
                result = "**FAIL**" if row.result == "FAIL" else row.result
                cells = [_md(entry.budget.name), _md(_where_label(entry.budget)), row.check,
                         row.limit, row.actual, row.headroom]
                if self._has_baseline():
                    cells.append(row.change)
                cells.append(result)
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"_{GFLOPS_NOTE}; headroom = (limit - actual) / limit._"]
        problems = [msg for _, msg in self.failures()] + [msg for _, msg in self.warnings()]
        if problems:
            lines.append("")
            lines += [f"- {_md(msg)}" for msg in problems]
        return "\n".join(lines) + "\n"

    def github_annotations(self) -> list[str]:
        """``::error`` per failed check and ``::warning`` per baseline gap, on the config file."""
        file = _escape_property(self.config.display_path)
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

    def messages(self) -> Iterator[str]:
        """Failures then warnings, for plain-text output."""
        for _, msg in self.failures():
            yield f"FAIL {msg}"
        for _, msg in self.warnings():
            yield f"warning: {msg}"


def _md(text: str) -> str:
    return text.replace("|", r"\|")


# -- checking -------------------------------------------------------------------------
def check_budgets(
    config: BudgetConfig,
    baseline: Baseline | None = None,
    max_increase: float | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Profile every entry once and check it against its limits (and the baseline).

    Args:
        config: From :func:`load_config`.
        baseline: Saved figures (:func:`load_baseline`); entries whose FLOPs or params grew
            more than the allowed percentage fail even under their absolute budget.
        max_increase: Growth tolerance in percent. An entry's own ``max-increase`` wins,
            then this, then the file's top-level ``max-increase``, then 0 (any growth fails).
        on_progress: Called with each entry's name once it is measured.

    Returns:
        A :class:`CheckReport`; ``bool(report)`` is whether every entry passed.

    Raises:
        ConfigError: ``max_increase`` without a ``baseline``.
    """
    from necktool.profiling import profile

    if max_increase is not None and baseline is None:
        raise ConfigError("max_increase needs a baseline to compare against (--baseline FILE)")
    if max_increase is not None:
        try:
            max_increase = parse_percent(max_increase, "max_increase")
        except InputError as exc:
            raise ConfigError(str(exc)) from None
    cache: dict[tuple[NeckSpec, int], ProfileResult] = {}
    entries = []
    for budget in config.budgets:
        # Entries that differ only in name (e.g. 'fpn' and 'retinaface_mnet') share one trace.
        key = (dataclasses.replace(budget.spec, name=None), budget.batch)
        if key not in cache:
            try:
                cache[key] = profile(budget.spec, batch=budget.batch)
            except NecktoolError as exc:  # e.g. a custom neck that fails to build: name it
                raise ConfigError(f"{config.display_path}: {budget.key_path}: {exc}") from None
        result = cache[key]
        entries.append(_check_entry(budget, result, config, baseline, max_increase))
        if on_progress is not None:
            on_progress(budget.name)
    names = {b.name for b in config.budgets}
    dropped = tuple(n for n in baseline.entries if n not in names) if baseline else ()
    return CheckReport(config=config, entries=tuple(entries), baseline=baseline,
                       dropped=dropped)


def _check_entry(budget: Budget, result: ProfileResult, config: BudgetConfig,
                 baseline: Baseline | None, max_increase: float | None) -> EntryResult:
    counts = {"gflops": result.flops, "mparams": result.params}
    checks = [LimitCheck(m, None, limit, counts[m]) for m, limit in budget.limits.items()]
    levels = {lv.name: lv for lv in result.levels}
    for name, limits in budget.level_limits.items():
        lv = levels[name]
        level_counts = {"gflops": lv.flops, "mparams": lv.params}
        checks += [LimitCheck(m, name, limit, level_counts[m]) for m, limit in limits.items()]
    if baseline is None:
        return EntryResult(budget, result, tuple(checks))
    saved = baseline.entries.get(budget.name)
    if saved is None:
        return EntryResult(budget, result, tuple(checks), (), in_baseline=False)
    allowed = next((v for v in (budget.max_increase, max_increase, config.max_increase)
                    if v is not None), 0.0)
    growth = (BaselineCheck("flops", saved.flops, result.flops, allowed),
              BaselineCheck("params", saved.params, result.params, allowed))
    return EntryResult(budget, result, tuple(checks), growth, in_baseline=True)
