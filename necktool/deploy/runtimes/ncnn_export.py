"""``necktool export --to ncnn``: the neck's ncnn ``.param``/``.bin`` pair, converted by pnnx
from the PyTorch module, verified in ncnn, then written.

The pair serves what a dynamic ONNX export serves (:mod:`necktool.artifact.serving`): pnnx
traces the module at two sizes, so the upsample takes its size from the finer level's blob
(:mod:`necktool.deploy.runtimes.pnnx`). Weights are fp32 (pnnx's default would be fp16)
unless ``precision="fp16"``. ncnn has no batch dimension: a C++ caller feeds one image's
levels, each ``(C, H, W)``; verification runs a batch sample by sample.

Nothing is lost: pnnx runs in a temporary directory; only after verification passed are
the two files written, each atomically by :func:`necktool.files.write_file` (the ``.bin``
first; should the ``.param`` then fail, the old ``.bin`` is put back).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any

from necktool.artifact.serving import Served
from necktool.deploy.comparison import VerificationResult
from necktool.deploy.plan import ExportPlan, ExportRequest, ExportTo, StepClock
from necktool.deploy.runtimes.ncnn_pair import NcnnPair
from necktool.files import check_writable, write_file
from necktool.report import Block, Verdict, size_text, table
from necktool.spec.neck_spec import NeckSpec, neck_header
from necktool.spec.precision import Precision
from necktool.spec.registry import resolve_spec
from necktool.spec.runtimes import Runtime
from necktool.spec.weights import WeightSource

NCNN_STEPS = ("build", "convert", "verify", "write")


def ncnn_steps(verify: bool = True) -> tuple[str, ...]:
    return tuple(s for s in NCNN_STEPS if verify or s != "verify")


def ncnn_paths(output: str | os.PathLike[str] | None, label: str
               ) -> tuple[pathlib.Path, pathlib.Path]:
    """``(param, bin)`` for ``-o``: ``X.param`` or ``X.bin`` names the pair ``X.param`` +
    ``X.bin``; any other ``X`` gives ``X.param`` + ``X.bin``; none gives
    ``<neck>.ncnn.param`` + ``<neck>.ncnn.bin``."""
    base = pathlib.Path(output) if output is not None else pathlib.Path(f"{label}.ncnn")
    if base.suffix in (".param", ".bin"):
        return base.with_suffix(".param"), base.with_suffix(".bin")
    return pathlib.Path(f"{base}.param"), pathlib.Path(f"{base}.bin")


@dataclasses.dataclass(frozen=True)
class Blob:
    """One ncnn blob a caller feeds or extracts: its name, the neck's name for it, and its
    ``(C, H, W)`` shape at the export size (H and W follow the image)."""

    blob: str
    name: str
    shape: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"blob": self.blob, "name": self.name, "shape": list(self.shape)}

    def __str__(self) -> str:
        return f"{self.blob} ({self.name}, {'x'.join(map(str, self.shape))} at export size)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class NcnnExportResult(Verdict):
    """An ncnn export: the pair, its blobs, the verification in ncnn."""

    spec: NeckSpec
    param_path: pathlib.Path
    bin_path: pathlib.Path
    batch: int
    precision: Precision
    inputs: tuple[Blob, ...]
    outputs: tuple[Blob, ...]
    served: Served
    weights: WeightSource
    converter: str
    verification: VerificationResult | None
    written: bool
    seconds: dict[str, float]
    param_bytes: int = 0
    bin_bytes: int = 0

    @property
    def passed(self) -> bool:
        return self.verification is None or self.verification.passed

    @property
    def path(self) -> pathlib.Path:
        return self.param_path

    def failure(self) -> str | None:
        if self.passed or self.verification is None:
            return None
        state = "left untouched" if self.param_path.exists() else "not written"
        return (f"verification in ncnn failed, {str(self.param_path)!r} and "
                f"{str(self.bin_path)!r} {state}: {self.verification.summary()}")

    def serves_text(self) -> str:
        return self.served.describe(self.spec, self.spec.input_size, self.batch) + \
            "; ncnn runs one image at a time (no batch dimension)"

    def to_dict(self) -> dict[str, Any]:
        return {
            **neck_header(self.spec, self.spec.input_size, self.batch),
            "format": "ncnn",
            "param": str(self.param_path),
            "bin": str(self.bin_path),
            "written": self.written,
            "bytes": {"param": self.param_bytes, "bin": self.bin_bytes},
            "precision": self.precision.value,
            "serves": self.serves_text(),
            "inputs": [b.to_dict() for b in self.inputs],
            "outputs": [b.to_dict() for b in self.outputs],
            "weights": self.weights.to_dict(),
            "converter": self.converter,
            "verification": self.verification.to_dict() if self.verification is not None
            else None,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def blocks(self) -> list[Block]:
        state = "written" if self.written else "NOT written"
        weights = "fp16 (pnnx fp16=1)" if self.precision is Precision.FP16 else \
            "fp32 (pnnx fp16=0)"
        rows = [
            ("converter", self.converter),
            ("weights", f"{weights}; {self.weights.describe()}"),
            ("serves", self.serves_text()),
            ("input blobs", "\n".join(map(str, self.inputs))),
            ("output blobs", "\n".join(map(str, self.outputs))),
            ("verification", self.verification.summary() if self.verification is not None
             else "skipped (--no-verify)"),
        ]
        size = (self.param_bytes + self.bin_bytes) / 1e6
        out: list[Block] = [table(
            f"{self.spec.label} -> {self.param_path} + {self.bin_path} ({state}, {size:.2f} MB)",
            ["field", "value"], rows, show_header=False)]
        if self.verification is not None:
            out.append(self.verification.table())
        return out


def _blobs(pair: NcnnPair, spec: NeckSpec) -> tuple[tuple[Blob, ...], tuple[Blob, ...]]:
    size = spec.input_size
    ins = tuple(Blob(b, n, (c, h, w)) for b, n, c, (h, w) in zip(
        pair.input_blobs, spec.input_names, spec.in_channels, spec.input_sizes(size),
        strict=True))
    outs = tuple(Blob(b, n, (c, h, w)) for b, n, c, (h, w) in zip(
        pair.output_blobs, spec.output_names, spec.level_channels, spec.level_sizes(size),
        strict=True))
    return ins, outs


@dataclasses.dataclass(frozen=True)
class NcnnPlan:
    """An ncnn export, checked (torch-free): the neck's export plan (weights, batch,
    verification options, what the pair serves) and the pair's two destinations."""

    export: ExportPlan
    param_path: pathlib.Path
    bin_path: pathlib.Path

    @property
    def steps(self) -> tuple[str, ...]:
        return ncnn_steps(self.export.request.verify)


def plan_ncnn(neck: str | NeckSpec, output: str | os.PathLike[str] | None = None,
              **keywords: Any) -> NcnnPlan:
    """Every check of an ncnn export, before any work (see :func:`export_ncnn`): the
    keywords become one :class:`~necktool.deploy.plan.ExportRequest` with ``to=ncnn``, which
    refuses what only an ONNX file has (a static size, an opset, int8, ...).

    Raises:
        InputError: ncnn/pnnx not installed, bad destination, precision, batch or size.
    """
    request, flags = ExportRequest.of({**keywords, "to": ExportTo.NCNN})
    return plan_for_spec(resolve_spec(neck, **flags), output, request)


def plan_for_spec(spec: NeckSpec, output: str | os.PathLike[str] | None,
                  request: ExportRequest) -> NcnnPlan:
    """The checks of an ncnn export that depend on the neck (``request``, made with
    ``to=ncnn``, is checked): the sizes, the memory, the pair's destinations."""
    plan = ExportPlan.for_spec(spec, None, request, check_output=False)
    param_dest, bin_dest = ncnn_paths(output, spec.label)
    return NcnnPlan(plan, check_writable(param_dest, "the ncnn .param file"),
                    check_writable(bin_dest, "the ncnn .bin file"))


def export_ncnn(neck: str | NeckSpec, output: str | os.PathLike[str] | None = None, *,
                on_step: Callable[[str], None] | None = None, **keywords: Any
                ) -> NcnnExportResult:
    """Convert a neck to an ncnn ``.param``/``.bin`` pair, verify it in ncnn, then write it.

    Args:
        neck: A preset name, an import path or a :class:`NeckSpec`.
        output: ``X.param`` (or ``X.bin``, or ``X``): the pair ``X.param`` + ``X.bin``;
            default ``<neck>.ncnn.param`` + ``.bin`` (see :func:`ncnn_paths`).
        on_step: Called with each step's name (:func:`ncnn_steps`).
        **keywords: The export request's fields and the neck's build flags, as for
            :func:`necktool.export_onnx`: ``batch`` (of the export-size verification case;
            the pair has none), ``verify``, ``options``, ``precision`` (``fp32`` or
            ``fp16`` weights), ``seed``, ``weights``, ``prefix``.

    Returns:
        The result; falsy, with nothing written, when ncnn disagrees with PyTorch.

    Raises:
        InputError: ncnn/pnnx not installed, bad destination, precision or size.
        ExportError: pnnx failed (nothing written).
    """
    return run_ncnn(plan_ncnn(neck, output, **keywords), on_step=on_step)


def run_ncnn(plan: NcnnPlan, *, on_step: Callable[[str], None] | None = None
             ) -> NcnnExportResult:
    """Run a checked plan: build, convert with pnnx, verify in ncnn, then write the pair
    (nothing is written when verification fails: the result is then falsy)."""
    import pnnx

    from necktool.deploy.export import served_by
    from necktool.deploy.model import make_model
    from necktool.deploy.runtimes.pnnx import neck_to_ncnn
    from necktool.deploy.verify import run_comparison

    done = StepClock(on_step)
    seconds = done.seconds

    export, param_dest, bin_dest = plan.export, plan.param_path, plan.bin_path
    spec = export.spec
    model, source = make_model(spec, export.request.weights)
    if export.probe:  # a custom neck: can it run at every size?
        export = export.with_served(served_by(spec, model))
    done("build")
    pair = neck_to_ncnn(model, spec, fp16=export.request.precision is Precision.FP16)
    done("convert")
    ins, outs = _blobs(pair, spec)
    result = NcnnExportResult(
        spec=spec, param_path=param_dest, bin_path=bin_dest, batch=export.batch,
        precision=export.request.precision, inputs=ins, outputs=outs, served=export.served,
        weights=source, converter=f"pnnx {getattr(pnnx, '__version__', '?')} from the PyTorch "
        f"module (pnnx.export, traced at {size_text(spec.input_size)} and a second size)",
        verification=None, written=False, seconds=seconds, param_bytes=len(pair.param),
        bin_bytes=len(pair.weights))
    if export.request.options is not None:
        verification = run_comparison(
            str(param_dest), model, spec, runtime=Runtime.NCNN, ncnn_pair=pair,
            cases=export.cases, options=export.request.options, weights=source.describe(),
            dynamic=True, precision=export.request.precision, path=str(param_dest))
        result = dataclasses.replace(result, verification=verification)
        done("verify")
        if not verification.passed:
            return result
    _write_pair(pair, param_dest, bin_dest)
    done("write")
    return dataclasses.replace(result, written=True)


def _write_pair(pair: NcnnPair, param_dest: pathlib.Path, bin_dest: pathlib.Path) -> None:
    """The ``.bin``, then the ``.param``; should the second write fail, the old ``.bin``
    (or none) is put back, so the pair on disk always belongs together."""
    old = bin_dest.read_bytes() if bin_dest.is_file() else None
    write_file(bin_dest, pair.weights, "the ncnn .bin file")
    try:
        write_file(param_dest, pair.param, "the ncnn .param file")
    except BaseException:
        if old is None:
            bin_dest.unlink(missing_ok=True)
        else:
            write_file(bin_dest, old, "the ncnn .bin file")
        raise
