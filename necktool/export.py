"""Export a neck to ONNX, check the file, verify it in ONNX Runtime, then write it.

The exporter is PyTorch's maintained one, ``torch.onnx.export(..., dynamo=True)``.
A dynamic export ties the levels' sizes as the strides tie them (``torch.export.Dim``):
with ``h = H / S`` and ``w = W / S`` for the coarsest stride ``S``, level ``k`` of ``L``
is ``(batch, C_k, 2**(L-1-k) * h, 2**(L-1-k) * w)``, so one file serves every image
whose sides are multiples of ``S``.

Nothing is lost: the file is written to a temporary file beside the destination and
moved into place with :func:`os.replace` only after ``onnx.checker`` (full check),
strict shape inference, the conv-MAC cross-check and (unless skipped) verification
passed. Any failure removes the temporary file and leaves the destination untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from necktool.errors import ExportError, InputError, VerificationFailed
from necktool.files import check_writable, replace_on_success
from necktool.specs import NeckSpec
from necktool.verify import (
    DEFAULT_ATOL,
    DEFAULT_PROVIDER,
    DEFAULT_RTOL,
    DEFAULT_TRIALS,
    VerificationResult,
    check_tolerances,
    compare_onnx,
    default_cases,
    resolve_provider,
)
from necktool.weights import WeightSource

if TYPE_CHECKING:
    import onnx
    import torch
    from rich.table import Table
    from torch import nn

DEFAULT_OPSET = 18  # the dynamo exporter's native floor; the widest runtime support
MIN_OPSET = 18  # lower opsets go through a lossy version converter; not offered
MAX_OPSET = 24  # the newest this machine's onnx + onnxruntime both load (measured)
META = "necktool."  # prefix of every metadata_props key necktool writes
STEPS = ("build", "count", "export", "check", "verify", "write")


# -- metadata ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExportMetadata:
    """What an exported file says about itself (``metadata_props``, keys ``necktool.*``)."""

    version: str
    neck: str
    spec: NeckSpec
    input_size: tuple[int, int]
    batch: int
    dynamic: bool
    opset: int
    flops: int
    params: int
    conv_macs: int
    weights: WeightSource
    exporter: str

    def to_props(self) -> dict[str, str]:
        """String key/values for ``ModelProto.metadata_props`` (JSON where structured)."""
        from necktool.profiling import UNIT, UNIT_NOTE

        h, w = self.input_size
        stride = self.spec.strides[-1]
        return {
            f"{META}version": self.version,
            f"{META}neck": self.neck,
            f"{META}spec": json.dumps(self.spec.to_dict(), sort_keys=True),
            f"{META}input_size": f"{h}x{w}",
            f"{META}batch": str(self.batch),
            f"{META}dynamic": json.dumps(self.dynamic),
            f"{META}dims": (f"batch, H_div{stride} = H/{stride}, W_div{stride} = W/{stride}; "
                            f"level k of {self.spec.num_levels} is 2**({self.spec.num_levels - 1}"
                            f"-k) * H_div{stride}") if self.dynamic
            else f"static: {h}x{w}, batch {self.batch}",
            f"{META}opset": str(self.opset),
            f"{META}flops": str(self.flops),
            f"{META}flops_unit": f"{UNIT} ({UNIT_NOTE}) at {h}x{w}, batch {self.batch}",
            f"{META}params": str(self.params),
            f"{META}conv_macs": str(self.conv_macs),
            f"{META}weights": json.dumps(self.weights.to_dict(), sort_keys=True),
            f"{META}exporter": self.exporter,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ExportMetadata:
        try:
            h, w = (int(v) for v in props[f"{META}input_size"].split("x"))
            spec_dict = json.loads(props[f"{META}spec"])
            neck = props[f"{META}neck"]
            return cls(
                version=props[f"{META}version"],
                neck=neck,
                spec=NeckSpec.from_dict(spec_dict, name=neck),
                input_size=(h, w),
                batch=int(props[f"{META}batch"]),
                dynamic=bool(json.loads(props[f"{META}dynamic"])),
                opset=int(props[f"{META}opset"]),
                flops=int(props[f"{META}flops"]),
                params=int(props[f"{META}params"]),
                conv_macs=int(props.get(f"{META}conv_macs", "0")),
                weights=WeightSource.from_dict(json.loads(props[f"{META}weights"])),
                exporter=props.get(f"{META}exporter", ""),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"the file's necktool metadata is incomplete or malformed "
                             f"({type(exc).__name__}: {exc}); pass --neck and build flags") \
                from None


def read_metadata(model: onnx.ModelProto | str | pathlib.Path) -> ExportMetadata | None:
    """The necktool metadata of a model or file, or ``None`` if necktool did not write it."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else \
        onnx.load(str(model), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if f"{META}version" not in props:
        return None
    # Build flags such as input_size live in the spec; keep the export size authoritative.
    meta = ExportMetadata.from_props(props)
    return dataclasses.replace(meta, spec=meta.spec.replace(input_size=meta.input_size))


# -- result -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """An ONNX graph input or output: name, shape (ints or symbolic names), dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def __str__(self) -> str:
        return f"{self.name} ({', '.join(map(str, self.shape))})"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """An export: the file, what it holds, the checks and the verification."""

    path: pathlib.Path
    metadata: ExportMetadata
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    conv_macs_onnx: int
    conv_macs_fvcore: int
    checks: dict[str, bool]
    verification: VerificationResult | None
    written: bool
    seconds: dict[str, float]

    @property
    def passed(self) -> bool:
        return all(self.checks.values()) and (self.verification is None
                                              or self.verification.passed)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def opset(self) -> int:
        return self.metadata.opset

    @property
    def dynamic(self) -> bool:
        return self.metadata.dynamic

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON-ready dict (``verification`` is ``null`` when skipped)."""
        from necktool.profiling import UNIT, UNIT_NOTE

        m = self.metadata
        return {
            "path": str(self.path),
            "written": self.written,
            "neck": m.neck,
            "opset": m.opset,
            "dynamic": m.dynamic,
            "input_size": list(m.input_size),
            "batch": m.batch,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "spec": m.spec.to_dict(),
            "weights": m.weights.to_dict(),
            "flops": m.flops,
            "flops_unit": UNIT,
            "unit_note": UNIT_NOTE,
            "params": m.params,
            "conv_macs": {"fvcore": self.conv_macs_fvcore, "onnx": self.conv_macs_onnx,
                          "match": self.conv_macs_fvcore == self.conv_macs_onnx},
            "checks": dict(self.checks),
            "exporter": m.exporter,
            "metadata": m.to_props(),
            "verification": self.verification.to_dict() if self.verification is not None
            else None,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def tables(self) -> list[Table]:
        """A summary table, then the verification table when verification ran."""
        from rich.table import Table

        m = self.metadata
        h, w = m.input_size
        state = "written" if self.written else "NOT written"
        table = Table(title=f"{m.neck} -> {self.path} ({state})", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        shape = "dynamic batch, H, W (multiples of " \
            f"{m.spec.strides[-1]}); traced at {h}x{w}" if m.dynamic \
            else f"static {h}x{w}, batch {m.batch}"
        table.add_row("exporter", f"{m.exporter}, opset {m.opset}")
        table.add_row("shapes", shape)
        table.add_row("inputs", "\n".join(map(str, self.inputs)))
        table.add_row("outputs", "\n".join(map(str, self.outputs)))
        table.add_row("FLOPs", f"{m.flops:,} at {h}x{w}, batch {m.batch} "
                      "(fvcore: 1 multiply-add = 1 flop)")
        match = "equal" if self.conv_macs_fvcore == self.conv_macs_onnx else "DIFFER"
        table.add_row("conv MACs", f"{self.conv_macs_fvcore:,} (fvcore) / "
                      f"{self.conv_macs_onnx:,} (ONNX graph): {match}")
        table.add_row("params", f"{m.params:,}")
        table.add_row("weights", m.weights.describe())
        table.add_row("checks", ", ".join(f"{k} {'ok' if v else 'FAILED'}"
                                          for k, v in self.checks.items()))
        table.add_row("verification", self.verification.summary()
                      if self.verification is not None
                      else "skipped (--no-verify)")
        tables = [table]
        if self.verification is not None:
            tables.append(self.verification.table())
        return tables


# -- helpers ----------------------------------------------------------------------------
@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Swallow everything the exporter says: prints, C-level output, warnings, logging.

    Yields the captured Python-level text, so a failure can quote its last line.
    """
    import sys

    captured = io.StringIO()
    previous_disable = logging.root.manager.disable
    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()  # type: ignore[union-attr]
            # C++ and logging handlers bound to the real fds: point fds 1 and 2 at a sink.
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
            logging.disable(logging.CRITICAL)
            with warnings.catch_warnings(), contextlib.redirect_stdout(captured), \
                    contextlib.redirect_stderr(captured):
                warnings.simplefilter("ignore")
                yield captured
        finally:
            logging.disable(previous_disable)
            for stream in (sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()  # type: ignore[union-attr]
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _dynamic_shapes(spec: NeckSpec) -> tuple[list[dict[int, Any]]]:
    """``torch.export.Dim`` per level, tied as the strides tie them (see module docstring)."""
    from torch.export import Dim

    stride = spec.strides[-1]
    batch = Dim("batch", min=1)
    h = Dim(f"H_div{stride}", min=1)
    w = Dim(f"W_div{stride}", min=1)
    levels = spec.num_levels
    shapes = []
    for k in range(levels):
        scale = 2 ** (levels - 1 - k)
        shapes.append({0: batch, 2: scale * h if scale > 1 else h,
                       3: scale * w if scale > 1 else w})
    return (shapes,)


def _tensor_infos(values: Any) -> tuple[TensorInfo, ...]:
    import onnx

    infos = []
    for v in values:
        tt = v.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in tt.shape.dim)
        infos.append(TensorInfo(v.name, shape, onnx.TensorProto.DataType.Name(tt.elem_type)
                                .lower()))
    return tuple(infos)


def describe_file(path: str | pathlib.Path) -> dict[str, Any]:
    """The default-domain opset and the graph's inputs and outputs of an ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "opset": opset,
        "inputs": [t.to_dict() for t in _tensor_infos(proto.graph.input)],
        "outputs": [t.to_dict() for t in _tensor_infos(proto.graph.output)],
    }


def conv_macs(model: onnx.ModelProto, input_shapes: Mapping[str, list[int]]) -> int:
    """Conv multiply-adds of the graph at the given input shapes, from shape inference.

    Each Conv contributes ``N * Cout * Hout * Wout * (Cin / groups) * kh * kw``: the
    output's element count times the weight's per-output-channel size.

    Raises:
        ExportError: a Conv's output or weight shape cannot be inferred.
    """
    import math

    import onnx
    from onnx import shape_inference

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, input_shapes[value.name], strict=True):
            dim.Clear()
            dim.dim_value = int(size)
    # Drop the exporter's symbolic annotations so inference recomputes every shape.
    del fixed.graph.value_info[:]
    for value in fixed.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            dim.Clear()
    inferred = shape_inference.infer_shapes(fixed, data_prop=True)
    shapes: dict[str, list[int] | None] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value for d in dims] \
            if all(d.HasField("dim_value") for d in dims) else None
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in inferred.graph.node:
        if node.op_type != "Conv":
            continue
        out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
        if not out or not weight:
            raise ExportError(f"shape inference left Conv {node.name or node.output[0]!r} "
                              "without a static shape; cannot count its MACs")
        total += math.prod(out) * math.prod(weight[1:])
    return total


def _check_model(path: pathlib.Path) -> None:
    """``onnx.checker`` full check, which includes strict, type-checked shape inference.

    Raises:
        ExportError: the checker or its shape inference rejected the graph.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # checker raises ValidationError or InferenceError
        raise ExportError(f"onnx.checker (full check, strict shape inference) rejected the "
                          f"exported graph: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _exporter_name() -> str:
    import torch

    return f"torch.onnx.export(dynamo=True), torch {torch.__version__}"


def export_model(model: nn.Module, spec: NeckSpec, inputs: list[torch.Tensor], *,
                 dynamic: bool, opset: int) -> onnx.ModelProto:
    """Run the dynamo exporter silently and return the ONNX model (no file written).

    Raises:
        ExportError: the exporter failed (its last words in the message).
    """
    import torch

    kwargs: dict[str, Any] = {
        "dynamo": True,
        "input_names": spec.input_names,
        "output_names": [n.lower() for n in spec.level_names],
        "opset_version": opset,
        "verbose": False,
        "optimize": True,
    }
    if dynamic:
        kwargs["dynamic_shapes"] = _dynamic_shapes(spec)
    with quiet() as log:
        try:
            program = torch.onnx.export(model, (inputs,), **kwargs)
        except Exception as exc:  # the exporter raises many error types
            said = [ln for ln in log.getvalue().splitlines() if ln.strip()]
            hint = f" (last exporter output: {said[-1].strip()[:200]})" if said else ""
            raise ExportError(f"the ONNX exporter failed: {_first_line(exc)[:300]}{hint}") \
                from None
        if program is None:  # only when f= is given; kept for the type checker
            raise ExportError("the ONNX exporter returned no program")
        return program.model_proto


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
    provider: str = DEFAULT_PROVIDER,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    trials: int = DEFAULT_TRIALS,
    on_step: Callable[[str], None] | None = None,
    **overrides: Any,
) -> ExportResult:
    """Export a neck to ONNX, check and verify it, and only then write ``output``.

    Args:
        neck: A preset name or a :class:`NeckSpec`.
        output: Destination file; default ``<neck>.onnx`` in the current directory.
        batch: Batch size traced (and fixed, for a static export).
        dynamic: Dynamic batch, height and width (sides multiples of the coarsest stride);
            ``False`` fixes the export size.
        opset: ONNX opset, ``MIN_OPSET`` to ``MAX_OPSET``.
        seed: Weight init seed when ``weights`` is not given (norms randomised too).
        weights: A ``.pt``/``.pth`` state dict, loaded strictly (see ``load_weights``).
        prefix: Key prefix selecting the neck in ``weights`` (e.g. ``"fpn."``).
        verify: Compare ONNX Runtime with PyTorch before writing.
        provider, atol, rtol, trials: Verification settings (see ``compare_onnx``).
        on_step: Called with each step's name as it finishes (for a progress bar).
        **overrides: Spec fields (``input_size=(640, 480)``, ``norm="bn"``...).

    Returns:
        The result; the file is at ``result.path``.

    Raises:
        InputError: bad destination, opset, size or provider (nothing done).
        WeightsError: the weights file does not fit.
        ExportError: the exporter or a check failed (nothing written).
        VerificationFailed: ONNX Runtime disagrees (nothing written; ``.result`` has the
            report).

    Example:
        >>> result = export_onnx("scrfd_2.5g", "/tmp/scrfd.onnx", input_size=(320, 320))
        >>> result.verification.passed, result.inputs[0].shape
        (True, ('batch', 48, '4*H_div32', '4*W_div32'))
    """
    import necktool
    from necktool.build import make_inputs, resolve_spec
    from necktool.profiling import analyze
    from necktool.weights import make_model

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
    name = neck if isinstance(neck, str) else (spec.name or spec.family.value)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) \
            or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"opset {opset!r} is not supported; use {MIN_OPSET} to {MAX_OPSET} "
                         f"(default {DEFAULT_OPSET})")
    h, w = spec.input_size
    stride = spec.strides[-1]
    if dynamic and (h % stride or w % stride):
        lo_h, lo_w = max(stride, h // stride * stride), max(stride, w // stride * stride)
        raise InputError(
            f"a dynamic export is traced at a size whose sides are multiples of the coarsest "
            f"stride {stride}; {h}x{w} is not. Use --input-size {lo_h}x{lo_w} or "
            f"{lo_h + stride if h % stride else lo_h}x{lo_w + stride if w % stride else lo_w}"
            f" (the file then serves every multiple of {stride}), or --static for {h}x{w} only")
    if verify:
        check_tolerances(atol, rtol, trials)
        provider = resolve_provider(provider)
    dest = check_writable(output if output is not None else f"{name}.onnx", "the ONNX file")

    with replace_on_success(dest, "the ONNX file") as tmp:
        model, source = make_model(spec, seed=seed, prefix=prefix,
                                   weights=None if weights is None else pathlib.Path(weights))
        done("build")
        profile = analyze(model, spec, (h, w), batch, name)
        done("count")
        inputs = make_inputs(spec, (h, w), batch, seed=0)
        proto = export_model(model, spec, inputs, dynamic=dynamic, opset=opset)
        done("export")

        input_shapes = {n: list(t.shape) for n, t in zip(spec.input_names, inputs, strict=True)}
        onnx_macs = conv_macs(proto, input_shapes)
        fvcore_macs = int(profile.operators.get("conv", 0))
        meta = ExportMetadata(
            version=necktool.__version__, neck=name, spec=spec, input_size=(h, w), batch=batch,
            dynamic=dynamic, opset=opset, flops=profile.flops, params=profile.params,
            conv_macs=onnx_macs, weights=source, exporter=_exporter_name())
        del proto.metadata_props[:]
        for key, value in meta.to_props().items():
            proto.metadata_props.add(key=key, value=value)
        proto.doc_string = (f"necktool {necktool.__version__}: {name} neck "
                            f"({spec.family.value}), see metadata_props necktool.*")
        import onnx

        onnx.save_model(proto, str(tmp))
        _check_model(tmp)
        checks = {"onnx.checker": True, "shape_inference": True,  # both from the full check
                  "conv_macs_match": onnx_macs == fvcore_macs}
        result = ExportResult(dest, meta, _tensor_infos(proto.graph.input),
                              _tensor_infos(proto.graph.output), onnx_macs, fvcore_macs,
                              checks, None, False, seconds)
        if onnx_macs != fvcore_macs:
            raise ExportError(f"conv multiply-adds differ: {onnx_macs:,} in the ONNX graph vs "
                              f"{fvcore_macs:,} from fvcore at {h}x{w}; nothing written")
        done("check")

        if verify:
            verification = compare_onnx(
                tmp, model, spec, cases=default_cases(spec, (h, w), batch, dynamic), neck=name,
                weights=source.describe(), dynamic=dynamic, provider=provider, atol=atol,
                rtol=rtol, trials=trials)
            verification = dataclasses.replace(verification, path=str(dest))
            result = dataclasses.replace(result, verification=verification)
            done("verify")
            if not verification.passed:
                existing = "left untouched" if dest.exists() else "not written"
                raise VerificationFailed(f"verification failed, {str(dest)!r} {existing}: "
                                         f"{verification.summary()}", result)
    done("write")
    return dataclasses.replace(result, written=True)
