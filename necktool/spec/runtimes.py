"""What runs a neck: the one runtime vocabulary of ``--runtime`` for verify, export and
bench (torch-free).

Each runtime is one row of :data:`RUNTIMES` (its label, the pip extra that installs it,
whether it runs exported files and whether bench can time it stage by stage); its runner
is one row of :data:`necktool.deploy.runtimes.runners.RUNNERS`. A runtime without a row in
either table fails with its name, never falls through to another runtime's code.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
from collections.abc import Sequence

from necktool.errors import InputError


class Runtime(enum.StrEnum):
    """What runs the neck (``--runtime``; ``onnxruntime`` is accepted for ``ort``)."""

    TORCH = "torch"  # the PyTorch module itself: the reference; bench times it too
    ORT = "ort"
    OPENVINO = "openvino"  # the ONNX file, f32 inference precision hint
    OPENVINO_BF16 = "openvino:bf16"  # OpenVINO's default inference precision hint
    NCNN = "ncnn"  # the pair pnnx converts from the module

    @classmethod
    def _missing_(cls, value: object) -> Runtime | None:
        word = str(value).strip().lower()
        if word == "onnxruntime":
            return cls.ORT
        return next((r for r in cls if r.value == word), None)

    @property
    def info(self) -> RuntimeInfo:
        try:
            return RUNTIMES[self]
        except KeyError:
            raise InputError(f"runtime {self.value!r} is not registered in "
                             "necktool.spec.runtimes.RUNTIMES") from None

    @property
    def label(self) -> str:
        return self.info.label

    @property
    def timing_name(self) -> str:
        """Its name in bench's results and progress."""
        return self.info.timing_name or self.value


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """One runtime's row.

    Attributes:
        label: Its name in reports.
        extra: The pip extra that installs it (``necktool[extra]``); ``None``: always there.
        modules: The Python modules the extra must provide.
        runs_files: It runs an exported file (verify, export); torch does not.
        staged: ``bench --stages`` has a per-stage profiler for it.
        timing_name: Its name in bench's results (bench has always said ``onnxruntime``).
    """

    label: str
    extra: str | None = None
    modules: tuple[str, ...] = ()
    runs_files: bool = True
    staged: bool = False
    timing_name: str | None = None


RUNTIMES: dict[Runtime, RuntimeInfo] = {
    Runtime.TORCH: RuntimeInfo("PyTorch", runs_files=False, staged=True),
    Runtime.ORT: RuntimeInfo("ONNX Runtime", staged=True, timing_name="onnxruntime"),
    Runtime.OPENVINO: RuntimeInfo("OpenVINO (f32 hint)", "openvino", ("openvino",)),
    Runtime.OPENVINO_BF16: RuntimeInfo("OpenVINO (default hint)", "openvino", ("openvino",)),
    Runtime.NCNN: RuntimeInfo("ncnn", "ncnn", ("ncnn", "pnnx")),
}
#: Runtimes asked for by users that necktool does not support, with the reason.
UNSUPPORTED = {
    "mnn": "MNN is not supported: its converter pip-installs a telemetry package at run time, "
           "which downgraded protobuf and broke 'import onnx' in the same environment",
    "litert": "LiteRT (TFLite) is not supported: converting needs onnx2tf and TensorFlow (a "
              "2.6 GB environment), serves fixed input sizes only, and onnx2tf overwrote its "
              "input .onnx in place",
}
UNSUPPORTED["tflite"] = UNSUPPORTED["litert"]


def valid_names(*, torch: bool = False) -> str:
    """The runtime names a ``--runtime`` takes, for messages."""
    return ", ".join(r.value for r, info in RUNTIMES.items() if torch or info.runs_files)


def parse_runtime(text: str | Runtime, *, torch: bool = False) -> Runtime:
    """One runtime name (``ort``, ``onnxruntime``, ``openvino``, ``openvino:bf16``, ``ncnn``;
    ``torch`` too where ``torch`` is true: bench).

    Raises:
        InputError: unknown, or named in :data:`UNSUPPORTED` (with the reason).
    """
    word = str(text).strip().lower()
    valid = valid_names(torch=torch)
    if word in UNSUPPORTED:
        raise InputError(f"--runtime {word}: {UNSUPPORTED[word]}; supported: {valid}")
    try:
        runtime = Runtime(word)
    except ValueError:
        raise InputError(f"unknown runtime {str(text).strip()[:40]!r}; valid: {valid}") from None
    if not (torch or runtime.info.runs_files):
        raise InputError(f"runtime {runtime.value!r} does not run exported files; valid: {valid}")
    return runtime


def parse_runtimes(text: str | Sequence[str | Runtime], *, torch: bool = False
                   ) -> list[Runtime]:
    """``ort,openvino,ncnn`` (or several such texts): distinct runtimes, in the order given."""
    texts = [text] if isinstance(text, str) else list(text)
    words = [w for t in texts for w in str(t).split(",")]
    if not words or not all(w.strip() for w in words):
        raise InputError(f"--runtime takes a comma-separated list of {valid_names(torch=torch)}")
    return list(dict.fromkeys(parse_runtime(w, torch=torch) for w in words))


def require_runtime(runtime: Runtime) -> Runtime:
    """The runtime, once its packages are known to be installed (nothing imported).

    Raises:
        InputError: a package is missing; the message names the extra that installs it.
    """
    info = runtime.info
    missing = [m for m in info.modules if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"--runtime {runtime.value} needs the Python package(s) "
                         f"{', '.join(missing)}, which are not installed: "
                         f"pip install 'necktool[{info.extra}]'")
    return runtime
