"""What a bench will do, checked once (torch-free): see :mod:`necktool.analysis.plan`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from necktool.analysis.plan import check_batch, content_hash
from necktool.errors import InputError
from necktool.latency.timing import ALL_RUNTIMES, DEFAULT_REPEAT, DEFAULT_WARMUP, MAX_RUNS
from necktool.report import size_text
from necktool.spec.fields import is_int
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.precision import Precision, check_precision
from necktool.spec.registry import resolve_spec
from necktool.spec.resources import forward_bytes, require
from necktool.spec.runtimes import Runtime, parse_runtime, require_runtime
from necktool.spec.weights import WeightsRequest

if TYPE_CHECKING:  # numpy: only a bench with data needs it
    from necktool.deploy.data import Data

Size = tuple[int, int]


def check_count(value: int, what: str, high: int = MAX_RUNS) -> int:
    """A positive run or thread count, at most ``high``."""
    if not is_int(value) or not 1 <= value <= high:
        raise InputError(f"{what} must be an integer from 1 to {high:,}, got {value!r}")
    return value


def check_bench_data(data: Data, spec: NeckSpec, batch: int,
                     precisions: Sequence[Precision]) -> None:
    """The user's feature sets calibrate int8 for ``bench``, whose files are static: int8
    must be timed, and every set must have the timed size's levels and batch."""
    if Precision.INT8 not in precisions:
        raise InputError("--calibration-data and --images calibrate int8 here; add int8 to "
                         "--precision")
    size = spec.input_size
    want = tuple(tuple(s) for s in spec.input_sizes(size))
    for s in data.calibration + data.verification:
        if s.sizes != want or s.batch != batch:
            raise InputError(f"bench times a static file at {size_text(size)}, batch {batch}; "
                             f"feature set {s.name!r} has level sizes {list(s.sizes)}, batch "
                             f"{s.batch}: give features of that size (--image-size "
                             f"{size_text(size)} with --images)")


@dataclasses.dataclass(frozen=True)
class BenchPlan:
    """A latency measurement (see :func:`necktool.latency`), checked.

    Attributes:
        spec: The resolved neck (its ``input_size`` is the timed size).
        batch: Batch size.
        warmup, repeat: Untimed and timed runs per series.
        threads: Intra-op threads; ``None``: torch's default, read when run.
        runtimes: What is timed, in order.
        precisions: ONNX Runtime precisions timed (one series each); empty: fp32, without
            the error columns.
        calibration: int8 calibration batches (``None`` without int8).
        seed: Seed of the inputs (and of the weights, unless ``weights`` names a file).
        weights: Where the weights come from (a seed, a checkpoint, a detector ONNX file).
        data: int8: the user's feature sets (calibrated on, errors measured on the held-out
            part), each at the timed size's levels and batch.
        stages: Also profile ``repeat`` runs per runtime, stage by stage.
    """

    spec: NeckSpec
    batch: int = 1
    warmup: int = DEFAULT_WARMUP
    repeat: int = DEFAULT_REPEAT
    threads: int | None = None
    runtimes: tuple[Runtime, ...] = ALL_RUNTIMES
    precisions: tuple[Precision, ...] = ()
    calibration: int | None = None
    seed: int = 0
    stages: bool = False
    weights: WeightsRequest = dataclasses.field(default_factory=WeightsRequest)
    data: Data | None = None

    @classmethod
    def build(cls, neck: str | NeckSpec, input_size: Size | None = None, batch: int = 1, *,
              warmup: int = DEFAULT_WARMUP, repeat: int = DEFAULT_REPEAT,
              threads: int | None = None, runtimes: Sequence[Runtime | str] | None = None,
              seed: int = 0, precisions: Sequence[Precision | str] = (),
              calibration: int | None = None, stages: bool = False,
              weights: WeightsRequest = WeightsRequest(), data: Data | None = None,
              **overrides: Any) -> BenchPlan:
        """Every check of :func:`necktool.latency`'s arguments, in its order.

        Raises:
            InputError: a count, the thread number, a precision or the runtime list is
                invalid.
            SpecError: the neck cannot run at ``input_size``, or it does not fit in memory.
        """
        check_count(warmup, "warmup")
        check_count(repeat, "repeat")
        if threads is not None:
            check_count(threads, "threads")
        order = tuple(dict.fromkeys(check_precision(p, None)[0] for p in precisions))
        if calibration is not None and Precision.INT8 not in order:
            check_precision(Precision.INT8, calibration)  # its range first, as before
            raise InputError("--calibration sets the int8 calibration batches; add int8 to "
                             "--precision")
        if Precision.INT8 in order:
            calibration = check_precision(Precision.INT8, calibration)[1]
        if runtimes is None:
            runtimes = (Runtime.ORT,) if order else ALL_RUNTIMES
        chosen = tuple(dict.fromkeys(parse_runtime(r, torch=True) for r in runtimes))
        if not chosen:
            raise InputError("no runtime to time; valid: torch, onnxruntime")
        if order and Runtime.ORT not in chosen:
            raise InputError("--precision times ONNX Runtime files; add --runtime onnxruntime")
        for runtime in chosen:  # an optional extra not installed: exit 2 naming it
            require_runtime(runtime)
        missing = [r.timing_name for r in chosen if not r.info.staged] if stages else []
        if missing:
            staged = [r.timing_name for r in Runtime if r.info.staged]
            raise InputError(f"--stages: no per-stage profile for runtime {missing[0]!r}; "
                             f"available: {', '.join(staged)}")
        spec = resolve_spec(neck, input_size=input_size, **overrides)
        batch = check_batch(batch)
        require(forward_bytes(spec, spec.input_size, batch),
                f"{spec.label} at {size_text(spec.input_size)}, batch {batch},")
        if data is not None:
            check_bench_data(data, spec, batch, order)
            calibration = len(data.calibration)
        return cls(spec, batch, warmup, repeat, threads, chosen, order, calibration, seed,
                   bool(stages), weights, data)

    @property
    def series(self) -> tuple[tuple[Runtime, Precision], ...]:
        """What is timed, in order: torch once, ONNX Runtime once per precision."""
        return tuple((r, p) for r in self.runtimes
                     for p in ((Precision.FP32,) if r is Runtime.TORCH
                               else self.precisions or (Precision.FP32,)))

    @property
    def steps(self) -> int:
        """Timed (and stage-profiled) runs in all: a progress bar's total."""
        return self.repeat * (len(self.series) + (len(self.runtimes) if self.stages else 0))

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "name": self.spec.label, "batch": self.batch,
                "warmup": self.warmup, "repeat": self.repeat, "threads": self.threads,
                "runtimes": [r.value for r in self.runtimes],
                "precisions": [p.value for p in self.precisions],
                "calibration": self.calibration, "seed": self.seed, "stages": self.stages,
                "weights": self.weights.to_dict(),
                "data": None if self.data is None else self.data.to_dict()}

    def content_hash(self) -> str:
        """SHA-256 of every field (see the module docstring); timings themselves vary."""
        return content_hash("bench", self.to_dict())
