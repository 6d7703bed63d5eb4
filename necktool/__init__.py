"""necktool: build, profile, export and budget the feature-pyramid necks of face detectors.

The public API is importable from here; torch-backed names load on first use so that
``import necktool`` (and the CLI's ``--help`` and ``list``) stay instant.

Example:
    >>> import necktool
    >>> result = necktool.profile("scrfd_2.5g")
    >>> result.flops > 0, result.unit
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from necktool.errors import (
    CheckFailed,
    ConfigError,
    CustomNeckError,
    ExitCode,
    ExportError,
    InputError,
    NecktoolError,
    SpecError,
    UnknownNeckError,
    VerificationFailed,
    WeightsError,
)
from necktool.version import __version__

# Everything else loads on first use: ``import necktool`` (and so the CLI's ``--help``)
# pays only for what it touches.
_LAZY = {
    "FAMILIES": "necktool.families",
    "Family": "necktool.families",
    "FamilyInfo": "necktool.families",
    "register_family": "necktool.families",
    "Activation": "necktool.fields",
    "ExtraConvs": "necktool.fields",
    "Norm": "necktool.fields",
    "PRESETS": "necktool.registry",
    "get_spec": "necktool.registry",
    "list_necks": "necktool.registry",
    "register_neck": "necktool.registry",
    "resolve_spec": "necktool.registry",
    "NeckSpec": "necktool.specs",
    "parse_channels": "necktool.specs",
    "parse_size": "necktool.specs",
    "ErrorStat": "necktool.tolerance",
    "Tolerance": "necktool.tolerance",
    "VerifyOptions": "necktool.tolerance",
    "build_neck": "necktool.build",
    "make_inputs": "necktool.build",
    "profile": "necktool.profiling",
    "ProfileResult": "necktool.profiling",
    "BudgetConfig": "necktool.budgets",
    "CheckReport": "necktool.budgets",
    "check_budgets": "necktool.budgets",
    "load_baseline": "necktool.budgets",
    "load_config": "necktool.budgets",
    "save_baseline": "necktool.budgets",
    "export_onnx": "necktool.export",
    "ExportResult": "necktool.export",
    "verify_onnx": "necktool.verify",
    "VerificationResult": "necktool.verify",
    "VerifyReport": "necktool.verify",
    "load_weights": "necktool.weights",
    "inspect_file": "necktool.identify",
    "InspectResult": "necktool.identify",
    "sweep": "necktool.sweep",
    "parse_sizes": "necktool.sweep",
    "SweepResult": "necktool.sweep",
    "bench": "necktool.bench",
    "BenchResult": "necktool.bench",
}

if TYPE_CHECKING:
    from necktool.bench import BenchResult, bench
    from necktool.budgets import (
        BudgetConfig,
        CheckReport,
        check_budgets,
        load_baseline,
        load_config,
        save_baseline,
    )
    from necktool.build import build_neck, make_inputs
    from necktool.export import ExportResult, export_onnx
    from necktool.families import FAMILIES, Family, FamilyInfo, register_family
    from necktool.fields import Activation, ExtraConvs, Norm
    from necktool.identify import InspectResult, inspect_file
    from necktool.profiling import ProfileResult, profile
    from necktool.registry import PRESETS, get_spec, list_necks, register_neck, resolve_spec
    from necktool.specs import NeckSpec, parse_channels, parse_size
    from necktool.sweep import SweepResult, parse_sizes, sweep
    from necktool.tolerance import ErrorStat, Tolerance, VerifyOptions
    from necktool.verify import VerificationResult, VerifyReport, verify_onnx
    from necktool.weights import load_weights


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'necktool' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "FAMILIES",
    "PRESETS",
    "Activation",
    "BenchResult",
    "BudgetConfig",
    "CheckFailed",
    "CheckReport",
    "ConfigError",
    "CustomNeckError",
    "ErrorStat",
    "ExitCode",
    "ExportError",
    "ExportResult",
    "ExtraConvs",
    "Family",
    "FamilyInfo",
    "InputError",
    "InspectResult",
    "NeckSpec",
    "NecktoolError",
    "Norm",
    "ProfileResult",
    "SpecError",
    "SweepResult",
    "Tolerance",
    "UnknownNeckError",
    "VerificationFailed",
    "VerificationResult",
    "VerifyOptions",
    "VerifyReport",
    "WeightsError",
    "__version__",
    "bench",
    "build_neck",
    "check_budgets",
    "export_onnx",
    "get_spec",
    "inspect_file",
    "list_necks",
    "load_baseline",
    "load_config",
    "load_weights",
    "make_inputs",
    "parse_channels",
    "parse_size",
    "parse_sizes",
    "profile",
    "register_family",
    "register_neck",
    "resolve_spec",
    "save_baseline",
    "sweep",
    "verify_onnx",
]
