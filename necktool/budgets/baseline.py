"""Baselines: the figures of a past ``necktool check``, to gate growth against (JSON).

A baseline is written by ``check --save-baseline`` and read, never as pickle, by
``check --baseline``. Version 1 holds per entry its neck, size, batch, the whole-neck
counts (``flops``, ``params``, and any later metric: ``peak_activation_bytes``,
``activation_bytes``, ``param_bytes``) and the per-level counts. A baseline saved before a
metric existed still loads; that metric's growth is simply not checked against it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from necktool.budgets.config import METRICS
from necktool.errors import ConfigError
from necktool.files import write_file
from necktool.spec.fields import is_int
from necktool.units import UNIT, UNIT_NOTE
from necktool.version import __version__

BASELINE_VERSION = 1
REQUIRED = ("flops", "params")  # every version-1 baseline has these; later metrics may be absent
MAX_BASELINE_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class BaselineFigures:
    """One entry's saved whole-neck counts, by metric base name (``flops``, ``params``...)."""

    counts: Mapping[str, int]

    @property
    def flops(self) -> int:
        return self.counts["flops"]

    @property
    def params(self) -> int:
        return self.counts["params"]


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
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BASELINE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{where}: baseline file not found; create one with "
                          "--save-baseline FILE") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read baseline: "
                          f"{(exc.strerror or str(exc)).lower()}") from None
    if len(raw) > MAX_BASELINE_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_BASELINE_BYTES >> 20} MiB; not a baseline")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{where}: baseline is not valid JSON: {type(exc).__name__}: "
                          f"{str(exc)[:200]}") from None
    bad = f"{where}: not a necktool baseline (version {BASELINE_VERSION}): "
    if not isinstance(data, dict) or data.get("version") != BASELINE_VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise ConfigError(bad + f"version is {str(version)[:40]}; save a new one with "
                          "--save-baseline")
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise ConfigError(bad + "'entries' must be an object")
    figures: dict[str, BaselineFigures] = {}
    bases = [m.base for m in METRICS]
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not all(_count(entry.get(k)) for k in REQUIRED):
            raise ConfigError(bad + f"entries.{str(name)[:60]} needs integer "
                              f"{' and '.join(map(repr, REQUIRED))}")
        figures[name] = BaselineFigures({b: int(entry[b]) for b in bases if _count(entry.get(b))})
    return Baseline(path=where, entries=figures)


def _count(value: Any) -> bool:
    return is_int(value) and 0 <= value < 2**63


def baseline_document(config_display: str,
                      entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON a baseline file holds, given each entry's figures."""
    return {
        "version": BASELINE_VERSION,
        "necktool_version": __version__,
        "unit": UNIT,
        "unit_note": UNIT_NOTE,
        "config": config_display,
        "entries": {name: dict(figures) for name, figures in entries.items()},
    }


class HasBaseline(Protocol):
    def baseline_document(self) -> dict[str, Any]: ...


def save_baseline(report: HasBaseline | Mapping[str, Any], path: Path) -> None:
    """Write a check report's figures (or a baseline document) as JSON, atomically.

    Raises:
        ConfigError: the file cannot be written.
    """
    document = report if isinstance(report, Mapping) else report.baseline_document()
    write_file(path, (json.dumps(document, indent=2) + "\n").encode(), "baseline", ConfigError)
