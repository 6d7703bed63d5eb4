"""FLOP, parameter and memory budgets: the config schema (:mod:`.config`), baselines
(:mod:`.baseline`) and the check (:mod:`.check`).

Units: GFLOPs = fvcore flops / 1e9 (one fused multiply-add = one flop); Mparams =
parameters / 1e6; the memory limits (``max-peak-mb``, ``max-activation-mb``,
``max-param-mb``) are MiB = 2^20 bytes (fp32). Nothing here imports torch until a check
profiles a neck; the names
below load with their module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "necktool.budgets.config": ("METRICS", "Budget", "BudgetConfig", "Limits", "Metric",
                                "find_config", "load_config", "parse_percent"),
    "necktool.budgets.baseline": ("Baseline", "BaselineFigures", "load_baseline",
                                  "save_baseline"),
    "necktool.budgets.check": ("BaselineCheck", "CheckReport", "EntryResult", "LimitCheck",
                               "check_budgets"),
}
_MODULE = {name: module for module, names in _NAMES.items() for name in names}

if TYPE_CHECKING:
    from necktool.budgets.baseline import (
        Baseline,
        BaselineFigures,
        load_baseline,
        save_baseline,
    )
    from necktool.budgets.check import (
        BaselineCheck,
        CheckReport,
        EntryResult,
        LimitCheck,
        check_budgets,
    )
    from necktool.budgets.config import (
        METRICS,
        Budget,
        BudgetConfig,
        Limits,
        Metric,
        find_config,
        load_config,
        parse_percent,
    )


def __getattr__(name: str) -> Any:
    module = _MODULE.get(name)
    if module is None:
        raise AttributeError(f"module 'necktool.budgets' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "METRICS",
    "Baseline",
    "BaselineCheck",
    "BaselineFigures",
    "Budget",
    "BudgetConfig",
    "CheckReport",
    "EntryResult",
    "LimitCheck",
    "Limits",
    "Metric",
    "check_budgets",
    "find_config",
    "load_baseline",
    "load_config",
    "parse_percent",
    "save_baseline",
]
