"""Export a neck to ONNX, check the file, verify it in ONNX Runtime, then write it.

The exporter is PyTorch's maintained one, ``torch.onnx.export(..., dynamo=True)``.
A dynamic export gives each input level's height and width a ``torch.export.Dim`` of its
own (``H_div8, W_div8, H_div16, ...``: level ``k`` of an ``H x W`` image is
``ceil(H/s_k) x ceil(W/s_k)``), so one file serves every image size from the coarsest
stride up (:mod:`necktool.deploy.serving` says exactly which, per family, and the file's metadata
repeats it). A custom neck that cannot run at such sizes in PyTorch gets the levels tied
as the strides tie them (``4*H_div32, 2*H_div32, H_div32``): images whose sides are
multiples of the coarsest stride. Extra output levels (mmdetection's P6, P7) are computed
from the coarsest level, so their sizes follow.

``precision`` fp16 or int8 converts the checked fp32 graph in memory
(:mod:`necktool.deploy.convert`); verification then compares the converted graph with the fp32
PyTorch module, held to that precision's default tolerances.

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
import time
from collections.abc import Callable
from typing import Any

import onnx
import torch
from torch import nn

from necktool.analysis.profiling import analyze, check_batch
from necktool.deploy.convert import CALIBRATION_SEED, REDUCE_RANGE, convert
from necktool.deploy.metadata import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    ExportMetadata,
    TensorInfo,
    conv_macs,
    tensor_infos,
)
from necktool.deploy.options import (
    DEFAULT_CALIBRATION,
    Precision,
    VerifyOptions,
    check_precision,
)
from necktool.deploy.serving import Images, LevelRelation, Served, calibration_shapes, default_cases
from necktool.deploy.verify import (
    VerificationResult,
    compare_onnx,
    reference_threads,
    resolve_provider,
)
from necktool.errors import (
    ExportError,
    InputError,
    SpecError,
    VerificationFailed,
    first_line,
    interrupted,
)
from necktool.files import check_writable, write_file
from necktool.necks.build import make_inputs
from necktool.necks.weights import make_model
from necktool.quiet import quiet
from necktool.report import Block, neck_header, size_text, table
from necktool.resources import export_bytes, forward_bytes, require
from necktool.spec.fields import is_int
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.registry import resolve_spec
from necktool.units import CROSS_CHECK, UNIT_SHORT
from necktool.version import __version__

STEPS = ("build", "count", "export", "check", "convert", "verify", "write")


def export_steps(verify: bool = True, precision: Precision | str = Precision.FP32
                 ) -> tuple[str, ...]:
    """The steps an export reports through ``on_step`` (for a progress bar's total)."""
    skip = {"verify"} if not verify else set()
    if Precision(precision) is Precision.FP32:
        skip.add("convert")
    return tuple(s for s in STEPS if s not in skip)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """An export: the file, what it holds, the conv cross-check and the verification."""

    path: pathlib.Path
    metadata: ExportMetadata
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    conv_macs_onnx: int
    conv_macs_fvcore: int
    conv_macs_flop_counter: int
    verification: VerificationResult | None
    written: bool
    seconds: dict[str, float]
    nbytes: int = 0  # the file's size

    @property
    def precision(self) -> Precision:
        return self.metadata.precision

    @property
    def passed(self) -> bool:
        return self.verification is None or self.verification.passed

    def __bool__(self) -> bool:
        return self.passed

    @property
    def spec(self) -> NeckSpec:
        return self.metadata.spec

    @property
    def opset(self) -> int:
        return self.metadata.opset

    @property
    def dynamic(self) -> bool:
        return self.metadata.dynamic

    @property
    def conv_macs_match(self) -> bool:
        """The three conv counts are equal (an export whose counts differ is refused)."""
        return self.conv_macs_fvcore == self.conv_macs_flop_counter == self.conv_macs_onnx

    def failure(self) -> str | None:
        if self.passed or self.verification is None:
            return None
        state = "left untouched" if self.path.exists() else "not written"
        return f"verification failed, {str(self.path)!r} {state}: {self.verification.summary()}"

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON-ready dict (``verification`` is ``null`` when skipped)."""
        m = self.metadata
        return {
            **neck_header(m.spec, m.input_size, m.batch),
            "format": "onnx",  # the one format (--onnx)
            "path": str(self.path),
            "written": self.written,
            "bytes": self.nbytes,
            "opset": m.opset,
            "dynamic": m.dynamic,
            "serves": m.serves_text(),
            "precision": m.precision.value,
            "calibration": _calibration(m),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "weights": m.weights.to_dict(),
            "flops": m.flops,
            "params": m.params,
            "conv_macs": {"fvcore": self.conv_macs_fvcore,
                          "flop_counter": self.conv_macs_flop_counter,
                          "onnx": self.conv_macs_onnx, "match": self.conv_macs_match},
            "exporter": m.exporter,
            "metadata": m.to_props(),
            "verification": self.verification.to_dict() if self.verification is not None
            else None,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def blocks(self) -> list[Block]:
        """A summary table, then the verification table when verification ran."""
        m = self.metadata
        size = size_text(m.input_size)
        state = "written" if self.written else "NOT written"
        shape = (f"dynamic: {m.dims_note()}; traced at {size}" if m.dynamic
                 else f"static {size}, batch {m.batch}")
        match = "equal" if self.conv_macs_match else "DIFFER"
        rows = [
            ("exporter", f"{m.exporter}, opset {m.opset}"),
            ("precision", precision_text(m)),
            ("serves", m.serves_text()),
            ("shapes", shape),
            ("inputs", "\n".join(map(str, self.inputs))),
            ("outputs", "\n".join(map(str, self.outputs))),
            ("FLOPs", f"{m.flops:,} at {size}, batch {m.batch} ({UNIT_SHORT})"),
            ("conv MACs", f"{self.conv_macs_fvcore:,} (fvcore) / "
                          f"{self.conv_macs_flop_counter:,} ({CROSS_CHECK}) / "
                          f"{self.conv_macs_onnx:,} (ONNX graph): {match}"),
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
        return out


def precision_text(m: ExportMetadata) -> str:
    """What the file's precision means, for the summary table."""
    if m.precision is Precision.FP16:
        return ("fp16: weights and compute float16, inputs and outputs float32 "
                "(onnxruntime.transformers.float16)")
    if m.precision is Precision.INT8:
        shapes = calibration_shapes(m.spec, m.input_size, m.batch, m.serves)
        at = ", ".join(f"{size_text(s)} b{b}" for s, b in shapes)
        return (f"int8: ONNX Runtime static quantization, QDQ, int8 weights (7-bit range) and "
                f"activations, MinMax calibration on {m.calibration} seeded batch(es) ({at}); "
                "inputs and outputs float32")
    return "fp32"


def _calibration(m: ExportMetadata) -> dict[str, Any] | None:
    if m.calibration is None:
        return None
    shapes = calibration_shapes(m.spec, m.input_size, m.batch, m.serves)
    return {"batches": m.calibration,
            "shapes": [{"input_size": list(s), "batch": b} for s, b in shapes],
            "seeds": [CALIBRATION_SEED, CALIBRATION_SEED + m.calibration - 1],
            "method": "MinMax", "format": "QDQ", "reduce_range": REDUCE_RANGE}


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
    if not dynamic:
        return Served.static()
    levels = spec.info.levels
    if levels is not None:
        return Served(Images.ANY, levels)
    if model is not None and not _runs_at_odd_sizes(model, spec):
        return Served(Images.MULTIPLES, LevelRelation.TIED)
    return Served(Images.ANY, LevelRelation.ONE_IMAGE)


def _runs_at_odd_sizes(model: nn.Module, spec: NeckSpec) -> bool:
    s = spec.input_strides[-1]
    size = (2 * s + 1, 3 * s - 5)  # no multiple of s; 3x3 at the coarsest level
    try:
        spec.check_size(size)
    except SpecError:
        return False
    inputs = make_inputs(spec, size, 1, seed=0)
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
                 dynamic: bool, opset: int, served: Served | None = None) -> onnx.ModelProto:
    """Run the dynamo exporter silently and return the ONNX model (no file written).

    ``served`` picks the dynamic dimensions (default: what the family serves, see
    :func:`served_by`).

    Raises:
        ExportError: the exporter failed (its last words in the message).
    """
    kwargs: dict[str, Any] = {
        "dynamo": True,
        "input_names": spec.input_names,
        "output_names": spec.output_names,
        "opset_version": opset,
        "verbose": False,
        "optimize": True,
    }
    if dynamic:
        kwargs["dynamic_shapes"] = dynamic_shapes(spec, served or served_by(spec))
    with quiet() as log:
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
        return program.model_proto


def check_export_request(spec: NeckSpec, *, opset: int, dynamic: bool,
                         served: Served | None = None) -> None:
    """Reject an opset or a traced size the export cannot honour, before any work (a size
    only for a file that serves multiples of the coarsest stride)."""
    if not is_int(opset) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"opset {opset!r} is not supported; use {MIN_OPSET} to {MAX_OPSET} "
                         f"(default {DEFAULT_OPSET})")
    h, w = spec.input_size
    stride = spec.input_strides[-1]
    if dynamic and served is not None and served.images is Images.MULTIPLES \
            and (h % stride or w % stride):
        lo_h, lo_w = max(stride, h // stride * stride), max(stride, w // stride * stride)
        raise InputError(
            f"{spec.label} does not run at image sizes that are no multiples of the coarsest "
            f"stride {stride} in PyTorch, so a dynamic export serves multiples of {stride} "
            f"and is traced at one; {h}x{w} is not. Use --input-size {lo_h}x{lo_w} or "
            f"{lo_h + stride if h % stride else lo_h}x{lo_w + stride if w % stride else lo_w}"
            f", or --static for {h}x{w} only")


def check_export(spec: NeckSpec, *, batch: int, opset: int, dynamic: bool,
                 precision: Precision | str, calibration: int | None,
                 options: VerifyOptions | None) -> tuple[int, Precision, int | None, Served]:
    """Everything that can be wrong with an export of ``spec``, checked before any work:
    batch, opset, traced size, precision and calibration, the memory it needs and, when
    ``options`` is given (verification on), the outputs they name and the provider.

    Returns:
        The checked batch, precision, calibration and what a dynamic file would serve.
    """
    batch = check_batch(batch)
    precision, calibration = check_precision(precision, calibration)
    served = served_by(spec, dynamic=dynamic)
    check_export_request(spec, opset=opset, dynamic=dynamic, served=served)
    need = export_bytes(spec, spec.input_size, batch)
    if calibration:  # ONNX Runtime's calibrator keeps every batch's activations
        need += calibration * forward_bytes(spec, spec.input_size, batch)
    require(need, f"exporting {spec.label} at {size_text(spec.input_size)}, batch {batch},")
    if options is not None:
        options.check_outputs(spec.output_names)
        resolve_provider(options.provider)
    return batch, precision, calibration, served


# -- the export ------------------------------------------------------------------------
def export_onnx(
    neck: str | NeckSpec,
    output: str | os.PathLike[str] | None = None,
    *,
    batch: int = 1,
    dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
    weights: str | os.PathLike[str] | None = None,
    prefix: str | None = None,
    verify: bool = True,
    options: VerifyOptions | None = None,
    precision: Precision | str = Precision.FP32,
    calibration: int | None = None,
    on_step: Callable[[str], None] | None = None,
    **overrides: Any,
) -> ExportResult:
    """Export a neck to ONNX, check and verify it, and only then write ``output``.

    Args:
        neck: A preset name, an import path or a :class:`NeckSpec`.
        output: Destination file; default ``<neck>.onnx`` in the current directory.
        batch: Batch size traced (and fixed, for a static export).
        dynamic: Dynamic batch, height and width (every image size from the coarsest
            stride up; see :mod:`necktool.deploy.serving`); ``False`` fixes the export size.
        opset: ONNX opset, ``MIN_OPSET`` to ``MAX_OPSET``.
        seed: Weight init seed when ``weights`` is not given (norms randomised too).
        weights: A ``.pt``/``.pth`` state dict, loaded strictly (see ``load_weights``).
        prefix: Key prefix selecting the neck in ``weights`` (e.g. ``"fpn."``).
        verify: Compare ONNX Runtime with PyTorch before writing.
        options: Verification tolerances, error statistic, trials and provider; tolerances
            not given are ``precision``'s defaults.
        precision: ``fp32``, ``fp16`` (float16 weights and compute, float32 inputs and
            outputs) or ``int8`` (ONNX Runtime static QDQ quantization).
        calibration: int8 only: seeded calibration batches (default
            :data:`~necktool.deploy.options.DEFAULT_CALIBRATION`).
        on_step: Called with each step's name as it finishes (for a progress bar; the
            steps are :func:`export_steps`).
        **overrides: Spec fields (``input_size=(640, 480)``, ``norm="bn"``...).

    Returns:
        The result; the file is at ``result.path``.

    Raises:
        InputError: bad destination, opset, size, precision or provider (nothing done).
        WeightsError: the weights file does not fit.
        ExportError: the exporter, the conversion or a check failed (nothing written).
        VerificationFailed: ONNX Runtime disagrees (nothing written; ``.result`` has the
            report).

    Example:
        >>> result = export_onnx("scrfd_2.5g", "/tmp/scrfd.onnx", input_size=(320, 320))
        >>> result.verification.passed, result.inputs[0].shape
        (True, ('batch', 48, 'H_div8', 'W_div8'))
    """
    options = options or VerifyOptions()
    step = on_step or (lambda _name: None)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def done(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now
        step(name)

    # Everything that can be wrong with the request is reported before any work.
    spec = resolve_spec(neck, **overrides)
    batch, precision, calibration, served = check_export(
        spec, batch=batch, opset=opset, dynamic=dynamic, precision=precision,
        calibration=calibration, options=options if verify else None)
    dest = check_writable(output if output is not None else f"{spec.label}.onnx",
                          "the ONNX file")

    model, source = make_model(spec, seed=seed, prefix=prefix,
                               weights=None if weights is None else pathlib.Path(weights))
    if dynamic and spec.info.levels is None:  # a custom neck: can it run at every size?
        served = served_by(spec, model)
        check_export_request(spec, opset=opset, dynamic=dynamic, served=served)
    done("build")
    with reference_threads():  # a traced forward: no fast kernels needed
        counted = analyze(model, spec, spec.input_size, batch)
    done("count")
    inputs = make_inputs(spec, spec.input_size, batch, seed=0)
    proto = export_model(model, spec, inputs, dynamic=dynamic, opset=opset, served=served)
    done("export")

    input_shapes = {n: list(t.shape) for n, t in zip(spec.input_names, inputs, strict=True)}
    onnx_macs = conv_macs(proto, input_shapes)
    fvcore_macs = int(counted.operators.get("conv", 0))
    meta = ExportMetadata(
        version=__version__, neck=spec.label, spec=spec, input_size=spec.input_size,
        batch=batch, dynamic=dynamic, opset=opset, flops=counted.flops,
        params=counted.params, conv_macs=onnx_macs, weights=source, exporter=exporter_name(),
        precision=precision, served=served, calibration=calibration)
    _stamp(proto, meta)
    _check_model(proto)
    counter_macs = counted.cross_check.flop_counter_conv_macs
    if not onnx_macs == fvcore_macs == counter_macs:
        raise ExportError(f"conv multiply-adds differ: {onnx_macs:,} in the ONNX graph vs "
                          f"{fvcore_macs:,} from fvcore vs {counter_macs:,} from "
                          f"{CROSS_CHECK} at {size_text(spec.input_size)}; nothing written")
    done("check")
    if precision is not Precision.FP32:
        proto = convert(proto, precision, spec=spec,
                        shapes=calibration_shapes(spec, spec.input_size, batch, served),
                        calibration=calibration or DEFAULT_CALIBRATION)
        _stamp(proto, meta)
        _check_model(proto, f"the {precision.value} graph")
        done("convert")
    data = proto.SerializeToString()
    result = ExportResult(dest, meta, tensor_infos(proto.graph.input),
                          tensor_infos(proto.graph.output), onnx_macs, fvcore_macs,
                          counter_macs, None, False, seconds, nbytes=len(data))

    if verify:
        verification = compare_onnx(
            data, model, spec, cases=default_cases(spec, spec.input_size, batch, served),
            options=options, weights=source.describe(), dynamic=dynamic, precision=precision)
        verification = dataclasses.replace(verification, path=str(dest))
        result = dataclasses.replace(result, verification=verification)
        done("verify")
        if not verification.passed:
            raise VerificationFailed(result.failure() or "verification failed", result)
    write_file(dest, data, "the ONNX file")
    done("write")
    return dataclasses.replace(result, written=True)


def _stamp(proto: onnx.ModelProto, meta: ExportMetadata) -> None:
    """Write ``meta`` into the model's ``metadata_props`` and doc string."""
    del proto.metadata_props[:]
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"necktool {__version__}: {meta.spec.label} neck ({meta.spec.family}),"
                        f" {meta.precision.value}, see metadata_props necktool.*")
