"""FLOP, parameter and memory budgets: the config schema (:mod:`.config`), baselines
(:mod:`.baseline`), the check (:mod:`.check`), its result cache (:mod:`.cache`), its hints
(:mod:`.hints`) and the JSON Schema of the config (:mod:`.schema`).

Units: GFLOPs = fvcore flops / 1e9 (one fused multiply-add = one flop); Mparams =
parameters / 1e6; the memory limits (``max-peak-mb``, ``max-activation-mb``,
``max-param-mb``) are MiB = 2^20 bytes (fp32). Nothing here imports torch:
:func:`check_budgets` does, to profile, once a config has been read and found valid.
"""

from necktool.budgets.baseline import Baseline, BaselineFigures, load_baseline, save_baseline
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
