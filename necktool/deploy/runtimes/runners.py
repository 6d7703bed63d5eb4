"""Runtimes beyond ONNX Runtime: OpenVINO and ncnn, behind one small interface (torch-free).

Each runtime is a class with the same three steps: ``load`` (a file or, for ncnn, the pair
pnnx converted from the PyTorch module), ``run(inputs) -> outputs`` (NCHW float32 arrays
in, one array per output level out, or the runtime's error as a string), and ``describe``
(one line saying what ran, at which precision). The runtimes' own packages are optional
extras, imported only when asked for: ``pip install 'necktool[openvino]'`` or
``'necktool[ncnn]'`` (ncnn and pnnx).

Traps, measured with the current wheels, each handled here by default:

* OpenVINO's CPU plugin computes in bf16 on CPUs with AVX512-BF16 unless told otherwise
  (0.04-0.11 max abs error on a small PAFPN against about 2e-6 with the hint), so the
  ``f32`` inference precision hint is set explicitly; ``openvino:bf16`` leaves the
  default hint, to show its effect. What the compiled model really uses is read back from
  it and reported.
* ``ncnn.Mat(array)`` wraps the array's memory without holding a reference: a Mat made
  from a temporary reads whatever later reuses that memory. Every input array is held
  until the extraction is done (:meth:`NcnnRunner.input_mats`).
* ncnn's fp16/bf16 storage and arithmetic switches default to on (used on ARM phones and
  x86 CPUs with the instructions); verification sets them off, so the fp32 file is checked
  in fp32. pnnx stores fp16 weights by default; necktool asks for fp32 (``fp16=0``).

Not supported, and why: :data:`necktool.spec.runtimes.UNSUPPORTED`. Each runtime's runner
is one row of :data:`RUNNERS`; :func:`open_runner` is the one way to get one.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import pathlib
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from necktool import quiet
from necktool.deploy.comparison import VerificationResult, _db
from necktool.deploy.runtimes.ncnn_pair import NcnnPair
from necktool.errors import InputError, first_line
from necktool.report import Block, Note, Table, Verdict, all_passed, num, table
from necktool.spec.precision import Precision
from necktool.spec.runtimes import Runtime

if TYPE_CHECKING:
    import numpy as np


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# -- runners ---------------------------------------------------------------------------
class Runner:
    """The common interface: ``input_names``/``output_names`` (the neck's, in order),
    ``input_shapes`` (per input, ints for fixed dimensions; empty when the runtime does not
    say), ``run`` and ``describe``."""

    runtime: Runtime = Runtime.ORT
    version: str = ""
    input_names: list[str]
    output_names: list[str]

    def input_shapes(self) -> list[list[Any]]:
        return []

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray] | str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _why(exc: BaseException) -> str:
    return first_line(exc, 160, typed=False)


def openvino_reason(exc: BaseException, limit: int = 300) -> str:
    """OpenVINO's message without its C++ locations: it nests ``Exception from
    src/...cpp:84:`` lines before the reason, so its first line says nothing."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    reason = " ".join(ln for ln in lines if ln and not ln.startswith("Exception from ")
                      and not ln.startswith("Check '"))
    if not reason:
        reason = " ".join(ln for ln in lines if ln)
    return reason[:limit] or type(exc).__name__


class OrtRunner(Runner):
    """An ONNX Runtime session (from :func:`necktool.deploy.verify.open_session`)."""

    def __init__(self, session: Any, provider: str) -> None:
        self.session, self.provider = session, provider
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def input_shapes(self) -> list[list[Any]]:
        return [list(i.shape) for i in self.session.get_inputs()]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray] | str:
        feeds = dict(zip(self.input_names, inputs, strict=True))
        try:
            return list(self.session.run(None, feeds))
        except Exception as exc:  # ORT's untyped runtime errors, e.g. a broadcast mismatch
            return _why(exc)

    def describe(self) -> str:
        return f"ONNX Runtime {_version('onnxruntime')} ({self.provider})"


class OpenVinoRunner(Runner):
    """An ONNX file compiled by OpenVINO for its CPU plugin.

    Args:
        hint: The inference precision hint: ``"f32"`` (default; see the module docstring),
            or ``None`` to leave OpenVINO's default (``openvino:bf16``).
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice).
    """

    def __init__(self, source: str | pathlib.Path | bytes, *, hint: str | None = "f32",
                 threads: int | None = None) -> None:
        import openvino as ov

        self.runtime = Runtime.OPENVINO if hint == "f32" else Runtime.OPENVINO_BF16
        self.hint = hint
        config: dict[str, Any] = {}
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        what = "the exported model" if isinstance(source, bytes) else repr(str(source))
        try:
            with quiet.quiet():
                core = ov.Core()
                model = core.read_model(source if isinstance(source, bytes) else str(source))
                self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with C++ text
            raise InputError(f"OpenVINO cannot load {what}: {openvino_reason(exc)}") from None
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]
        self.version = ov.get_version().split("-")[0]

    @property
    def inference_precision(self) -> str:
        """What the compiled model computes in (``f32``, ``bf16``...), read back from it."""
        value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return str(value.to_string()) if hasattr(value, "to_string") else str(value)

    def input_shapes(self) -> list[list[Any]]:
        return [[d.get_length() if d.is_static else "?" for d in p.get_partial_shape()]
                for p in self.compiled.inputs]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray] | str:
        import numpy as np

        try:
            result = self.compiled([np.ascontiguousarray(x) for x in inputs])
            return [np.asarray(result[p]) for p in self.compiled.outputs]
        except Exception as exc:
            return openvino_reason(exc)

    def describe(self) -> str:
        how = "hint f32, set explicitly" if self.hint else "OpenVINO's default hint"
        return (f"OpenVINO {self.version} CPU, inference precision {self.inference_precision} "
                f"({how})")










class NcnnRunner(Runner):
    """An ncnn pair on the CPU, fp32 arithmetic (see the module docstring).

    ncnn has no batch dimension: a batch runs sample by sample, the outputs stacked.
    """

    runtime = Runtime.NCNN

    def __init__(self, pair: NcnnPair, input_names: Sequence[str], output_names: Sequence[str],
                 *, threads: int | None = None) -> None:
        import ncnn

        self.pair = pair
        self.input_names, self.output_names = list(input_names), list(output_names)
        net = ncnn.Net()
        opt = net.opt
        opt.use_vulkan_compute = False
        for switch in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                       "use_bf16_storage", "use_int8_inference"):
            setattr(opt, switch, False)
        if threads is not None:
            opt.num_threads = threads
        with tempfile.TemporaryDirectory(prefix="necktool-ncnn-") as tmp:
            param, weights = pathlib.Path(tmp) / "neck.param", pathlib.Path(tmp) / "neck.bin"
            param.write_bytes(pair.param)
            weights.write_bytes(pair.weights)
            with quiet.quiet():
                failed = net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0
        if failed:
            raise InputError("ncnn cannot load the converted neck (load_param/load_model "
                             "failed)")
        self.net = net
        self.version = _version("ncnn")

    def input_mats(self, sample: Sequence[np.ndarray]) -> list[tuple[Any, np.ndarray]]:
        """One ``(Mat, array)`` per input of one sample (C, H, W). The array is the Mat's
        memory: keep the pair until the extraction is done."""
        import ncnn
        import numpy as np

        out = []
        for x in sample:
            data = np.ascontiguousarray(x, dtype=np.float32)
            out.append((ncnn.Mat(data), data))
        return out

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray] | str:
        import numpy as np

        batch = int(inputs[0].shape[0])
        per_output: list[list[np.ndarray]] = [[] for _ in self.pair.output_blobs]
        try:
            for b in range(batch):
                held = self.input_mats([x[b] for x in inputs])
                with self.net.create_extractor() as ex:
                    for blob, (mat, _data) in zip(self.pair.input_blobs, held, strict=True):
                        ex.input(blob, mat)
                    for k, blob in enumerate(self.pair.output_blobs):
                        code, mat = ex.extract(blob)
                        if code != 0:
                            return f"ncnn could not extract {blob} (code {code})"
                        per_output[k].append(np.array(mat, copy=True))
                del held
        except Exception as exc:
            return _why(exc)
        return [np.stack(outs) for outs in per_output]

    def describe(self) -> str:
        weights = "fp16" if self.pair.fp16 else "fp32"
        return (f"ncnn {self.version} CPU, fp32 arithmetic, {weights} weights (pnnx "
                f"{_version('pnnx')}, from the PyTorch module)")


# -- several runtimes, one result -------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RuntimesVerification(Verdict):
    """One verification per runtime, shown as one table: runtime x case x output level.
    True when every runtime passed."""

    results: tuple[VerificationResult, ...]

    @property
    def passed(self) -> bool:
        return all_passed(self.results)

    @property
    def path(self) -> str:
        return self.results[0].path

    @property
    def precision(self) -> Precision:
        return self.results[0].precision

    @property
    def measured_on(self) -> str:
        """What the cases ran on (the same in every runtime)."""
        return self.results[0].measured_on if self.results else ""

    @property
    def max_abs(self) -> float:
        return max(r.max_abs for r in self.results)

    def summary(self) -> str:
        """One line: each runtime's verdict; a failing one's worst output in full."""
        parts = [f"{r.runtime} PASS (max abs {r.max_abs:.1e})" if r.passed
                 else f"{r.runtime} {r.summary()}" for r in self.results]
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} in {len(self.results)} runtimes: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "path": self.path,
                "runtimes": [r.to_dict() for r in self.results], "summary": self.summary()}

    def table(self) -> Table:
        rows, sections = [], []
        for r in self.results:
            for cmp in r.cases:
                for i, out in enumerate(cmp.outputs):
                    verdict = "PASS" if out.passed else "FAIL" + (
                        f" {out.note}" if out.note else f" {out.failed_elements:,} el.")
                    rows.append((r.runtime if i == 0 else "",
                                 cmp.case.title if i == 0 else "", out.name,
                                 f"{out.max_abs:.1e}", _db(out.sqnr_db), verdict))
                sections.append(len(rows) - 1)
        described = "\n".join(f"{r.runtime}: " + (f"ONNX Runtime ({r.provider})" if
                                                  r.runtime == Runtime.ORT else r.provider)
                              for r in self.results)
        return table(
            f"Runtimes vs PyTorch: {self.results[0].neck}",
            ["runtime", "case", "out", num("max abs"), num("SQNR dB"), "result"], rows,
            sections=tuple(sections), verdict=5,
            caption=f"{described}\nper runtime: {self.results[0].tolerance_text} by the "
                    "file's precision; SQNR = 10 log10(sum torch^2 / sum (runtime - "
                    "torch)^2); everything per output in --format json\n" + self.summary())

    def blocks(self) -> list[Block]:
        out: list[Block] = [self.table()]
        if not self.passed:
            out.append(Note(self.summary(), "fail"))
        return out


# -- the runners, one row each ---------------------------------------------------------
ModelSource = str | pathlib.Path | bytes  # a file, or a serialized model still in memory


def source_name(source: ModelSource) -> str:
    return "the exported model" if isinstance(source, bytes) else repr(str(source))


def open_session(source: ModelSource, provider: str) -> Any:
    """An ONNX Runtime session on ``provider`` only, with ORT's own logging off.

    ORT prints its errors on the C++ side's stderr even at severity 3; every error here is
    caught and reported (a load failure as an ``InputError``, a failed run as a failed
    case), so its own logging is fatal-only."""
    ort = quiet.onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 4
    model = source if isinstance(source, bytes) else str(source)
    try:
        return ort.InferenceSession(model, sess_options=options, providers=[provider])
    except Exception as exc:  # ORT raises its own untyped Fail/InvalidGraph errors
        raise InputError(f"ONNX Runtime cannot load {source_name(source)}: "
                         f"{first_line(exc, typed=False)}") from None


@dataclasses.dataclass(frozen=True)
class RunnerRequest:
    """What any runner may need: the ONNX ``source``, the neck's ``spec`` (its tensor names)
    and PyTorch ``model`` (ncnn converts the module), the ORT ``provider``, intra-op
    ``threads`` (``None``: the runtime's choice) and an already converted ``ncnn_pair``."""

    source: ModelSource
    spec: Any
    model: Any = None
    provider: str = "cpu"
    threads: int | None = None
    ncnn_pair: NcnnPair | None = None


def _ort_runner(req: RunnerRequest) -> Runner:
    return OrtRunner(open_session(req.source, req.provider), req.provider)


def _openvino_runner(hint: str | None) -> Callable[[RunnerRequest], Runner]:
    def make(req: RunnerRequest) -> Runner:
        return OpenVinoRunner(req.source, hint=hint, threads=req.threads)
    return make


def _ncnn_runner(req: RunnerRequest) -> Runner:
    pair = req.ncnn_pair
    if pair is None:  # the module converted by pnnx, as export --to ncnn converts it
        from necktool.deploy.runtimes.pnnx import neck_to_ncnn

        pair = neck_to_ncnn(req.model, req.spec)
    return NcnnRunner(pair, req.spec.input_names, req.spec.output_names, threads=req.threads)


#: Each runtime that runs exported files, and how its runner is made.
RUNNERS: dict[Runtime, Callable[[RunnerRequest], Runner]] = {
    Runtime.ORT: _ort_runner,
    Runtime.OPENVINO: _openvino_runner("f32"),
    Runtime.OPENVINO_BF16: _openvino_runner(None),
    Runtime.NCNN: _ncnn_runner,
}


def open_runner(runtime: Runtime, source: ModelSource, model: Any, spec: Any,
                provider: str = "cpu", ncnn_pair: NcnnPair | None = None, *,
                threads: int | None = None) -> Runner:
    """The runner of ``runtime`` for an ONNX ``source`` (ncnn: for ``ncnn_pair``, else for
    ``model`` converted by pnnx).

    Raises:
        InputError: ``runtime`` has no row in :data:`RUNNERS` (never another's runner).
    """
    make = RUNNERS.get(runtime)
    if make is None:
        raise InputError(f"runtime {runtime.value!r} has no runner in "
                         f"necktool.deploy.runtimes.runners.RUNNERS; runners: "
                         f"{', '.join(r.value for r in RUNNERS)}")
    return make(RunnerRequest(source, spec, model, provider, threads, ncnn_pair))
