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
    "FAMILIES": "necktool.spec.families",
    "Family": "necktool.spec.families",
    "FamilyInfo": "necktool.spec.families",
    "register_family": "necktool.spec.families",
    "Activation": "necktool.spec.fields",
    "ExtraConvs": "necktool.spec.fields",
    "Norm": "necktool.spec.fields",
    "PRESETS": "necktool.spec.registry",
    "get_spec": "necktool.spec.registry",
    "list_necks": "necktool.spec.registry",
    "register_neck": "necktool.spec.registry",
    "resolve_spec": "necktool.spec.registry",
    "NeckSpec": "necktool.spec.neck_spec",
    "parse_channels": "necktool.spec.neck_spec",
    "parse_size": "necktool.spec.neck_spec",
    "ErrorStat": "necktool.deploy.tolerance",
    "Tolerance": "necktool.deploy.tolerance",
    "VerifyOptions": "necktool.deploy.tolerance",
    "build_neck": "necktool.necks.build",
    "make_inputs": "necktool.necks.build",
    "profile": "necktool.analysis.profiling",
    "ProfilePlan": "necktool.analysis.plan",
    "BenchPlan": "necktool.latency.plan",
    "ExportPlan": "necktool.deploy.plan",
    "VerifyPlan": "necktool.deploy.plan",
    "WeightsRequest": "necktool.spec.weights",
    "ProfileResult": "necktool.analysis.profiling",
    "BudgetConfig": "necktool.budgets",
    "CheckReport": "necktool.budgets",
    "check_budgets": "necktool.budgets",
    "load_baseline": "necktool.budgets",
    "load_config": "necktool.budgets",
    "save_baseline": "necktool.budgets",
    "export_onnx": "necktool.deploy.export",
    "ExportResult": "necktool.deploy.export",
    "export_ncnn": "necktool.deploy.runtimes.ncnn_export",
    "NcnnExportResult": "necktool.deploy.runtimes.ncnn_export",
    "verify_onnx": "necktool.deploy.verify",
    "VerificationResult": "necktool.deploy.verify",
    "VerifyReport": "necktool.deploy.verify",
    "load_weights": "necktool.deploy.model",
    "inspect_file": "necktool.detector.identify",
    "InspectResult": "necktool.detector.identify",
    "sweep": "necktool.analysis.sweep",
    "parse_sizes": "necktool.analysis.sweep",
    "SweepResult": "necktool.analysis.sweep",
    "bench": "necktool.latency.bench",
    "BenchResult": "necktool.latency.bench",
}

if TYPE_CHECKING:
    from necktool.analysis.plan import ProfilePlan
    from necktool.analysis.profiling import ProfileResult, profile
    from necktool.analysis.sweep import SweepResult, parse_sizes, sweep
    from necktool.budgets import (
        BudgetConfig,
        CheckReport,
        check_budgets,
        load_baseline,
        load_config,
        save_baseline,
    )
    from necktool.deploy.export import ExportResult, export_onnx
    from necktool.deploy.model import load_weights
    from necktool.deploy.plan import ExportPlan, VerifyPlan
    from necktool.deploy.runtimes.ncnn_export import NcnnExportResult, export_ncnn
    from necktool.deploy.tolerance import ErrorStat, Tolerance, VerifyOptions
    from necktool.deploy.verify import VerificationResult, VerifyReport, verify_onnx
    from necktool.detector.identify import InspectResult, inspect_file
    from necktool.latency.bench import BenchResult, bench
    from necktool.latency.plan import BenchPlan
    from necktool.necks.build import build_neck, make_inputs
    from necktool.spec.families import FAMILIES, Family, FamilyInfo, register_family
    from necktool.spec.fields import Activation, ExtraConvs, Norm
    from necktool.spec.neck_spec import NeckSpec, parse_channels, parse_size
    from necktool.spec.registry import PRESETS, get_spec, list_necks, register_neck, resolve_spec
    from necktool.spec.weights import WeightsRequest


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'necktool' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "FAMILIES",
    "PRESETS",
    "Activation",
    "BenchPlan",
    "BenchResult",
    "BudgetConfig",
    "CheckFailed",
    "CheckReport",
    "ConfigError",
    "CustomNeckError",
    "ErrorStat",
    "ExitCode",
    "ExportError",
    "ExportPlan",
    "ExportResult",
    "ExtraConvs",
    "Family",
    "FamilyInfo",
    "InputError",
    "InspectResult",
    "NcnnExportResult",
    "NeckSpec",
    "NecktoolError",
    "Norm",
    "ProfilePlan",
    "ProfileResult",
    "SpecError",
    "SweepResult",
    "Tolerance",
    "UnknownNeckError",
    "VerificationFailed",
    "VerificationResult",
    "VerifyOptions",
    "VerifyPlan",
    "VerifyReport",
    "WeightsError",
    "WeightsRequest",
    "__version__",
    "bench",
    "build_neck",
    "check_budgets",
    "export_ncnn",
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
