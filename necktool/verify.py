"""Compare an ONNX file, run by ONNX Runtime, with the PyTorch neck it came from.

The rule is :mod:`necktool.tolerance`'s: per output, with the element excess
``e = |ort - torch| - rtol * |torch|``, the output passes when ``stat(e) <= atol``
(``elemwise``: every element, i.e. ``numpy.isclose``'s rule; this is stricter than
Polygraphy, which fails an element only when it breaks both tolerances). Per output and
case it reports the max and mean absolute error, the max relative error (over elements
where PyTorch is non-zero), the smallest ``atol`` that would have passed at the given
``rtol``, and non-finite values on either side. Each case runs ``trials`` seeded random
inputs; the statistics are aggregated over them (max of maxima, mean over all elements,
the worst trial's ``mean``/``median`` excess).

For a dynamic file the cases are the export size plus a smaller non-square size and a
batch-2 size, all multiples of the coarsest stride.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from necktool import quiet
from necktool.artifact import (
    DamagedMetadata,
    GraphInfo,
    WeightSource,
    describe,
    load_model,
    read_metadata,
)
from necktool.build import make_inputs
from necktool.errors import InputError
from necktool.registry import resolve_spec
from necktool.report import Block, Note, Table, neck_header, num, size_text, table
from necktool.specs import NeckSpec
from necktool.tolerance import ErrorStat, VerifyOptions
from necktool.weights import make_model, sha256_of

INPUT_SEED = 1234  # base seed of the verification inputs (trial t of case c: +100c+t)


@dataclasses.dataclass(frozen=True)
class Case:
    """One input shape to compare at."""

    input_size: tuple[int, int]
    batch: int
    label: str

    @property
    def title(self) -> str:
        return f"{size_text(self.input_size)} b{self.batch}"


@dataclasses.dataclass(frozen=True)
class OutputComparison:
    """ONNX Runtime vs PyTorch for one output level over a case's trials."""

    name: str
    shape: tuple[int, ...]
    atol: float
    rtol: float
    max_abs: float
    mean_abs: float
    max_rel: float
    min_atol: float  # the error statistic of the excess (>= 0): the smallest passing atol
    failed: int  # elements over tolerance (non-finite ones included)
    elements: int
    nonfinite_ort: int
    nonfinite_torch: int
    error_stat: ErrorStat = ErrorStat.ELEMWISE
    note: str = ""

    @property
    def passed(self) -> bool:
        within = self.failed == 0 if self.error_stat is ErrorStat.ELEMWISE \
            else self.min_atol <= self.atol
        return within and self.nonfinite_ort == 0 and self.nonfinite_torch == 0 \
            and not self.note

    def __bool__(self) -> bool:
        return self.passed

    def merge(self, other: OutputComparison) -> OutputComparison:
        """Aggregate two trials of the same output."""
        n = self.elements + other.elements
        return dataclasses.replace(
            self,
            max_abs=max(self.max_abs, other.max_abs),
            mean_abs=(self.mean_abs * self.elements + other.mean_abs * other.elements) / n
            if n else 0.0,
            max_rel=max(self.max_rel, other.max_rel),
            min_atol=max(self.min_atol, other.min_atol),
            failed=self.failed + other.failed,
            elements=n,
            nonfinite_ort=self.nonfinite_ort + other.nonfinite_ort,
            nonfinite_torch=self.nonfinite_torch + other.nonfinite_torch,
            note=self.note or other.note,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "max_abs": _finite(self.max_abs),
            "mean_abs": _finite(self.mean_abs),
            "max_rel": _finite(self.max_rel),
            "min_atol": _finite(self.min_atol),
            "failed_elements": self.failed,
            "elements": self.elements,
            "nonfinite_ort": self.nonfinite_ort,
            "nonfinite_torch": self.nonfinite_torch,
            **({"note": self.note} if self.note else {}),
        }


@dataclasses.dataclass(frozen=True)
class CaseComparison:
    """Every output at one input shape."""

    case: Case
    seeds: tuple[int, ...]
    outputs: tuple[OutputComparison, ...]

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.case.label,
            "input_size": list(self.case.input_size),
            "batch": self.case.batch,
            "seeds": list(self.seeds),
            "passed": self.passed,
            "outputs": [o.to_dict() for o in self.outputs],
        }


@dataclasses.dataclass(frozen=True)
class VerificationResult:
    """The whole comparison; true when every output of every case passed."""

    path: str
    neck: str
    options: VerifyOptions
    provider: str  # the resolved ONNX Runtime provider
    dynamic: bool
    weights: str
    cases: tuple[CaseComparison, ...]

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def checks(self) -> list[tuple[Case, OutputComparison]]:
        return [(c.case, o) for c in self.cases for o in c.outputs]

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for _, o in self.checks), default=0.0)

    @property
    def min_atol(self) -> float:
        return max((o.min_atol for _, o in self.checks), default=0.0)

    @property
    def tolerance_text(self) -> str:
        o = self.options
        stat = "" if o.error_stat is ErrorStat.ELEMWISE else f", {o.error_stat.value} error"
        return f"atol={o.atol}, rtol={o.rtol}{stat}"

    def summary(self) -> str:
        """One line: verdict, how many checks, and how close it came."""
        checks = self.checks
        tol = self.tolerance_text
        if self.passed:
            return (f"PASS: {len(checks)} output checks in {len(self.cases)} case(s) within "
                    f"{tol} (largest |ort - torch| {self.max_abs:.2e}; smallest passing "
                    f"atol {self.min_atol:.2e})")
        bad = [(c, o) for c, o in checks if not o.passed]
        case, worst = max(bad, key=lambda co: (co[1].min_atol, co[1].failed))
        detail = worst.note or (f"{worst.failed} of {worst.elements} elements over tolerance, "
                                f"max |ort - torch| {worst.max_abs:.3g}")
        return (f"FAIL: {len(bad)} of {len(checks)} output checks over {tol}; worst "
                f"{worst.name} at {case.title}: {detail}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "path": self.path,
            "neck": self.neck,
            **self.options.to_dict(),
            "provider": self.provider,
            "dynamic": self.dynamic,
            "weights": self.weights,
            "max_abs": _finite(self.max_abs),
            "min_atol": _finite(self.min_atol),
            "summary": self.summary(),
            "cases": [c.to_dict() for c in self.cases],
        }

    def table(self) -> Table:
        """One row per case and output (shapes are in the export summary)."""
        rows, sections = [], []
        for cmp in self.cases:
            for i, out in enumerate(cmp.outputs):
                verdict = "PASS" if out.passed else \
                    f"FAIL {out.failed:,} el." + (f" {out.note}" if out.note else "")
                rows.append((cmp.case.title if i == 0 else "", out.name, f"{out.max_abs:.1e}",
                             f"{out.mean_abs:.1e}", f"{out.max_rel:.1e}", f"{out.min_atol:.1e}",
                             str(out.nonfinite_ort + out.nonfinite_torch), verdict))
            sections.append(len(rows) - 1)
        return table(
            f"ONNX Runtime ({self.provider}) vs PyTorch: {self.neck}",
            ["case", "out", num("max abs"), num("mean abs"), num("max rel"), num("min atol"),
             num("NaN/Inf"), "result"], rows, sections=tuple(sections), verdict=7,
            caption=f"{self.options.trials} seeded trial(s) per case; an output passes when "
                    f"every element has |ort - torch| <= atol + rtol * |torch| "
                    f"({self.tolerance_text}); max rel over elements where torch != 0; "
                    f"weights: {self.weights}\n{self.summary()}")

    def blocks(self) -> list[Block]:
        return [self.table()]


def _finite(value: float) -> float | None:
    """JSON has no inf/NaN: those become null."""
    return float(value) if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """``verify_onnx``'s result: the file, the neck it was checked against, the comparison."""

    path: str
    spec: NeckSpec
    batch: int
    graph: GraphInfo
    verification: VerificationResult

    @property
    def passed(self) -> bool:
        return self.verification.passed

    def __bool__(self) -> bool:
        return self.passed

    @property
    def max_abs(self) -> float:
        return self.verification.max_abs

    def summary(self) -> str:
        return self.verification.summary()

    def failure(self) -> str | None:
        return None if self.passed else \
            f"verification of {self.path!r} failed: {self.summary()}"

    def to_dict(self) -> dict[str, Any]:
        """The same top-level keys as ``export --json`` (path, opset, dynamic, inputs,
        outputs, verification), after the per-neck header."""
        return {
            **neck_header(self.spec, self.spec.input_size, self.batch),
            "path": self.path,
            "opset": self.graph.opset,
            "dynamic": self.graph.dynamic,
            "inputs": [t.to_dict() for t in self.graph.inputs],
            "outputs": [t.to_dict() for t in self.graph.outputs],
            "verification": self.verification.to_dict(),
        }

    def blocks(self) -> list[Block]:
        out: list[Block] = [self.verification.table()]
        if not self.passed:
            out.append(Note(self.summary(), "fail"))
        return out


# -- cases -----------------------------------------------------------------------------
def default_cases(spec: NeckSpec, input_size: tuple[int, int], batch: int,
                  dynamic: bool) -> list[Case]:
    """The export size; for a dynamic file also a smaller non-square size and batch 2.

    The extra sizes are multiples of the coarsest stride (what a dynamic file accepts),
    about half the export size so verification stays cheap.
    """
    cases = [Case((int(input_size[0]), int(input_size[1])), batch, "export size")]
    if dynamic:
        stride = spec.input_strides[-1]
        # At least 2x2 at the coarsest level: a 1-pixel map makes GroupNorm statistics
        # ill-conditioned (groups of 1-2 elements), which tests fp32, not the export.
        half = max(2, min(input_size) // stride // 2)
        while cases[0].input_size in {(stride * half, stride * (half + 1)),
                                      (stride * (half + 1), stride * half)}:
            half += 1  # the extra sizes must differ from the export size
        tall = (stride * (half + 1), stride * half)
        wide = (stride * half, stride * (half + 1))
        cases.append(Case(wide, 1, "non-square"))
        cases.append(Case(tall, 2, "batch 2"))
    return cases


# -- running ---------------------------------------------------------------------------
def resolve_provider(name: str) -> str:
    """Full ONNX Runtime provider name from ``cpu``/``cuda``/``CPUExecutionProvider``."""
    ort = quiet.onnxruntime()

    available = ort.get_available_providers()
    wanted = name if name.lower().endswith("executionprovider") else f"{name}ExecutionProvider"
    for provider in available:
        if provider.lower() == wanted.lower():
            return str(provider)
    raise InputError(f"ONNX Runtime provider {name!r} is not available here; "
                     f"available: {', '.join(available)}")


ModelSource = str | pathlib.Path | bytes  # a file, or a serialized model still in memory


def _name(source: ModelSource) -> str:
    return "the exported model" if isinstance(source, bytes) else repr(str(source))


def open_session(source: ModelSource, provider: str) -> Any:
    """An ONNX Runtime session on ``provider`` only, with ORT's own logging quiet."""
    ort = quiet.onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    model = source if isinstance(source, bytes) else str(source)
    try:
        return ort.InferenceSession(model, sess_options=options, providers=[provider])
    except Exception as exc:  # ORT raises its own untyped Fail/InvalidGraph errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"ONNX Runtime cannot load {_name(source)}: {first}") from None


def _run_torch(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        outs = model(list(inputs))
    return [o.detach().cpu().numpy() for o in outs]


def _run_ort(session: Any, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    feeds = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
    return list(session.run(None, feeds))


def compare_arrays(name: str, ort_out: np.ndarray, torch_out: np.ndarray, atol: float,
                   rtol: float, error_stat: ErrorStat = ErrorStat.ELEMWISE
                   ) -> OutputComparison:
    """Statistics for one output of one trial (see the module docstring)."""
    shape = tuple(int(d) for d in torch_out.shape)
    if tuple(ort_out.shape) != shape:
        return OutputComparison(name, shape, atol, rtol, math.inf, math.inf, math.inf, math.inf,
                                int(np.prod(shape)), int(np.prod(shape)), 0, 0, error_stat,
                                note=f"shape {tuple(ort_out.shape)} != torch {shape}")
    got = ort_out.astype(np.float64)
    ref = torch_out.astype(np.float64)
    nonfinite_ort = int((~np.isfinite(got)).sum())
    nonfinite_torch = int((~np.isfinite(ref)).sum())
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(got - ref)
        ok = diff <= atol + rtol * np.abs(ref)  # NaN compares false, so a NaN element fails
    finite = np.isfinite(diff)
    fdiff = diff[finite]
    max_abs = float(fdiff.max()) if fdiff.size else 0.0
    mean_abs = float(fdiff.mean()) if fdiff.size else 0.0
    nonzero = finite & (ref != 0)
    max_rel = float((diff[nonzero] / np.abs(ref[nonzero])).max()) if nonzero.any() else 0.0
    if finite.all():
        excess = diff - rtol * np.abs(ref)
        stats: dict[ErrorStat, Callable[[np.ndarray], Any]] = {
            ErrorStat.ELEMWISE: np.max, ErrorStat.MEAN: np.mean, ErrorStat.MEDIAN: np.median}
        stat = stats[error_stat]
        min_atol = max(0.0, float(stat(excess))) if excess.size else 0.0
    else:
        min_atol = math.inf
    return OutputComparison(name, shape, atol, rtol, max_abs, mean_abs, max_rel, min_atol,
                            int((~ok).sum()), int(diff.size), nonfinite_ort, nonfinite_torch,
                            error_stat)


def compare_onnx(
    source: ModelSource,
    model: nn.Module,
    spec: NeckSpec,
    *,
    cases: Sequence[Case],
    options: VerifyOptions,
    weights: str = "",
    dynamic: bool = False,
) -> VerificationResult:
    """Run ``path`` in ONNX Runtime and ``model`` in PyTorch on the same seeded inputs.

    Args:
        source: The ONNX file, or its bytes.
        model: The PyTorch neck it should match (eval mode).
        spec: The neck's spec (channels and strides make the inputs).
        cases: Input shapes to compare at (see :func:`default_cases`).
        options: Tolerances, error statistic, trials per case and provider.

    Raises:
        InputError: the provider is missing, the file does not load or does not have the
            neck's inputs and outputs, or a tolerance names an output it does not have.
    """
    provider = resolve_provider(options.provider)
    session = open_session(source, provider)
    n_in, n_out = len(session.get_inputs()), len(session.get_outputs())
    if n_in != spec.num_inputs or n_out != spec.num_levels:
        raise InputError(f"{_name(source)} has {n_in} input(s) and {n_out} output(s); the neck "
                         f"has {spec.num_inputs} inputs ({', '.join(spec.input_names)}) and "
                         f"{spec.num_levels} outputs")
    out_names = [o.name for o in session.get_outputs()]
    options.check_outputs(out_names)
    results = []
    for c, case in enumerate(cases):
        seeds = tuple(INPUT_SEED + 100 * c + t for t in range(options.trials))
        merged: list[OutputComparison] = []
        for s in seeds:
            inputs = make_inputs(spec, case.input_size, case.batch, seed=s)
            _check_static_shapes(session, inputs, source)
            ref = _run_torch(model, inputs)
            got = _run_ort(session, inputs)
            trial = [compare_arrays(n, g, r, *options.tolerances(n), options.error_stat)
                     for n, g, r in zip(out_names, got, ref, strict=True)]
            merged = trial if not merged else [a.merge(b) for a, b in zip(merged, trial,
                                                                           strict=True)]
        results.append(CaseComparison(case, seeds, tuple(merged)))
    path = "" if isinstance(source, bytes) else str(source)
    return VerificationResult(path, spec.label, options, provider, dynamic, weights,
                              tuple(results))


def _check_static_shapes(session: Any, inputs: Sequence[torch.Tensor],
                         source: ModelSource) -> None:
    """A clear error instead of ORT's when a static file expects other input shapes."""
    for meta, tensor in zip(session.get_inputs(), inputs, strict=True):
        want = list(meta.shape)
        got = list(tensor.shape)
        if len(want) != len(got) or any(isinstance(w, int) and w != g
                                         for w, g in zip(want, got, strict=True)):
            raise InputError(f"{_name(source)} expects input {meta.name} of shape {want}, but the "
                             f"neck at this size gives {got}; check --input-size, --batch and "
                             "the build flags")


# -- verify an existing file -------------------------------------------------------------
def verify_onnx(
    path: str | pathlib.Path,
    *,
    neck: str | NeckSpec | None = None,
    seed: int | None = None,
    weights: str | pathlib.Path | None = None,
    prefix: str | None = None,
    batch: int | None = None,
    options: VerifyOptions | None = None,
    **overrides: Any,
) -> VerifyReport:
    """Re-check an ONNX file against the neck rebuilt from its metadata (or from ``neck``).

    Args:
        path: An ONNX file, normally written by :func:`necktool.export_onnx`.
        neck: Which neck the file holds; needed when the file has no necktool metadata,
            unless ``weights`` holds a neck :mod:`necktool.identify` recognises; and for a
            custom neck: the file's import path is imported only when ``neck`` names the
            same one.
        seed, weights, prefix: Override how the weights are made (default: as recorded).
        batch: Batch of the export-size case (default: as recorded, else 1).
        options: Tolerances, error statistic, trials and provider (fp32 defaults).
        **overrides: Spec fields (``input_size=(320, 320)``...); ``None`` is ignored.

    Returns:
        The report; ``bool(report)`` is whether it passed.

    Raises:
        InputError: no such file, not ONNX, damaged metadata, or no metadata and no ``neck``.
        WeightsError: the recorded or given weights cannot be loaded.

    Example:
        >>> report = verify_onnx("scrfd_2.5g.onnx")  # doctest: +SKIP
        >>> bool(report), report.summary()  # doctest: +SKIP
    """
    options = options or VerifyOptions()
    file = pathlib.Path(path)
    if not file.is_file():
        raise InputError(f"ONNX file {str(file)!r} does not exist or is not a file")
    proto = load_model(str(file))
    try:
        meta = read_metadata(proto)
    except DamagedMetadata:
        if neck is None:
            raise
        meta = None  # the user says what the file holds; the metadata is not needed
    recorded = meta.spec.factory if meta is not None else None
    if recorded is not None and neck is None:  # a file's import path is no permission to run it
        raise InputError(
            f"{str(file)!r} records the custom neck {recorded!r}; necktool imports a "
            f"module only when you name it: pass --neck {recorded} to allow it")
    if meta is not None and (neck is None or neck == recorded):
        spec = meta.spec.replace(**overrides)
        source = meta.weights
    elif neck is not None:
        spec = resolve_spec(neck, **overrides)
        source = WeightSource("seed", seed=seed or 0)
    elif weights is not None:  # no metadata, but the weights say which neck they hold
        from necktool.identify import identify_checkpoint

        found = identify_checkpoint(weights, prefix)
        spec = found.neck_spec.replace(**overrides)
        prefix = prefix or found.load_prefix
        source = WeightSource("file", path=str(weights), prefix=prefix)
    else:
        raise InputError(
            f"{str(file)!r} carries no necktool metadata (it was not written by 'necktool "
            "export'); pass --neck NAME and the build flags that describe the neck it holds, "
            "or --weights FILE holding a neck necktool recognises")
    if seed is not None:
        source = WeightSource("seed", seed=seed)
    if weights is not None:
        source = WeightSource("file", path=str(weights), prefix=prefix)
    elif source.source == "file":
        weights_file = pathlib.Path(source.path or "")
        if not weights_file.is_file() or sha256_of(weights_file) != source.sha256:
            raise InputError(f"{str(file)!r} was exported from weights file {source.path!r} "
                             f"(sha256 {str(source.sha256)[:12]}...), which is not there or "
                             "has changed; pass --weights FILE (and --prefix)")
    model, source = make_model(spec, seed=source.seed or 0, weights=source.path,
                               prefix=source.prefix if source.source == "file" else None)
    graph = describe(proto)
    if batch is None:
        batch = meta.batch if meta is not None and neck is None else 1
    cases = default_cases(spec, spec.input_size, batch, graph.dynamic)
    verification = compare_onnx(file, model, spec, cases=cases, options=options,
                                weights=source.describe(), dynamic=graph.dynamic)
    return VerifyReport(str(file), spec, batch, graph, verification)
