"""Compare an ONNX file, run by ONNX Runtime, with the PyTorch neck it came from.

The rule is :mod:`necktool.deploy.tolerance`'s: per output, with the element excess
``e = |ort - torch| - rtol * |torch|``, the output passes when ``stat(e) <= atol``
(``elemwise``: every element, i.e. ``numpy.isclose``'s rule; this is stricter than
Polygraphy, which fails an element only when it breaks both tolerances). Per output and
case it reports the max and mean absolute error, the max relative error (over elements
where PyTorch is non-zero), the smallest ``atol`` that would have passed at the given
``rtol``, and non-finite values on either side. Each case runs ``trials`` seeded random
inputs; the statistics are aggregated over them (max of maxima, mean over all elements,
the worst trial's ``mean``/``median`` excess). Two more figures tell how much of the signal
survives, which matters for fp16 and int8 files: the SQNR,
``10 log10(sum torch^2 / sum (ort - torch)^2)`` in dB, and the cosine similarity of the two
outputs, both over every element of every trial.

The reference is always the fp32 PyTorch module; an fp16 or int8 file is held to its
precision's default tolerances (:data:`necktool.deploy.tolerance.PRECISION_DEFAULTS`) unless the
user gives others. The cases are :func:`necktool.artifact.serving.default_cases`: the export size,
and for a dynamic file two more sizes it serves (odd, non-square, one in batch 2).

``runtime`` runs the file in OpenVINO, or the neck converted by pnnx in ncnn, instead of
ONNX Runtime (:mod:`necktool.deploy.runtimes.runners`), with the same cases and statistics;
:func:`compare_runtimes` runs several and returns them as one result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from necktool.artifact.metadata import GraphInfo
from necktool.artifact.serving import Case, Served, default_cases
from necktool.deploy.comparison import (
    CaseComparison,
    OutputComparison,
    VerificationResult,
)
from necktool.deploy.data import Data, DataRequest, FeatureSet, image_side
from necktool.deploy.model import make_model
from necktool.deploy.plan import VerifyPlan, checked_options
from necktool.deploy.precision.loss import PrecisionReport
from necktool.deploy.runtimes.ncnn_pair import NcnnPair
from necktool.deploy.runtimes.runners import (
    ModelSource,
    OrtRunner,
    Runner,
    RuntimesVerification,
    open_runner,
    source_name,
)
from necktool.deploy.tolerance import ErrorStat, VerifyOptions
from necktool.errors import InputError
from necktool.necks.build import input_tensors
from necktool.necks.layers import set_upsample
from necktool.report import Block, Note, Verdict
from necktool.spec.graph_form import Upsample
from necktool.spec.neck_spec import NeckSpec, neck_header
from necktool.spec.precision import Precision
from necktool.spec.runtimes import Runtime, require_runtime
from necktool.spec.weights import WeightSource, WeightsRequest

INPUT_SEED = 1234  # base seed of the verification inputs (trial t of case c: +100c+t)
# Re-exported: the results and cases live in torch-free modules.
__all__ = ["Case", "CaseComparison", "OutputComparison", "VerificationResult", "VerifyPlan",
           "default_cases"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerifyReport(Verdict):
    """``verify_onnx``'s result: the file, the neck it was checked against, the comparison."""

    path: str
    spec: NeckSpec
    batch: int
    graph: GraphInfo
    verification: VerificationResult | RuntimesVerification
    served: Served | None = None  # which inputs the file serves
    upsample: Upsample = Upsample.SIZE  # the form the neck was rebuilt in (the file's)
    reduced: PrecisionReport | None = None  # --stages: per-stage SQNR against fp32
    # How the reference was made, for a second look (file_stages); not rendered.
    source: WeightSource | None = dataclasses.field(default=None, compare=False, repr=False)
    data: Data | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def serves_text(self) -> str:
        """Which inputs the file serves, in one sentence."""
        if self.served is None:
            return ""
        return self.served.describe(self.spec, self.spec.input_size, self.batch)

    @property
    def passed(self) -> bool:
        return self.verification.passed

    def summary(self) -> str:
        return self.verification.summary()

    def failure(self) -> str | None:
        return None if self.passed else \
            f"verification of {self.path!r} failed: {self.summary()}"

    def stand_in(self) -> str | None:
        """What ran in place of the file, said plainly: ncnn loads no ONNX file, so its
        rows are a pnnx conversion of the neck the file describes, not the file."""
        v = self.verification
        results = v.results if isinstance(v, RuntimesVerification) else (v,)
        if not any(r.runtime == Runtime.NCNN.value for r in results):
            return None
        weights = self.source.describe() if self.source is not None else "its weights"
        return (f"ncnn did not run {self.path}: ncnn loads no ONNX file, so the ncnn rows "
                f"are the neck the file describes ({self.spec.label}, {weights}) converted "
                "from PyTorch by pnnx; only the other runtimes ran the file itself")

    def to_dict(self) -> dict[str, Any]:
        """The same top-level keys as ``export --json`` (path, opset, dynamic, inputs,
        outputs, verification), after the per-neck header."""
        return {
            **neck_header(self.spec, self.spec.input_size, self.batch),
            "path": self.path,
            "opset": self.graph.opset,
            "dynamic": self.graph.dynamic,
            "precision": self.verification.precision.value,
            "serves": self.serves_text,
            "upsample": self.upsample.value,
            "inputs": [t.to_dict() for t in self.graph.inputs],
            "outputs": [t.to_dict() for t in self.graph.outputs],
            "verification": self.verification.to_dict(),
            "reduced_precision": self.reduced.to_dict() if self.reduced is not None else None,
            "not_the_file": self.stand_in(),
        }

    def blocks(self) -> list[Block]:
        out: list[Block] = [self.verification.table()]
        if (instead := self.stand_in()) is not None:
            out.append(Note(instead, "warn"))
        if self.serves_text:
            out.append(Note(f"{self.path} ({self.verification.precision.value}, upsample "
                            f"{self.upsample.value}) serves {self.serves_text}"))
        if self.verification.precision is Precision.INT8 and not self.verification.measured_on:
            out.append(Note("this int8 file was verified on synthetic normal inputs; "
                            "backbone features are non-negative, skewed and heavy-tailed, so "
                            "verify it on real features (--calibration-data, or --images "
                            "with --backbone)", "warn"))
        if self.reduced is not None:
            out.extend(self.reduced.blocks())
        if not self.passed:
            out.append(Note(self.summary(), "fail"))
        return out


# -- running ---------------------------------------------------------------------------
@contextlib.contextmanager
def reference_threads() -> Iterator[int]:
    """torch's intra-op threads for reference forwards (verification, counting), lowered
    to the cores other processes leave free; restored afterwards.

    OpenMP threads spin-wait for cores that other processes hold: on a busy 2-core
    machine one scrfd_2.5g forward at 640x640 took 0.73 s on torch's 2 threads and 0.045 s
    on one (measured). With ``OMP_NUM_THREADS`` set, torch's setting is left alone.
    """
    previous = torch.get_num_threads()
    wanted = previous
    if "OMP_NUM_THREADS" not in os.environ:
        with contextlib.suppress(OSError, AttributeError):  # no load average here
            idle = (os.cpu_count() or 1) - os.getloadavg()[0]  # this process counts as 1
            wanted = max(1, min(previous, int(idle) + 1))
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(previous)


def _run_torch(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        outs = model(list(inputs))
    return [o.detach().cpu().numpy() for o in outs]


def _failed_run(name: str, torch_out: np.ndarray, atol: float, rtol: float,
                error_stat: ErrorStat, why: str, who: str = "ONNX Runtime") -> OutputComparison:
    shape = tuple(int(d) for d in torch_out.shape)
    n = int(np.prod(shape))
    return OutputComparison(name=name, shape=shape, atol=atol, rtol=rtol, max_abs=math.inf,
                            mean_abs=math.inf, max_rel=math.inf, min_atol=math.inf,
                            failed_elements=n, elements=n, nonfinite_ort=0, nonfinite_torch=0,
                            error_stat=error_stat, note=f"{who} failed: {why}")


def compare_arrays(name: str, ort_out: np.ndarray, torch_out: np.ndarray, atol: float,
                   rtol: float, error_stat: ErrorStat = ErrorStat.ELEMWISE, *,
                   atol_scaled: bool = False) -> OutputComparison:
    """Statistics for one output of one trial (see the module docstring); with
    ``atol_scaled`` the ``atol`` is multiplied by ``max(1, RMS(torch_out))``."""
    shape = tuple(int(d) for d in torch_out.shape)
    if atol_scaled and torch_out.size:
        rms = math.sqrt(_dot(torch_out.ravel(), torch_out.ravel()) / torch_out.size)
        atol = atol * max(1.0, rms) if math.isfinite(rms) else atol
    if tuple(ort_out.shape) != shape:
        return OutputComparison(name=name, shape=shape, atol=atol, rtol=rtol, max_abs=math.inf,
                                mean_abs=math.inf, max_rel=math.inf, min_atol=math.inf,
                                failed_elements=int(np.prod(shape)), elements=int(np.prod(shape)),
                                nonfinite_ort=0, nonfinite_torch=0, error_stat=error_stat,
                                note=f"shape {tuple(ort_out.shape)} != torch {shape}")
    # float32 elementwise (each output is float32; float64 ones stay float64), float64 sums;
    # few temporaries and no BLAS: on a busy machine fresh large arrays cost milliseconds
    # in page faults, and BLAS's spinning threads tens of milliseconds a call.
    dtype = np.result_type(ort_out.dtype, torch_out.dtype, np.float32)
    got = np.ascontiguousarray(ort_out, dtype=dtype).ravel()
    ref = np.ascontiguousarray(torch_out, dtype=dtype).ravel()
    nonfinite_ort, nonfinite_torch = _nonfinite(got), _nonfinite(ref)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        err = np.subtract(got, ref)
        diff = np.abs(err)
        size = np.abs(ref)
        excess = np.multiply(size, rtol)
        np.subtract(diff, excess, out=excess)
        ok = int(np.count_nonzero(excess <= atol))  # NaN compares false: a NaN fails
        finite = None if not (nonfinite_ort or nonfinite_torch) else np.isfinite(diff)
        usable = size > 0 if finite is None else finite & (size > 0)
        rel = np.divide(diff, size, out=np.zeros_like(diff), where=usable)
    fdiff = diff if finite is None else diff[finite]
    max_abs = float(fdiff.max()) if fdiff.size else 0.0
    mean_abs = float(fdiff.mean(dtype=np.float64)) if fdiff.size else 0.0
    max_rel = float(rel.max()) if rel.size else 0.0
    if finite is None:
        stats: dict[ErrorStat, Callable[[np.ndarray], Any]] = {
            ErrorStat.ELEMWISE: np.max, ErrorStat.MEAN: np.mean, ErrorStat.MEDIAN: np.median}
        stat = stats[error_stat]
        min_atol = max(0.0, float(stat(excess))) if excess.size else 0.0
        g, r, e = got, ref, err
    else:
        min_atol = math.inf
        both = np.isfinite(got) & np.isfinite(ref)
        g, r, e = got[both], ref[both], err[both]
    return OutputComparison(name=name, shape=shape, atol=atol, rtol=rtol, max_abs=max_abs,
                            mean_abs=mean_abs, max_rel=max_rel, min_atol=min_atol,
                            failed_elements=int(diff.size) - ok, elements=int(diff.size),
                            nonfinite_ort=nonfinite_ort, nonfinite_torch=nonfinite_torch,
                            error_stat=error_stat, signal=_dot(r, r), noise=_dot(e, e),
                            dot=_dot(g, r), energy=_dot(g, g))


def _nonfinite(x: np.ndarray) -> int:
    """Non-finite elements (the float64 sum of finite float32 values cannot overflow)."""
    if math.isfinite(float(np.sum(x, dtype=np.float64))):
        return 0
    return int(x.size - np.count_nonzero(np.isfinite(x)))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.einsum("i,i->", a, b, dtype=np.float64))


def compare_onnx(
    source: ModelSource,
    model: nn.Module,
    spec: NeckSpec,
    *,
    cases: Sequence[Case],
    options: VerifyOptions,
    weights: str = "",
    dynamic: bool = False,
    precision: Precision = Precision.FP32,
    path: str | None = None,
    runtime: Runtime = Runtime.ORT,
    ncnn_pair: NcnnPair | None = None,
    features: Sequence[FeatureSet] | None = None,
    measured_on: str = "",
) -> VerificationResult:
    """Run ``source`` in ONNX Runtime (or ``runtime``) and ``model`` in PyTorch on the same
    seeded inputs (or, with ``features``, on those feature sets instead of ``cases``: one
    case each).

    Args:
        source: The ONNX file, or its bytes.
        model: The PyTorch neck it should match (eval mode, fp32).
        spec: The neck's spec (channels and strides make the inputs).
        cases: Input shapes to compare at (see :func:`default_cases`).
        options: Tolerances, error statistic, trials and provider; tolerances
            not given are ``precision``'s defaults.
        precision: The file's precision (its default tolerances; reported).
        path: The file the result names (default: ``source`` when it is a file, else "").
        runtime: What runs the file (:mod:`necktool.deploy.runtimes.runners`): ``Runtime.ORT``,
            ``OPENVINO``, ``OPENVINO_BF16``, or ``NCNN``, which runs ``ncnn_pair`` (default:
            ``model`` converted by pnnx, as ``necktool export --to ncnn`` converts it).

    A run that ONNX Runtime refuses (a size the file does not serve) is a failed case
    whose note quotes ORT's error.

    Raises:
        InputError: the provider is missing, the file does not load or does not have the
            neck's inputs and outputs, or a tolerance names an output it does not have.
    """
    options = checked_options(options, precision)
    return run_comparison(source, model, spec, cases=cases, options=options, weights=weights,
                          dynamic=dynamic, precision=precision, path=path, check_outputs=True,
                          runtime=require_runtime(runtime), ncnn_pair=ncnn_pair,
                          features=features, measured_on=measured_on)


def run_comparison(
    source: ModelSource,
    model: nn.Module,
    spec: NeckSpec,
    *,
    cases: Sequence[Case],
    options: VerifyOptions,
    weights: str,
    dynamic: bool,
    precision: Precision,
    path: str | None = None,
    check_outputs: bool = False,
    on_case: Callable[[str], None] | None = None,
    runtime: Runtime = Runtime.ORT,
    ncnn_pair: NcnnPair | None = None,
    features: Sequence[FeatureSet] | None = None,
    measured_on: str = "",
) -> VerificationResult:
    """:func:`compare_onnx` with ``options`` already checked by a plan (tolerances
    resolved, the provider's full name, tolerances naming outputs the file has) and
    ``runtime`` known to be installed: nothing is checked again unless ``check_outputs``."""
    runner = open_runner(runtime, source, model, spec, options.provider, ncnn_pair)
    provider = runner.provider if isinstance(runner, OrtRunner) else runner.describe()
    n_in, n_out = len(runner.input_names), len(runner.output_names)
    if n_in != spec.num_inputs or n_out != spec.num_levels:
        raise InputError(f"{source_name(source)} has {n_in} input(s) and {n_out} output(s); "
                         f"the neck "
                         f"has {spec.num_inputs} inputs ({', '.join(spec.input_names)}) and "
                         f"{spec.num_levels} outputs")
    out_names = runner.output_names
    if check_outputs:
        options.check_outputs(out_names)
    results = []
    with reference_threads():
        if features is not None:
            for f in features:
                results.append(_compare_features(runner, model, spec, f, out_names, options))
                if on_case is not None:
                    on_case(f.name)
        else:
            for c, case in enumerate(cases):
                results.append(_compare_case(runner, model, spec, c, case, out_names,
                                             options, source))
                if on_case is not None:
                    on_case(case.title)
    if path is None:
        path = "" if isinstance(source, bytes) else str(source)
    return VerificationResult(path=path, neck=spec.label, options=options, provider=provider,
                              dynamic=dynamic, weights=weights, cases=tuple(results),
                              precision=precision, runtime=runner.runtime.value,
                              measured_on=measured_on if features is not None else "")


def compare_runtimes(source: ModelSource, model: nn.Module, spec: NeckSpec, *,
                     runtimes: Sequence[Runtime], **kwargs: Any
                     ) -> VerificationResult | RuntimesVerification:
    """:func:`run_comparison` in each of a plan's runtimes (checked there): one runtime's
    result, or all of them as one
    (:class:`~necktool.deploy.runtimes.runners.RuntimesVerification`)."""
    results = tuple(run_comparison(source, model, spec, runtime=r, **kwargs)
                    for r in runtimes)
    return results[0] if len(results) == 1 else RuntimesVerification(results)


def _compare_case(runner: Runner, model: nn.Module, spec: NeckSpec, c: int, case: Case,
                  out_names: list[str], options: VerifyOptions,
                  source: ModelSource) -> CaseComparison:
    """Case ``c``: ``options.trials`` seeded inputs, the statistics merged over them."""
    seeds = tuple(INPUT_SEED + 100 * c + t for t in range(options.trials))
    merged: list[OutputComparison] = []
    for s in seeds:
        inputs = input_tensors(spec, case.input_size, case.batch, seed=s)
        _check_static_shapes(runner, inputs, source)
        ref = _run_torch(model, inputs)
        got = runner.run([t.numpy() for t in inputs])
        if isinstance(got, str):
            who = runner.runtime.label
            trial = [_failed_run(n, r, *options.tolerances(n), options.error_stat, got, who)
                     for n, r in zip(out_names, ref, strict=True)]
        else:
            trial = [compare_arrays(n, g, r, *options.tolerances(n), options.error_stat,
                                    atol_scaled=options.atol_scaled)
                     for n, g, r in zip(out_names, got, ref, strict=True)]
        merged = trial if not merged else [a.merge(b) for a, b in zip(merged, trial,
                                                                       strict=True)]
    return CaseComparison(case, seeds, tuple(merged))


def _compare_features(runner: Runner, model: nn.Module, spec: NeckSpec, features: FeatureSet,
                      out_names: list[str], options: VerifyOptions) -> CaseComparison:
    """One case on a given feature set (real data; no trials to repeat)."""
    inputs = [torch.from_numpy(a) for a in features.arrays]
    ref = _run_torch(model, inputs)
    got = runner.run([a for a in features.arrays])
    if isinstance(got, str):
        outs = [_failed_run(n, r, *options.tolerances(n), options.error_stat, got,
                            runner.runtime.label)
                for n, r in zip(out_names, ref, strict=True)]
    else:
        outs = [compare_arrays(n, g, r, *options.tolerances(n), options.error_stat,
                               atol_scaled=options.atol_scaled)
                for n, g, r in zip(out_names, got, ref, strict=True)]
    return CaseComparison(features_case(spec, features), (), tuple(outs))


def features_case(spec: NeckSpec, features: FeatureSet) -> Case:
    """A feature set as a case: the smallest image its finest level fits, its name."""
    (h, w), stride = features.sizes[0], spec.input_strides[0]
    sides = [image_side([s[axis] for s in features.sizes], spec.input_strides)
             or (h, w)[axis] * stride for axis in (0, 1)]
    return Case((sides[0], sides[1]), features.batch, features.name)


def _check_static_shapes(runner: Runner, inputs: Sequence[torch.Tensor],
                         source: ModelSource) -> None:
    """A clear error instead of the runtime's when a static file expects other shapes."""
    for name, want, tensor in zip(runner.input_names, runner.input_shapes(), inputs,
                                  strict=False):
        got = list(tensor.shape)
        if len(want) != len(got) or any(isinstance(w, int) and w != g
                                         for w, g in zip(want, got, strict=True)):
            raise InputError(f"{source_name(source)} expects input {name} of shape {want}, but the "
                             f"neck at this size gives {got}; check --input-size, --batch and "
                             "the build flags")


# -- verify an existing file -------------------------------------------------------------
def verify_onnx(
    path: str | pathlib.Path,
    *,
    neck: str | NeckSpec | None = None,
    seed: int | None = None,
    weights: str | pathlib.Path | WeightsRequest | None = None,
    prefix: str | None = None,
    batch: int | None = None,
    options: VerifyOptions | None = None,
    upsample: Upsample | str | None = None,
    runtimes: Sequence[Runtime | str] = (Runtime.ORT,),
    data: DataRequest | None = None,
    **overrides: Any,
) -> VerifyReport:
    """Re-check an ONNX file against the neck rebuilt from its metadata (or from ``neck``).

    Builds a :class:`~necktool.deploy.plan.VerifyPlan` (every check) and runs it
    (:func:`run_verify`).

    Args:
        path: An ONNX file, normally written by :func:`necktool.export_onnx`.
        neck: Which neck the file holds; needed when the file has no necktool metadata,
            unless ``weights`` holds a neck :mod:`necktool.detector.identify` recognises; and for a
            custom neck: the file's import path is imported only when ``neck`` names the
            same one.
        seed, weights, prefix: Override how the weights are made (default: as recorded);
            ``weights`` may be a :class:`~necktool.artifact.metadata.WeightsRequest`.
        batch: Batch of the export-size case (default: as recorded, else 1).
        options: Tolerances, error statistic, trials and provider; tolerances not given
            are the defaults of the file's precision (its metadata; for a file without
            one, or converted after export, what its graph holds).
        upsample: The form the neck is rebuilt in (``size`` or ``scale2``); default: the
            file's (its metadata; ``size`` for a file without one).
        runtimes: What runs the file (``ort``, ``openvino``, ``openvino:bf16``, ``ncnn``:
            the neck converted by pnnx from the PyTorch module); several give one result.
        data: Real feature sets (``--calibration-data`` or ``--images``): verification
            runs on the held-out part (the same split the export calibrated on).
            :func:`necktool.deploy.precision.audit.verify_stages` adds the per-stage SQNR.
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
    request = weights if isinstance(weights, WeightsRequest) else WeightsRequest(
        seed=seed, path=None if weights is None else pathlib.Path(weights), prefix=prefix)
    plan = VerifyPlan.build(path, neck=neck, weights=request, batch=batch, options=options,
                            upsample=upsample, runtimes=runtimes, data=data, **overrides)
    return run_verify(plan)


def run_verify(plan: VerifyPlan, *, on_case: Callable[[str], None] | None = None
               ) -> VerifyReport:
    """Run a checked plan: make the PyTorch module, compare the file with it case by case
    (or on the plan's held-out real features), in each of the plan's runtimes.

    ``on_case`` is called with each case's title once compared (a progress bar of
    :attr:`~necktool.deploy.plan.VerifyPlan.steps`).

    Raises:
        WeightsError: the weights cannot be loaded.
        InputError: a runtime cannot load the file, or it does not have the neck's inputs
            and outputs; the data does not fit the neck.
    """
    model, source = make_model(plan.spec, plan.weights)
    set_upsample(model, plan.upsample)  # the file's own form: compare like with like
    loaded = plan.data.load(plan.spec) if plan.data is not None else None
    verification = compare_runtimes(
        plan.path, model, plan.spec, runtimes=plan.runtimes, cases=plan.cases,
        options=plan.options, weights=source.describe(), dynamic=plan.graph.dynamic,
        precision=plan.precision, path=str(plan.path), on_case=on_case,
        features=loaded.verification if loaded is not None else None,
        measured_on=loaded.describe() if loaded is not None else "")
    return VerifyReport(path=str(plan.path), spec=plan.spec, batch=plan.batch, graph=plan.graph,
                        verification=verification, served=plan.served, upsample=plan.upsample,
                        source=source, data=loaded)
