"""Export a neck to ONNX, check the file, verify it in ONNX Runtime, then write it.

The exporter is PyTorch's maintained one, ``torch.onnx.export(..., dynamo=True)``.
A dynamic export gives each input level's height and width a ``torch.export.Dim`` of its
own (``H_div8, W_div8, H_div16, ...``: level ``k`` of an ``H x W`` image is
``ceil(H/s_k) x ceil(W/s_k)``), so one file serves every image size from the coarsest
stride up (:mod:`necktool.artifact.serving` says exactly which, per family, and the file's metadata
repeats it). A custom neck that cannot run at such sizes in PyTorch gets the levels tied
as the strides tie them (``4*H_div32, 2*H_div32, H_div32``): images whose sides are
multiples of the coarsest stride. Extra output levels (mmdetection's P6, P7) are computed
from the coarsest level, so their sizes follow.

``precision`` fp16 or int8 converts the checked fp32 graph in memory
(:mod:`necktool.deploy.precision.convert`); verification then compares the converted
graph with the fp32 PyTorch module, held to that precision's default tolerances.

Nothing is lost: the model stays in memory through ``onnx.checker`` (full check, which
includes strict shape inference), the conv-MAC cross-check (fvcore's count, the
``torch.utils.flop_counter`` formula's and the ONNX graph's must be equal), the
conversion and (unless skipped) verification in ONNX Runtime; only then are its bytes
written, atomically, by :func:`necktool.files.write_file`. Any failure leaves the
destination untouched and no temporary file behind.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any

import onnx
import torch
from torch import nn

from necktool.analysis.profiling import CrossCheck
from necktool.artifact.metadata import ExportMetadata, TensorInfo, conv_macs, tensor_infos
from necktool.artifact.privacy import scrub
from necktool.artifact.serving import Images, LevelRelation, Served, calibration_shapes
from necktool.artifact.stages import PartOf
from necktool.deploy.data import FeatureSet
from necktool.deploy.model import make_model
from necktool.deploy.plan import ExportPlan, StepClock, planned_served
from necktool.deploy.precision.convert import CALIBRATION_SEED, REDUCE_RANGE
from necktool.deploy.precision.loss import PrecisionReport, check_stages
from necktool.deploy.precision.reduce import Reduction, reduce_precision
from necktool.deploy.runtimes.runners import RuntimesVerification
from necktool.deploy.templates import CountCache, TemplateUse, known_counts, templated_graph
from necktool.deploy.verify import VerificationResult, compare_runtimes
from necktool.errors import ExportError, InputError, SpecError, first_line, interrupted
from necktool.files import write_file
from necktool.necks.build import input_tensors
from necktool.necks.layers import UpsampleAdd, set_upsample
from necktool.quiet import no_torch_cache, quiet
from necktool.report import Block, Verdict, size_text, table
from necktool.spec.graph_form import Upsample
from necktool.spec.neck_spec import NeckSpec, neck_header
from necktool.spec.precision import DEFAULT_CALIBRATION, CalibrationMethod, Precision
from necktool.units import CROSS_CHECK, UNIT_SHORT
from necktool.version import __version__


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportResult(Verdict):
    """An export: the file, what it holds, the conv cross-check and the verification."""

    path: pathlib.Path
    metadata: ExportMetadata
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    cross_check: CrossCheck  # fvcore, flop_counter and the ONNX graph's conv MACs
    verification: VerificationResult | RuntimesVerification | None
    written: bool
    seconds: dict[str, float]
    nbytes: int = 0  # the file's size
    plan: ExportPlan | None = None  # what was asked for, checked
    reduced: PrecisionReport | None = None  # fp16/int8: what it was measured on and lost
    template: TemplateUse = dataclasses.field(  # the graph: exported now, or reused
        default_factory=lambda: TemplateUse(False))
    counts_cached: bool = False  # FLOPs, params, conv counts from a result cache

    @property
    def passed(self) -> bool:
        return (self.verification is None or self.verification.passed) \
            and (self.reduced is None or self.reduced.passed)

    def failure(self) -> str | None:
        if self.passed:
            return None
        state = "left untouched" if self.path.exists() else "not written"
        if self.verification is not None and not self.verification.passed:
            return (f"verification failed, {str(self.path)!r} {state}: "
                    f"{self.verification.summary()}")
        assert self.reduced is not None
        return f"{str(self.path)!r} {state}: {self.reduced.summary()}"

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON-ready dict (``verification`` is ``null`` when skipped)."""
        m, c = self.metadata, self.cross_check
        return {
            **neck_header(m.spec, m.input_size, m.batch),
            "format": "onnx",
            "path": str(self.path),
            "written": self.written,
            "bytes": self.nbytes,
            "opset": m.opset,
            "dynamic": m.dynamic,
            "serves": m.serves_text(),
            "precision": m.precision.value,
            "calibration": _calibration(m, self.reduced),
            "upsample": m.upsample.value,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "weights": m.weights.to_dict(),
            "flops": m.flops,
            "params": m.params,
            "conv_macs": {"fvcore": c.fvcore_conv_macs,
                          "flop_counter": c.flop_counter_conv_macs,
                          "onnx": int(c.onnx_conv_macs or 0), "match": c.agree},
            "exporter": m.exporter,
            "template": self.template.to_dict(),
            "counts_from_cache": self.counts_cached,
            "metadata": m.to_props(),
            "verification": self.verification.to_dict() if self.verification is not None
            else None,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "reduced_precision": self.reduced.to_dict() if self.reduced is not None else None,
        }

    def blocks(self) -> list[Block]:
        """A summary table, then the verification table when verification ran."""
        m = self.metadata
        size = size_text(m.input_size)
        state = "written" if self.written else "NOT written"
        shape = (f"dynamic: {m.dims_note()}; traced at {size}" if m.dynamic
                 else f"static {size}, batch {m.batch}")
        c = self.cross_check
        match = "equal" if c.agree else "DIFFER"
        rows = [
            ("exporter", f"{m.exporter}, opset {m.opset}"),
            ("graph", self.template.describe()),
            ("precision", precision_text(m, self.reduced)),
            ("upsample", m.upsample_text()),
            ("serves", m.serves_text()),
            ("shapes", shape),
            ("inputs", "\n".join(map(str, self.inputs))),
            ("outputs", "\n".join(map(str, self.outputs))),
            ("FLOPs", f"{m.flops:,} at {size}, batch {m.batch} ({UNIT_SHORT})"),
            ("conv MACs", f"{c.fvcore_conv_macs:,} (fvcore) / "
                          f"{c.flop_counter_conv_macs:,} ({CROSS_CHECK}) / "
                          f"{c.onnx_conv_macs or 0:,} (ONNX graph): {match}"
                          + ("; the first two from the result cache" if self.counts_cached
                             else "")),
            ("params", f"{m.params:,}"),
            ("weights", m.weights.describe()),
            ("checks", "onnx.checker full check (with strict shape inference): ok"),
            ("verification", self.verification.summary() if self.verification is not None
             else "skipped (--no-verify)"),
        ]
        out: list[Block] = [table(f"{m.neck} -> {self.path} ({state}, "
                                  f"{self.nbytes / 1e6:.2f} MB)", ["field", "value"],
                                  rows, show_header=False)]
        if self.verification is not None:
            out.append(self.verification.table())
        if self.reduced is not None:
            out.extend(self.reduced.blocks())
        return out


def precision_text(m: ExportMetadata, reduced: PrecisionReport | None = None) -> str:
    """What the file's precision means, for the summary table."""
    keep = f"; stages kept in fp32: {','.join(reduced.keep_fp32)}" \
        if reduced is not None and reduced.keep_fp32 else ""
    if m.precision is Precision.FP16:
        return ("fp16: weights and compute float16, inputs and outputs float32 "
                f"(onnxruntime.transformers.float16){keep}")
    if m.precision is Precision.INT8:
        method = _ORT_NAMES[reduced.method] if reduced is not None and reduced.method \
            else "MinMax"
        weights = "per-channel " if reduced is None or reduced.per_channel else "per-tensor "
        if reduced is not None and reduced.data is not None:
            on = (f"{len(reduced.data.calibration)} real feature set(s) "
                  f"({reduced.data.source})")
        else:
            shapes = calibration_shapes(m.spec, m.input_size, m.batch, m.served_shapes)
            at = ", ".join(f"{size_text(s)} b{b}" for s, b in shapes)
            on = f"{m.calibration} seeded batch(es) ({at})"
        return (f"int8: ONNX Runtime static quantization, QDQ, int8 {weights}weights (7-bit "
                f"range) and activations, {method} calibration on {on}{keep}; inputs and "
                "outputs float32")
    return "fp32"


_ORT_NAMES = {CalibrationMethod.MINMAX: "MinMax", CalibrationMethod.PERCENTILE: "Percentile",
              CalibrationMethod.ENTROPY: "Entropy", CalibrationMethod.AUTO: "auto"}


def _calibration(m: ExportMetadata, reduced: PrecisionReport | None = None
                 ) -> dict[str, Any] | None:
    if m.calibration is None:
        return None
    method = reduced.method if reduced is not None and reduced.method else \
        CalibrationMethod.MINMAX
    common = {"method": _ORT_NAMES[method], "format": "QDQ", "reduce_range": REDUCE_RANGE,
              "per_channel": reduced.per_channel if reduced is not None else False}
    if reduced is not None and reduced.data is not None:
        return {"batches": len(reduced.data.calibration), "data": reduced.data.to_dict(),
                **common}
    shapes = calibration_shapes(m.spec, m.input_size, m.batch, m.served_shapes)
    return {"batches": m.calibration,
            "shapes": [{"input_size": list(s), "batch": b} for s, b in shapes],
            "seeds": [CALIBRATION_SEED, CALIBRATION_SEED + m.calibration - 1],
            "data": None, **common}


# -- helpers ----------------------------------------------------------------------------
def dynamic_shapes(spec: NeckSpec, served: Served) -> tuple[list[dict[int, Any]]]:
    """The ``torch.export.Dim`` of every input level (see the module docstring): each
    level's own ``H_div{s}``/``W_div{s}`` for a file serving every size, else the levels
    tied as the strides tie them."""
    from torch.export import Dim

    batch = Dim("batch", min=1)
    if served.images is Images.ANY:
        return ([{0: batch, 2: Dim(f"H_div{s}", min=1), 3: Dim(f"W_div{s}", min=1)}
                 for s in spec.input_strides],)
    stride = spec.input_strides[-1]
    h = Dim(f"H_div{stride}", min=1)
    w = Dim(f"W_div{stride}", min=1)
    levels = spec.num_inputs
    shapes = []
    for k in range(levels):
        scale = 2 ** (levels - 1 - k)
        shapes.append({0: batch, 2: scale * h if scale > 1 else h,
                       3: scale * w if scale > 1 else w})
    return (shapes,)


def served_by(spec: NeckSpec, model: nn.Module | None = None, *,
              dynamic: bool = True) -> Served:
    """What a dynamic export of ``spec`` serves: the family says, or (a custom neck) the
    module is run once at an odd size in PyTorch: every size if that works, else
    multiples of the coarsest stride."""
    served = planned_served(spec, dynamic)
    if served.dynamic and spec.info.levels is None and model is not None \
            and not _runs_at_odd_sizes(model, spec):
        return Served(Images.MULTIPLES, LevelRelation.TIED)
    return served


def _runs_at_odd_sizes(model: nn.Module, spec: NeckSpec) -> bool:
    s = spec.input_strides[-1]
    size = (2 * s + 1, 3 * s - 5)  # no multiple of s; 3x3 at the coarsest level
    try:
        spec.check_size(size)
    except SpecError:
        return False
    inputs = input_tensors(spec, size, 1, seed=0)
    try:
        with torch.no_grad():
            outs = model(inputs)
        shapes = [tuple(o.shape[2:]) for o in outs]
    except KeyboardInterrupt:
        raise
    except BaseException:  # user code: anything it raises means "not at this size"
        return False
    return shapes == spec.level_sizes(size)


def _check_model(model: onnx.ModelProto, what: str = "the exported graph") -> None:
    """``onnx.checker`` full check, which includes strict, type-checked shape inference.

    Raises:
        ExportError: the checker or its shape inference rejected the graph.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # checker raises ValidationError or InferenceError
        raise ExportError(f"onnx.checker (full check, strict shape inference) rejected "
                          f"{what}: {first_line(exc)}") from None



def exporter_name() -> str:
    return f"torch.onnx.export(dynamo=True), torch {torch.__version__}"


def export_model(model: nn.Module, spec: NeckSpec, inputs: list[torch.Tensor], *,
                 dynamic: bool, opset: int, served: Served | None = None,
                 optimize: bool = True) -> onnx.ModelProto:
    """Run the dynamo exporter silently and return the ONNX model (no file written).

    ``served`` picks the dynamic dimensions (default: what the family serves, see
    :func:`served_by`); ``optimize=False`` skips the exporter's ONNX optimizer (an
    export runs it after keeping the traced graph as a template).

    Raises:
        ExportError: the exporter failed (its last words in the message).
    """
    kwargs: dict[str, Any] = {
        "dynamo": True,
        "input_names": spec.input_names,
        "output_names": spec.output_names,
        "opset_version": opset,
        "verbose": False,
        "optimize": optimize,
    }
    if dynamic:
        kwargs["dynamic_shapes"] = dynamic_shapes(spec, served or served_by(spec))
    with quiet() as log, no_torch_cache():
        try:
            program = torch.onnx.export(model, (inputs,), **kwargs)
        except Exception as exc:  # the exporter raises many error types
            if interrupted(exc):  # it wraps a Ctrl-C/SIGTERM that landed inside it
                raise KeyboardInterrupt from None
            said = [ln for ln in log.getvalue().splitlines() if ln.strip()]
            hint = f" (last exporter output: {said[-1].strip()[:200]})" if said else ""
            raise ExportError(f"the ONNX exporter failed: {first_line(exc)}{hint}") \
                from None
        if program is None:  # only when f= is given; kept for the type checker
            raise ExportError("the ONNX exporter returned no program")
        # The one place an exported graph leaves the exporter: nothing past here sees the
        # exporter's stack traces (absolute paths of this machine), only the name scopes.
        return scrub(program.model_proto)


# -- the export ------------------------------------------------------------------------
def export_onnx(neck: str | NeckSpec, output: str | os.PathLike[str] | None = None, *,
                on_step: Callable[[str], None] | None = None, **keywords: Any) -> ExportResult:
    """Export a neck to ONNX, check and verify it, and only then write ``output``.

    Builds an :class:`~necktool.deploy.plan.ExportPlan` (every check) and runs it
    (:func:`run_export`). The keywords are the fields of the one export request,
    :class:`~necktool.deploy.plan.ExportRequest` (below), and the neck's build flags.

    Args:
        neck: A preset name, an import path or a :class:`NeckSpec`.
        output: Destination file; default ``<neck>.onnx`` in the current directory.
        on_step: Called with each step's name as it finishes (for a progress bar; the
            steps are the plan's :attr:`~necktool.deploy.plan.ExportPlan.steps`).
        batch: Batch size traced (and fixed, for a static export).
        dynamic: Dynamic batch, height and width (every image size from the coarsest
            stride up; see :mod:`necktool.artifact.serving`); ``False`` fixes the export size.
        opset: ONNX opset, ``MIN_OPSET`` to ``MAX_OPSET``.
        seed: Weight init seed when ``weights`` is not given (norms randomised too;
            default 0).
        weights: A ``.pt``/``.pth`` state dict, loaded strictly (see ``load_weights``), or
            a :class:`~necktool.artifact.metadata.WeightsRequest` (which then holds the seed
            and prefix too).
        prefix: Key prefix selecting the neck in ``weights`` (e.g. ``"fpn."``).
        verify: Compare ONNX Runtime with PyTorch before writing.
        options: Verification tolerances, error statistic, trials and provider; tolerances
            not given are ``precision``'s defaults.
        precision: ``fp32``, ``fp16`` (float16 weights and compute, float32 inputs and
            outputs) or ``int8`` (ONNX Runtime static QDQ quantization).
        calibration: int8 only: seeded calibration batches (default
            :data:`~necktool.deploy.tolerance.DEFAULT_CALIBRATION`).
        upsample: How the file writes nearest upsampling: ``size`` (a Resize to the finer
            level's size, PyTorch's form) or ``scale2`` (a constant x2 Resize and a crop,
            which converters that freeze a size-computed Resize keep). The numbers, the
            FLOPs (counted on the ``size`` form) and the conv MACs are the same.
        runtimes: Where verification runs the file (:mod:`necktool.deploy.runtimes.runners`):
            ``ort`` (default), ``openvino``, ``openvino:bf16``, ``ncnn``; several at once
            give one result, which passes when every runtime passed.
        reduction: fp16/int8: calibration data and method, stages kept in fp32, per-stage
            SQNR, an SQNR floor (see :mod:`necktool.deploy.precision.reduce`); with data,
            verification runs on its held-out feature sets.
        cache: Reuse the graph of an earlier export of the same structure and keep this
            one (:mod:`necktool.deploy.templates`); ``False`` runs the exporter.
        **flags: Spec fields (``input_size=(640, 480)``, ``norm="bn"``...).

    Returns:
        The result; the file is at ``result.path``. When ONNX Runtime disagrees with
        PyTorch the result is falsy, ``written`` is ``False`` and the destination is left
        untouched (no exception: ``result.failure()`` says why).

    Raises:
        InputError: bad destination, opset, size, precision, provider or upsample form
            (nothing done).
        WeightsError: the weights file does not fit.
        ExportError: the exporter, the conversion or a check failed (nothing written).

    Example:
        >>> result = export_onnx("scrfd_2.5g", "/tmp/scrfd.onnx", input_size=(320, 320))
        >>> result.verification.passed, result.inputs[0].shape
        (True, ('batch', 48, 'H_div8', 'W_div8'))
    """
    return run_export(ExportPlan.build(neck, output, **keywords), on_step=on_step)


def run_export(plan: ExportPlan, *, on_step: Callable[[str], None] | None = None,
               counts: CountCache | None = None) -> ExportResult:
    """Run a checked plan: build, count, export, check, convert, verify, then write.

    Nothing the plan holds is checked again. When verification fails the result is falsy
    (``written=False``, the destination untouched); that is no exception. A graph exported
    before is reused (:mod:`necktool.deploy.templates`, unless the request says no
    cache); ``counts``: a result cache that may already hold the structure's counts.

    Raises:
        WeightsError: the weights file does not fit.
        ExportError: the exporter, the conversion or a check failed (nothing written).
        InputError: a custom neck's file would serve multiples of the coarsest stride
            and the traced size is none.
    """
    done = StepClock(on_step)
    seconds = done.seconds

    spec, batch, req = plan.spec, plan.batch, plan.request
    precision, reduction = req.precision, req.reduction
    model, source = make_model(spec, plan.request.weights)
    if plan.request.upsample is not Upsample.SIZE \
            and not any(isinstance(m, UpsampleAdd) for m in model.modules()):
        raise InputError(f"--upsample {req.upsample.value} rewrites necktool's UpsampleAdd "
                         f"modules, and {spec.label} has none (it upsamples in its own code); "
                         f"leave --upsample at {Upsample.SIZE.value}")
    if reduction is not None and reduction.keep_fp32:  # a bad stage name: before the work
        parts = [_part_of(model)(n) for n, _ in model.named_modules()]
        check_stages(reduction.keep_fp32, list(dict.fromkeys(p[0] for p in parts if p)))
    if plan.probe:  # a custom neck: can it run at every size?
        plan = plan.with_served(served_by(spec, model))
    served = plan.served
    done("build")
    counted = known_counts(model, spec, batch, counts)
    done("count")
    # After counting: the neck's FLOPs are the size form's whatever the file writes (fvcore
    # would count a scale2 upsample's uncropped 2x output). Verification then compares the
    # file with the module in the form it was exported in.
    set_upsample(model, plan.request.upsample)
    inputs = input_tensors(spec, spec.input_size, batch, seed=0)
    proto, template = templated_graph(plan, model, lambda: export_model(
        model, spec, inputs, dynamic=req.dynamic, opset=req.opset, served=served,
        optimize=False))
    done("export")

    input_shapes = {n: list(t.shape) for n, t in zip(spec.input_names, inputs, strict=True)}
    cross_check = counted.cross_check.with_onnx(conv_macs(proto, input_shapes))
    calibration = plan.request.calibration
    if calibration and reduction is not None and reduction.data is not None:
        calibration = len(reduction.data.calibration)  # what the metadata records
    meta = ExportMetadata(
        version=__version__, neck=spec.label, spec=spec, input_size=spec.input_size,
        batch=batch, dynamic=plan.request.dynamic, opset=plan.request.opset, flops=counted.flops,
        params=counted.params, conv_macs=int(cross_check.onnx_conv_macs or 0),
        weights=source, exporter=exporter_name(), precision=precision, served=served,
        calibration=calibration, upsample=plan.request.upsample)
    _stamp(proto, meta)
    _check_model(proto)
    if not cross_check.agree:
        raise ExportError(f"conv multiply-adds differ: {cross_check.onnx_conv_macs:,} in the "
                          f"ONNX graph vs {cross_check.fvcore_conv_macs:,} from fvcore vs "
                          f"{cross_check.flop_counter_conv_macs:,} from {CROSS_CHECK} at "
                          f"{size_text(spec.input_size)}; nothing written")
    done("check")
    reduced = None
    if precision is not Precision.FP32:
        proto, reduced = reduce_precision(
            proto, precision, spec=spec, part_of=_part_of(model),
            shapes=calibration_shapes(spec, spec.input_size, batch, served),
            calibration=calibration or DEFAULT_CALIBRATION, how=reduction)
        _stamp(proto, meta)
        _check_model(proto, f"the {precision.value} graph")
        done("convert")
    data = proto.SerializeToString()
    result = ExportResult(path=plan.output, metadata=meta, inputs=tensor_infos(proto.graph.input),
                          outputs=tensor_infos(proto.graph.output), cross_check=cross_check,
                          verification=None, written=False, seconds=seconds, nbytes=len(data),
                          plan=plan, reduced=reduced, template=template,
                          counts_cached=counted.cached)

    if plan.request.options is not None:
        verification = compare_runtimes(
            data, model, spec, runtimes=req.runtimes, cases=plan.cases, options=req.options,
            weights=source.describe(), dynamic=plan.request.dynamic, precision=precision,
            path=str(plan.output), features=_verification_data(reduction),
            measured_on=reduction.data.describe() if reduction and reduction.data else "")
        result = dataclasses.replace(result, verification=verification)
        done("verify")
        if not verification.passed:
            return result  # falsy: nothing written, the destination untouched
    if not result.passed:  # an SQNR floor (--min-sqnr) not met: nothing written either
        return result
    write_file(plan.output, data, "the ONNX file")
    done("write")
    return dataclasses.replace(result, written=True)


def _part_of(model: nn.Module) -> PartOf:
    """The neck's stage map (a custom neck without one has no stages)."""
    part_of = getattr(model, "part_of", None)
    return part_of if callable(part_of) else (lambda _path: None)


def _verification_data(reduction: Reduction | None) -> tuple[FeatureSet, ...] | None:
    if reduction is None or reduction.data is None:
        return None
    return reduction.data.verification


def _stamp(proto: onnx.ModelProto, meta: ExportMetadata) -> None:
    """Write ``meta`` into the model's ``metadata_props`` and doc string."""
    del proto.metadata_props[:]
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"necktool {__version__}: {meta.spec.label} neck ({meta.spec.family}),"
                        f" {meta.precision.value}, see metadata_props necktool.*")
