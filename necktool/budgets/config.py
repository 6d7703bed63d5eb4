"""Budget configs: the TOML schema and its loading (torch-free).

A budget config is a ``[tool.necktool]`` table in ``pyproject.toml``, or a standalone
``necktool.toml`` (top-level keys with ``[[budget]]`` entries, or a ``[tool.necktool]``
table). The schema is strict and derived from the build flags (:mod:`necktool.spec.fields`)
and the metrics (:data:`METRICS`): an unknown key, a wrong type or an unknown neck raises
:class:`~necktool.errors.ConfigError` naming the file and the key path, because a budget
that is silently ignored is the worst failure a gate can have. Every neck is resolved
here without importing torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from necktool.errors import ConfigError, InputError, NecktoolError, UnknownNeckError
from necktool.spec.fields import FIELDS, BadValue, describe_value, field_for_key, is_number
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.registry import resolve_spec
from necktool.units import GFLOPS, MIB, MPARAMS

CONFIG_NAME = "necktool.toml"
PYPROJECT = "pyproject.toml"
MAX_CONFIG_BYTES = 1 << 20  # a budget file larger than 1 MiB is not a budget file
MAX_NESTING = 16  # tables and arrays inside each other


@dataclasses.dataclass(frozen=True)
class Metric:
    """A budgeted figure: its TOML limit key, its unit, and how to read it off a profile.

    ``total`` and ``level`` read exact integer counts off a
    :class:`~necktool.analysis.profiling.ProfileResult` and its levels (``level`` is ``None`` for
    a figure with no per-level meaning); ``base`` names the count in baselines and JSON
    (growth is gated on it), ``base_label`` in messages. ``label`` names the check in
    tables; ``unit`` is the unit of ``count / scale`` in messages (default: ``label``).
    """

    name: str
    key: str
    label: str
    scale: int
    base: str
    base_label: str
    total: Callable[[Any], int]
    level: Callable[[Any], int] | None
    unit: str = ""

    @property
    def unit_label(self) -> str:
        return self.unit or self.label


METRICS: tuple[Metric, ...] = (
    Metric("gflops", "max-gflops", "GFLOPs", GFLOPS, "flops", "FLOPs",
           lambda r: r.flops, lambda lv: lv.flops),
    Metric("mparams", "max-mparams", "Mparams", MPARAMS, "params", "params",
           lambda r: r.params, lambda lv: lv.params),
    # Memory limits are in MiB (2^20 bytes), the unit the profile table shows; the keys
    # keep the short "mb". The peak is a whole-neck figure: a level has no peak of its own.
    Metric("peak_mib", "max-peak-mb", "peak MiB", MIB, "peak_activation_bytes",
           "peak activation bytes", lambda r: r.memory.peak_activation_bytes, None, "MiB"),
    Metric("activation_mib", "max-activation-mb", "activation MiB", MIB, "activation_bytes",
           "activation bytes", lambda r: r.memory.activation_bytes,
           lambda lv: lv.activation_bytes, "MiB"),
    Metric("param_mib", "max-param-mb", "param MiB", MIB, "param_bytes", "parameter bytes",
           lambda r: r.memory.param_bytes, lambda lv: lv.param_bytes, "MiB"),
)
BASE = {m.base: m for m in METRICS}
METRIC = {m.name: m for m in METRICS}
LIMIT_KEYS = tuple(m.key for m in METRICS)
LEVEL_LIMIT_KEYS = tuple(m.key for m in METRICS if m.level is not None)
SETTING_KEYS = tuple(f.key for f in FIELDS)  # build flags, input-size and batch
TOP_KEYS = (*SETTING_KEYS, "max-increase", "budget")
ENTRY_KEYS = ("name", "neck", *SETTING_KEYS, *LIMIT_KEYS, "levels", "max-increase")


# -- where a value came from ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Where:
    """A file and a key path inside it, for error messages."""

    file: str
    path: str = ""

    def key(self, name: str) -> Where:
        return Where(self.file, f"{self.path}.{name}" if self.path else name)

    def index(self, i: int) -> Where:
        return Where(self.file, f"{self.path}[{i}]")

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.path}: {message}" if self.path
                           else f"{self.file}: {message}")

    def wrong(self, expected: str, value: Any) -> ConfigError:
        return self.error(f"expected {expected}, got {describe_value(value)}")


def _check_keys(table: Mapping[str, Any], valid: tuple[str, ...], where: Where) -> None:
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise where.key(key).error(f"unknown key; {hint}valid: {', '.join(valid)}")


def _limit(value: Any, where: Where) -> float:
    if not is_number(value) or not math.isfinite(value) or value <= 0 or value > 1e15:
        raise where.wrong("a positive number", value)
    return float(value)


def parse_percent(value: Any, what: str = "max-increase") -> float:
    """Parse a growth tolerance: ``"2%"``, ``"2"``, ``2`` or ``2.5`` mean that many percent.

    Raises:
        InputError: not a finite, non-negative percentage (at most 1e6).

    Example:
        >>> parse_percent("2%"), parse_percent(0.5)
        (2.0, 0.5)
    """
    number: float | None = None
    if is_number(value):
        number = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and len(value) <= 40:
        text = value.strip().removesuffix("%").strip()
        if re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?", text):
            number = float(text)
    if number is None or not math.isfinite(number) or not 0 <= number <= 1e6:
        raise InputError(f"{what}: expected a non-negative percentage like \"2%\" or 2, "
                         f"got {describe_value(value)}")
    return number


def _percent(value: Any, where: Where) -> float:
    try:
        return parse_percent(value, where.path)
    except InputError as exc:
        raise ConfigError(f"{where.file}: {exc}") from None


# -- the config -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Limits:
    """Upper bounds by metric name (``gflops``, ``mparams``...); absent means not limited."""

    values: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def items(self) -> list[tuple[str, float]]:
        """``(metric, limit)`` for the limits that are set, in :data:`METRICS` order."""
        return [(m.name, self.values[m.name]) for m in METRICS if m.name in self.values]

    def get(self, metric: str) -> float | None:
        return self.values.get(metric)


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


def display_path(path: Path, cwd: Path) -> str:
    """``path`` relative to ``cwd`` when below it or in one of its parents, else absolute."""
    full, here = path.resolve(), cwd.resolve()
    if full.is_relative_to(here) or here.is_relative_to(full.parent):
        return Path(os.path.relpath(full, here)).as_posix()
    return str(full)


def _read_text(path: Path, display: str) -> str:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{display}: cannot read: {(exc.strerror or str(exc)).lower()}") \
            from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{display}: larger than {MAX_CONFIG_BYTES // 1024} KiB; "
                          "not a budget file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{display}: not UTF-8 text (byte {exc.start}: "
                          f"{raw[exc.start:exc.start + 1]!r}); TOML files must be UTF-8") \
            from None


def _read_toml(path: Path, display: str) -> tuple[dict[str, Any], str]:
    text = _read_text(path, display)
    depth = _max_nesting(text)
    if depth > MAX_NESTING:
        raise ConfigError(f"{display}: nested {depth} levels deep; at most {MAX_NESTING}")
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{display}: invalid TOML: {exc}") from None
    except (RecursionError, ValueError) as exc:  # e.g. an integer of thousands of digits
        raise ConfigError(f"{display}: cannot parse: {type(exc).__name__}") from None


def _max_nesting(text: str) -> int:
    """An upper bound of bracket nesting, so tomllib never recurses thousands deep."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def _has_necktool_table(data: Mapping[str, Any]) -> bool:
    tool = data.get("tool")
    return isinstance(tool, dict) and "necktool" in tool


class ConfigNotFound(ConfigError):
    """No budget config in the working directory or any parent (``find_config``)."""


def find_config(cwd: Path) -> Path:
    """The config that applies in ``cwd``: walk up; per directory ``necktool.toml``, then a
    ``pyproject.toml`` with a ``[tool.necktool]`` table; the first found wins.

    Raises:
        ConfigNotFound: none found (the message says where it looked and how to make one).
        ConfigError: a ``pyproject.toml`` on the way cannot be read.
    """
    start = cwd.resolve()
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
        pyproject = directory / PYPROJECT
        # A pyproject.toml that does not parse is an error, not a skip: it may hold budgets.
        if pyproject.is_file() and _has_necktool_table(
                _read_toml(pyproject, display_path(pyproject, cwd))[0]):
            return pyproject
    raise ConfigNotFound(
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
    display = display_path(path, cwd)
    if path.is_dir():
        raise ConfigError(f"{display}: is a directory; --config takes a TOML file")
    if not path.is_file():
        raise ConfigError(f"{display}: config file not found")
    data, text = _read_toml(path, display)
    table, where = _necktool_table(data, path, Where(display))
    _check_keys(table, TOP_KEYS, where)
    defaults = _settings(table, where)
    max_increase = (_percent(table["max-increase"], where.key("max-increase"))
                    if "max-increase" in table else None)
    budgets = _parse_budgets(table, where, defaults, text)
    return BudgetConfig(path=path.resolve(), display_path=display, key_path=where.path,
                        budgets=budgets, max_increase=max_increase)


def _necktool_table(data: dict[str, Any], path: Path,
                    where: Where) -> tuple[Mapping[str, Any], Where]:
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
            raise inner.wrong("a table", tool["necktool"])
        return tool["necktool"], inner
    return data, where


def _settings(table: Mapping[str, Any], where: Where) -> dict[str, Any]:
    """The build flags, input size and batch a table sets (top level or one entry),
    checked by each field's own kind."""
    out: dict[str, Any] = {}
    for key in SETTING_KEYS:
        if key in table:
            field = field_for_key(key)
            assert field is not None  # SETTING_KEYS come from FIELDS
            try:
                out[field.name] = field.check(table[key])
            except BadValue as exc:
                raise where.key(key).error(exc.message(describe_value(table[key]))) from None
    return out


def _header_lines(text: str, where: Where, count: int) -> list[int | None]:
    """Line numbers of the ``[[...budget]]`` headers, for annotations.

    Entries written inline (``budget = [{...}]``) have none; then no lines are given
    rather than wrong ones.
    """
    name = re.escape(where.key("budget").path).replace(r"\.", r"\s*\.\s*")
    header = re.compile(rf"^\s*\[\[\s*{name}\s*\]\]")
    lines = [i for i, line in enumerate(text.splitlines(), 1) if header.match(line)]
    return list(lines) if len(lines) == count else [None] * count


def _parse_budgets(table: Mapping[str, Any], where: Where, defaults: dict[str, Any],
                   text: str) -> tuple[Budget, ...]:
    at = where.key("budget")
    entries = table.get("budget")
    if entries is None:
        raise where.error("no budget entries; add at least one [[budget]] table "
                          f"({'[[' + at.path + ']]'}) with a neck and a limit")
    if not isinstance(entries, list):
        raise at.wrong(f"an array of tables ([[{at.path}]])", entries)
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


def _parse_limits(table: Mapping[str, Any], where: Where, keys: tuple[str, ...]) -> Limits:
    return Limits({m.name: _limit(table[m.key], where.key(m.key))
                   for m in METRICS if m.key in keys and m.key in table})


def _parse_entry(entry: Any, where: Where, defaults: dict[str, Any],
                 line: int | None) -> Budget:
    if not isinstance(entry, dict):
        raise where.wrong("a table", entry)
    _check_keys(entry, ENTRY_KEYS, where)
    if "neck" not in entry:
        raise where.error('missing key neck (a preset or family, e.g. neck = "scrfd_2.5g")')
    neck = entry["neck"]
    if not isinstance(neck, str) or not neck or len(neck) > 200:
        raise where.key("neck").wrong("a preset or family name", neck)
    name = entry.get("name", neck)
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise where.key("name").wrong("a non-empty string", name)

    settings = {**defaults, **_settings(entry, where)}
    batch = settings.pop("batch", 1)
    max_increase = (_percent(entry["max-increase"], where.key("max-increase"))
                    if "max-increase" in entry else None)

    limits = _parse_limits(entry, where, LIMIT_KEYS)
    raw_levels = entry.get("levels", {})
    if not isinstance(raw_levels, dict):
        raise where.key("levels").wrong("a table like { P3 = { max-gflops = 0.2 } }",
                                        raw_levels)
    level_limits: dict[str, Limits] = {}
    for level, table in raw_levels.items():
        at = where.key("levels").key(level)
        if not isinstance(table, dict):
            raise at.wrong("a table like { max-gflops = 0.2 }", table)
        for key in table:
            if key in LIMIT_KEYS and key not in LEVEL_LIMIT_KEYS:
                raise at.key(key).error(
                    "is a whole-neck limit with no per-level meaning (the peak is over the "
                    f"whole forward); set it on the entry; per level: "
                    f"{', '.join(LEVEL_LIMIT_KEYS)}")
        _check_keys(table, LEVEL_LIMIT_KEYS, at)
        level_limits[level] = _parse_limits(table, at, LEVEL_LIMIT_KEYS)
        if not level_limits[level].items():
            raise at.error(f"no limit; set one or more of {', '.join(LEVEL_LIMIT_KEYS)}")
    if not limits.items() and not level_limits:
        raise where.error(f"no limit; set {', '.join(LIMIT_KEYS)} or levels.<P3...>, "
                          "or the entry gates nothing")

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
