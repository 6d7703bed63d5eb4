"""What an export will do, checked once at the border (torch-free).

:meth:`ExportPlan.build` turns a neck, a destination and an :class:`ExportRequest` (batch,
opset, precision, calibration, a weights request, verification options, ...) into a frozen
plan, doing every
check an export needs before any work: the neck resolves, the batch, opset, precision
and calibration are in range, the traced size suits what the file will serve, the memory
fits, the tolerances name outputs the neck has, the ONNX Runtime provider exists and the
destination can be written. :func:`necktool.deploy.export.run_export` runs the plan and
never checks these again; the plan also says what the run will report (:attr:`ExportPlan.steps`,
a progress bar's total) and where verification compares (:attr:`ExportPlan.cases`).

:meth:`ExportPlan.content_hash` is stable: the SHA-256 of a canonical JSON of the fields
that decide the file and its verification (the resolved spec, batch, dynamic, opset,
precision, calibration, the weights' seed or file SHA-256, the verification options and
what the file serves), not the destination path and not necktool's version (a cache adds
the versions it depends on).

A new export option is one field of :class:`ExportRequest` (with its default), the line of
its ``__post_init__`` that checks it and its entry in :meth:`~ExportRequest.to_dict`; the
CLI passes the flag into the request, library keywords reach it through
:meth:`ExportRequest.of`, and the run reads it from ``plan.request``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from necktool import quiet
from necktool.analysis.plan import check_batch, content_hash
from necktool.artifact.metadata import (
    DamagedMetadata,
    GraphInfo,
    TensorInfo,
    describe,
    graph_precision,
    load_model,
    read_metadata,
)
from necktool.artifact.serving import Case, Images, LevelRelation, Served, default_cases
from necktool.deploy.data import DataRequest, check_static_fit
from necktool.deploy.tolerance import VerifyOptions
from necktool.errors import InputError
from necktool.files import check_writable, file_sha256
from necktool.report import size_text
from necktool.spec.fields import is_int
from necktool.spec.graph_form import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, Upsample, check_upsample
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.precision import Precision, check_precision
from necktool.spec.registry import resolve_spec
from necktool.spec.resources import export_bytes, forward_bytes, require
from necktool.spec.runtimes import Runtime, parse_runtime, parse_runtimes, require_runtime
from necktool.spec.weights import WeightsRequest

if TYPE_CHECKING:  # reduce imports onnxruntime's quantization tools: only when used
    from necktool.deploy.precision.reduce import Reduction

#: Every step an export can report, in order (:attr:`ExportPlan.steps` drops the ones a
#: plan skips).
STEPS = ("build", "count", "export", "check", "convert", "verify", "write")


class StepClock:
    """Called with each step's name as it finishes: records its seconds (``seconds``)
    and passes the name on to ``on_step`` (a progress bar of the plan's ``steps``)."""

    def __init__(self, on_step: Callable[[str], None] | None = None) -> None:
        self.on_step = on_step
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._clock
        self._clock = now
        if self.on_step is not None:
            self.on_step(name)


def resolve_provider(name: str) -> str:
    """Full ONNX Runtime provider name from ``cpu``/``cuda``/``CPUExecutionProvider``.

    Raises:
        InputError: ONNX Runtime has no such provider here (the message lists those it has).
    """
    ort = quiet.onnxruntime()

    available = ort.get_available_providers()
    wanted = name if name.lower().endswith("executionprovider") else f"{name}ExecutionProvider"
    for provider in available:
        if provider.lower() == wanted.lower():
            return str(provider)
    raise InputError(f"ONNX Runtime provider {name!r} is not available here; "
                     f"available: {', '.join(available)}")


def checked_options(options: VerifyOptions, precision: Precision) -> VerifyOptions:
    """``options`` with ``precision``'s default tolerances where none was given (fp32's
    scaled by each output's magnitude, :meth:`VerifyOptions.resolved`) and the provider's
    full name (checked: ONNX Runtime has it here)."""
    return options.resolved(precision).replace(provider=resolve_provider(options.provider))


def planned_served(spec: NeckSpec, dynamic: bool) -> Served:
    """What a file of ``spec`` serves, as far as the family says: static, every size, or
    (a custom neck, until its module is run at an odd size) every size as one image."""
    if not dynamic:
        return Served.static()
    if spec.info.levels is not None:
        return Served(Images.ANY, spec.info.levels)
    return Served(Images.ANY, LevelRelation.ONE_IMAGE)


def tied_by_upsample(served: Served, upsample: Upsample) -> Served:
    """What a file serves once its upsampling is ``upsample``: a ``scale2`` crop computes
    the ``size`` form's numbers only where each level is ``ceil(finer / 2)``, so it ties
    independent levels to the sizes of one image."""
    if upsample is Upsample.SCALE2 and served.levels is LevelRelation.INDEPENDENT:
        return dataclasses.replace(served, levels=LevelRelation.ONE_IMAGE)
    return served


def onnx_file_name(name: str, precision: Precision) -> str:
    """The default file of an export: ``NAME.onnx`` in fp32, ``NAME.fp16.onnx`` and
    ``NAME.int8.onnx`` otherwise, so exports of one neck in several precisions never replace
    each other."""
    return f"{name}.onnx" if precision is Precision.FP32 else f"{name}.{precision.value}.onnx"


def check_opset(opset: int) -> int:
    if not is_int(opset) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"opset {opset!r} is not supported; use {MIN_OPSET} to {MAX_OPSET} "
                         f"(default {DEFAULT_OPSET})")
    return opset


def check_traced_size(spec: NeckSpec, served: Served) -> None:
    """A file serving multiples of the coarsest stride must be traced at one."""
    h, w = spec.input_size
    stride = spec.input_strides[-1]
    if served.images is Images.MULTIPLES and (h % stride or w % stride):
        lo_h, lo_w = max(stride, h // stride * stride), max(stride, w // stride * stride)
        raise InputError(
            f"{spec.label} does not run at image sizes that are no multiples of the coarsest "
            f"stride {stride} in PyTorch, so a dynamic export serves multiples of {stride} "
            f"and is traced at one; {h}x{w} is not. Use --input-size {lo_h}x{lo_w} or "
            f"{lo_h + stride if h % stride else lo_h}x{lo_w + stride if w % stride else lo_w}"
            f", or --static for {h}x{w} only")


class ExportTo(enum.StrEnum):
    """The format an export writes (``--to``)."""

    ONNX = "onnx"
    NCNN = "ncnn"  # the .param/.bin pair pnnx converts from the module


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportRequest:
    """Everything an export is asked for besides the neck: the one request that flags,
    budget-config settings and library keywords all become (:meth:`of`). Strings become
    enums here, defaults are written here, and every rule between options is checked here,
    once, when it is made; a request that exists is valid. What depends on the neck is
    checked by :meth:`ExportPlan.for_spec`.

    Attributes:
        to: The format (``onnx``; ``ncnn``: the pair, fp32 or fp16 weights, every size,
            verified in ncnn).
        batch: Batch traced (and fixed, for a static file); ``None``: 1, or each budget
            entry's own.
        dynamic: Dynamic batch, height and width.
        opset: ONNX opset.
        precision: The file's arithmetic.
        calibration: int8 calibration batches (``None``: the default at int8, else none).
        weights: Where the weights come from.
        verify: Verify before writing.
        options: Verification options; once made, tolerances resolved for ``precision``
            and the provider's full name (``None`` without verification).
        upsample: How the file writes nearest upsampling.
        runtimes: Where verification runs the file (each installed), in order.
        reduction: fp16/int8 beyond the conversion: the user's calibration data, the
            method, stages kept in fp32, per-stage SQNR, an SQNR floor.
        cache: Reuse a graph exported before and keep this one
            (:mod:`necktool.deploy.templates`); ``False`` (``--no-cache``) exports cold.
            It changes no byte of the file, so it is not in :meth:`to_dict`.
    """

    to: ExportTo = ExportTo.ONNX
    batch: int | None = None
    dynamic: bool = True
    opset: int = DEFAULT_OPSET
    precision: Precision = Precision.FP32
    calibration: int | None = None
    weights: WeightsRequest = dataclasses.field(default_factory=WeightsRequest)
    verify: bool = True
    options: VerifyOptions | None = None
    upsample: Upsample = Upsample.SIZE
    runtimes: tuple[Runtime, ...] = ()
    reduction: Reduction | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        put = functools.partial(object.__setattr__, self)
        try:
            put("to", ExportTo(self.to))
        except ValueError:
            raise InputError(f"export format {str(self.to)[:40]!r} is not one of "
                             f"{', '.join(ExportTo)}") from None
        if self.batch is not None:
            put("batch", check_batch(self.batch))
        if isinstance(self.weights, (str, os.PathLike)):
            put("weights", WeightsRequest(path=pathlib.Path(self.weights)))
        if self.reduction is not None and self.reduction.data is not None \
                and self.calibration is not None:
            raise InputError("--calibration counts seeded batches; with --calibration-data or "
                             "--images every calibration set is used: leave it out")
        put("upsample", check_upsample(self.upsample))
        put("opset", check_opset(self.opset))
        if self.to is ExportTo.NCNN:
            self._check_ncnn()
        precision, calibration = check_precision(self.precision, self.calibration)
        put("precision", precision)
        put("calibration", calibration)
        runtimes = parse_runtimes(list(self.runtimes)) if self.runtimes else [Runtime.ORT]
        put("runtimes", tuple(require_runtime(r) for r in runtimes) if self.verify
            else (Runtime.ORT,))
        if self.reduction is not None:
            self.reduction.check(precision)
        put("options", checked_options(self.options or VerifyOptions(), precision)
            if self.verify else None)

    def _check_ncnn(self) -> None:
        """An ncnn pair serves every size, in fp32 or fp16 weights: the ONNX-only options
        are refused, naming each."""
        require_runtime(Runtime.NCNN)
        given = [flag for flag, on in (
            ("--static", not self.dynamic), ("--opset", self.opset != DEFAULT_OPSET),
            ("--calibration", self.calibration is not None),
            ("--upsample", self.upsample is not Upsample.SIZE),
            ("--runtime", bool(self.runtimes) and parse_runtimes(list(self.runtimes))
             != [Runtime.NCNN])) if on]
        if given:
            raise InputError(f"{', '.join(given)} apply to ONNX files; --to ncnn writes an ncnn "
                             "pair (every size, verified in ncnn): leave them out")
        if self.reduction is not None and not self.reduction.plain:
            raise InputError("the data and reduced-precision flags apply to ONNX files; "
                             "--to ncnn writes fp32 or fp16 weights: leave them out")
        chosen, _ = check_precision(self.precision, None)
        if chosen not in (Precision.FP32, Precision.FP16):
            raise InputError(f"--precision {chosen.value} is not available for ncnn; valid: "
                             "fp32 (default), fp16 (fp16 weights)")
        object.__setattr__(self, "runtimes", (Runtime.NCNN,))

    @classmethod
    def of(cls, keywords: dict[str, Any]) -> tuple[ExportRequest, dict[str, Any]]:
        """Split library keywords into the request (its fields, plus ``seed`` and
        ``prefix``, which go into ``weights``; ``weights`` may be a file's path) and the
        rest: the neck's build flags.

        Example:
            >>> request, flags = ExportRequest.of({"precision": "fp16", "out_channels": 32})
            >>> request.precision.value, flags
            ('fp16', {'out_channels': 32})
        """
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in keywords.items() if k in names}
        flags = {k: v for k, v in keywords.items() if k not in names | {"seed", "prefix"}}
        weights = fields.get("weights")
        if not isinstance(weights, WeightsRequest):
            path = None if weights is None else pathlib.Path(weights)
            fields["weights"] = WeightsRequest(seed=keywords.get("seed"), path=path,
                                               prefix=keywords.get("prefix"))
        return cls(**fields), flags

    def to_dict(self) -> dict[str, Any]:
        return {"dynamic": self.dynamic, "opset": self.opset,
                "precision": self.precision.value, "calibration": self.calibration,
                "weights": self.weights.to_dict(),
                "upsample": self.upsample.value,
                "runtimes": [r.value for r in self.runtimes],
                "verification": None if self.options is None else self.options.to_dict()}


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """One export, checked (see the module docstring). Make it with :meth:`build` (or
    :meth:`for_spec`, with a request checked once for several necks).

    Attributes:
        spec: The resolved neck; its ``input_size`` is the traced size.
        output: The destination (checked writable).
        batch: Batch traced (and fixed, for a static file).
        request: What was asked: format, dynamic, opset, precision, calibration, weights,
            verification, upsample form, runtimes, reduction.
        served: What the file serves. For a custom neck exported dynamically this is
            provisional until its module has run at an odd size (``probe``).
        probe: Run the (custom) module at an odd size to learn what the file serves.
    """

    spec: NeckSpec
    output: pathlib.Path
    batch: int
    request: ExportRequest
    served: Served
    probe: bool = False

    @classmethod
    def build(cls, neck: str | NeckSpec, output: str | os.PathLike[str] | None = None,
              **keywords: Any) -> ExportPlan:
        """Check everything about an export of ``neck``: ``keywords`` are the request's
        (:meth:`ExportRequest.of`; see :func:`necktool.export_onnx`) and the neck's build
        flags.

        Raises:
            UnknownNeckError, SpecError: the neck or a build flag is bad, or the export
                needs more memory than allowed.
            InputError: bad batch, opset, traced size, precision, calibration,
                tolerances, provider, runtime or destination, or options that contradict
                each other.
        """
        request, flags = ExportRequest.of(keywords)
        return cls.for_spec(resolve_spec(neck, **flags), output, request)

    @classmethod
    def for_spec(cls, spec: NeckSpec, output: str | os.PathLike[str] | None,
                 request: ExportRequest, *, batch: int | None = None,
                 check_output: bool = True) -> ExportPlan:
        """The checks that depend on the neck: the traced size against what the file
        serves, the memory, the tolerances' output names, the destination (default
        ``<neck>.onnx``; ``check_output=False`` leaves it to the caller). ``spec``,
        ``request`` and ``batch`` (a budget entry's own; else the request's) are already
        checked."""
        batch = batch or request.batch or 1
        served = tied_by_upsample(planned_served(spec, request.dynamic), request.upsample)
        check_traced_size(spec, served)
        reduction = request.reduction
        if reduction is not None and reduction.data is not None and not request.dynamic:
            check_static_fit(reduction.data, spec, batch)
        need = export_bytes(spec, spec.input_size, batch)
        if request.calibration:  # ONNX Runtime's calibrator keeps every batch's activations
            need += request.calibration * forward_bytes(spec, spec.input_size, batch)
        require(need, f"exporting {spec.label} at {size_text(spec.input_size)}, batch {batch},")
        if request.options is not None:
            request.options.check_outputs(spec.output_names)
        dest = pathlib.Path(output if output is not None
                            else onnx_file_name(spec.label, request.precision))
        if check_output:
            dest = check_writable(dest, "the ONNX file")
        return cls(spec, dest, batch, request, served,
                   probe=request.dynamic and spec.info.levels is None)

    def with_served(self, served: Served) -> ExportPlan:
        """The plan once a custom module has shown what its file serves (the traced size
        is checked against it: the one thing the plan could not know before).

        Raises:
            InputError: the file would serve multiples of the coarsest stride and the
                traced size is none.
        """
        served = tied_by_upsample(served, self.request.upsample)
        check_traced_size(self.spec, served)
        return dataclasses.replace(self, served=served, probe=False)

    @property
    def cases(self) -> tuple[Case, ...]:
        """Where verification compares the file (none without verification)."""
        if not self.request.verify:
            return ()
        return tuple(default_cases(self.spec, self.spec.input_size, self.batch, self.served))

    @property
    def steps(self) -> tuple[str, ...]:
        """The steps the run reports through ``on_step``: a progress bar's total."""
        skip = set() if self.request.verify else {"verify"}
        if self.request.precision is Precision.FP32:
            skip.add("convert")
        return tuple(s for s in STEPS if s not in skip)

    def to_dict(self) -> dict[str, Any]:
        """The fields that decide the file and its verification (not the destination)."""
        return {"spec": self.spec.to_dict(), "name": self.spec.label, "batch": self.batch,
                **self.request.to_dict(), "serves": self.served.to_json(),
                "probe": self.probe, "reduction": None if self.request.reduction is None
                else self.request.reduction.describe()}

    def content_hash(self) -> str:
        """SHA-256 (hex) of :meth:`to_dict` as canonical JSON: the key of a cached export.

        Equal for plans that make the same file with the same verification, wherever
        they write it; any deciding field changes it. A weights file counts by its
        bytes (read when the hash is asked for), not its path. necktool's version is not
        in it.
        """
        return content_hash("export", self.to_dict())


def _channels(tensors: Sequence[TensorInfo]) -> list[int | None]:
    return [t.shape[1] if len(t.shape) == 4 and isinstance(t.shape[1], int) else None
            for t in tensors]


def _levels(channels: Sequence[int | None]) -> str:
    return (f"{len(channels)} level(s) of "
            f"{','.join('?' if c is None else str(c) for c in channels)} channels")


def check_graph_fits(file: pathlib.Path, graph: GraphInfo, spec: NeckSpec,
                     overrides: Mapping[str, Any]) -> None:
    """Refuse a neck that cannot be the one in the file: other input or output levels or
    channels (a build flag that contradicts the file, or the wrong --neck), in one line
    naming both sides.

    Raises:
        InputError: the file's inputs or outputs do not fit ``spec``.
    """
    ins, outs = _channels(graph.inputs), _channels(graph.outputs)
    if spec.factory is not None:  # a custom neck's outputs are its own business
        return
    want_in, want_out = list(spec.in_channels), list(spec.level_channels)
    if len(ins) == len(want_in) and len(outs) == len(want_out) and all(
            c is None or c == w for c, w in zip([*ins, *outs], [*want_in, *want_out],
                                                strict=True)):
        return
    given = [f"--{k.replace('_', '-')}" for k, v in overrides.items() if v is not None]
    why = f"{', '.join(given)} contradict{'s' if len(given) == 1 else ''} the file: " \
        if given else ""
    raise InputError(
        f"{why}{str(file)!r} takes {_levels(ins)} and gives {_levels(outs)}; "
        f"{spec.label} as asked takes {_levels(want_in)} and gives {_levels(want_out)}"
        + ("; leave the flag out (the file's metadata describes its neck)" if given
           else "; pass the --neck and build flags of the neck the file holds"))


@dataclasses.dataclass(frozen=True)
class VerifyPlan:
    """A re-check of an existing ONNX file (``necktool verify``), checked: the file is
    there and readable, the neck and weights it is compared with are known, the
    tolerances name outputs it has, the provider exists. Make it with :meth:`build`.

    Attributes:
        path: The ONNX file.
        spec: The neck it is compared with.
        batch: Batch of the export-size case.
        weights: How the PyTorch module's weights are made.
        graph: The file's opset, inputs and outputs.
        served: What the file serves (its metadata, else what its graph says).
        precision: The file's precision (its metadata; its graph's when converted later).
        options: Tolerances resolved for ``precision``, the provider's full name.
        upsample: The form the neck is rebuilt in (the file's, unless one is asked for).
        runtimes: What runs the file (each installed), in order.
        data: Real feature sets to verify on (their held-out part), else seeded inputs.
    """

    path: pathlib.Path
    spec: NeckSpec
    batch: int
    weights: WeightsRequest
    graph: GraphInfo
    served: Served
    precision: Precision
    options: VerifyOptions
    upsample: Upsample = Upsample.SIZE
    runtimes: tuple[Runtime, ...] = (Runtime.ORT,)
    data: DataRequest | None = None

    @classmethod
    def build(cls, path: str | os.PathLike[str], *, neck: str | NeckSpec | None = None,
              weights: WeightsRequest = WeightsRequest(), batch: int | None = None,
              options: VerifyOptions | None = None, upsample: Upsample | str | None = None,
              runtimes: Sequence[Runtime | str] = (Runtime.ORT,),
              data: DataRequest | None = None, **overrides: Any) -> VerifyPlan:
        """See :func:`necktool.verify_onnx` for the arguments and errors."""
        options = options or VerifyOptions()
        chosen_runtimes = tuple(dict.fromkeys(require_runtime(parse_runtime(r))
                                              for r in runtimes)) or (Runtime.ORT,)
        chosen = None if upsample is None else check_upsample(upsample)
        file = pathlib.Path(path)
        if not file.is_file():
            raise InputError(f"ONNX file {str(file)!r} does not exist or is not a file")
        proto = load_model(str(file))
        try:
            meta = read_metadata(proto, path=file)
        except DamagedMetadata:
            if neck is None:
                raise
            meta = None  # the user says what the file holds; the metadata is not needed
        recorded = meta.spec.factory if meta is not None else None
        if recorded is not None and neck is None:  # an import path is no permission to run it
            raise InputError(
                f"{str(file)!r} records the custom neck {recorded!r}; necktool imports a "
                f"module only when you name it: pass --neck {recorded} to allow it")
        request: WeightsRequest
        if meta is not None and (neck is None or neck == recorded):
            spec = meta.spec.replace(**overrides)
            request = WeightsRequest(seed=meta.weights.seed or 0) \
                if meta.weights.source == "seed" else WeightsRequest()
        elif neck is not None:
            spec = resolve_spec(neck, **overrides)
            request = WeightsRequest(seed=0)
        elif weights.path is not None:  # no metadata, but the weights say which neck
            from necktool.detector.identify import identify_checkpoint

            found = identify_checkpoint(weights.path, weights.prefix)
            spec = found.neck_spec.replace(**overrides)
            weights = dataclasses.replace(weights, prefix=weights.prefix or found.load_prefix)
        else:
            raise InputError(
                f"{str(file)!r} carries no necktool metadata (it was not written by "
                "'necktool export'); pass --neck NAME and the build flags that describe the "
                "neck it holds, or --weights FILE holding a neck necktool recognises")
        if weights.path is not None:  # a file given wins, then a seed given
            request = WeightsRequest(path=weights.path, prefix=weights.prefix)
        elif weights.seed is not None:
            request = WeightsRequest(seed=weights.seed)
        elif meta is not None and meta.weights.source == "file" \
                and (neck is None or neck == recorded):
            # The metadata only names the file: necktool opens no path the user did not give.
            prefix = f" --prefix {meta.weights.prefix}" if meta.weights.prefix else ""
            raise InputError(
                f"{str(file)!r} was exported from weights file {meta.weights.path!r} "
                f"(sha256 {str(meta.weights.sha256)[:12]}...); necktool opens only files you "
                f"name: pass --weights PATH{prefix} (that file), or --seed N to compare with "
                "seeded weights")
        graph = describe(proto)
        check_graph_fits(file, graph, spec, overrides)
        if batch is None:
            batch = meta.batch if meta is not None and neck is None else 1
        served = meta.served_shapes if meta is not None \
            and meta.served_shapes.dynamic == graph.dynamic else Served.legacy(graph.dynamic)
        # The metadata's precision; the graph's for a file without it or converted later.
        in_graph = graph_precision(proto)
        precision = meta.precision if meta is not None and in_graph is Precision.FP32 \
            else in_graph
        checked = checked_options(options, precision)
        checked.check_outputs([t.name for t in graph.outputs])
        form = chosen or (meta.upsample if meta is not None else Upsample.SIZE)
        return cls(file, spec, batch, request, graph, served, precision, checked, form,
                   chosen_runtimes, data)

    @property
    def cases(self) -> tuple[Case, ...]:
        """Where the file is compared with PyTorch."""
        return tuple(default_cases(self.spec, self.spec.input_size, self.batch, self.served))

    @property
    def steps(self) -> int:
        """Cases compared, in every runtime: a progress bar's total."""
        return len(self.cases) * len(self.runtimes)

    def to_dict(self) -> dict[str, Any]:
        """What decides the verification: the file's bytes (not its path), the neck, the
        batch, the weights, the options, what it serves and its precision."""
        return {"file_sha256": file_sha256(self.path), "spec": self.spec.to_dict(),
                "name": self.spec.label, "batch": self.batch,
                "weights": self.weights.to_dict(), "verification": self.options.to_dict(),
                "serves": self.served.to_json(), "precision": self.precision.value,
                "upsample": self.upsample.value,
                "runtimes": [r.value for r in self.runtimes],
                "data": None if self.data is None else {
                    k: str(v) if isinstance(v, pathlib.Path) else v
                    for k, v in dataclasses.asdict(self.data).items()}}

    def content_hash(self) -> str:
        """SHA-256 (hex) of :meth:`to_dict` as canonical JSON."""
        return content_hash("verify", self.to_dict())
