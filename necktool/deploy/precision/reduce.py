"""Convert a checked fp32 graph to fp16 or int8 and measure what it lost: the conversion
(:mod:`necktool.deploy.precision.convert`) calibrated on the user's data or on synthetic inputs, the
calibration method chosen on held-out data (``auto``), stages kept in fp32, the per-stage
SQNR and the smallest set of stages to keep in fp32 when ``min_sqnr`` is not met
(:mod:`necktool.deploy.precision.loss`).

Without data, calibration and measurement use seeded normal inputs (measurement on seeds
of its own, :data:`MEASURE_SEED`), and the report says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from necktool.artifact.stages import PartOf
from necktool.deploy.data import SYNTHETIC, SYNTHETIC_NOTE, Data
from necktool.deploy.precision.convert import PER_CHANNEL, Shape, convert
from necktool.deploy.precision.loss import (
    MethodTrial,
    PrecisionReport,
    Reference,
    choose_method,
    stage_nodes,
    stages_of,
    suggest_keep_fp32,
)
from necktool.errors import InputError
from necktool.spec.fields import is_number
from necktool.spec.precision import DEFAULT_CALIBRATION, CalibrationMethod, Precision

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from necktool.spec.neck_spec import NeckSpec

MEASURE_SEED = 7000  # synthetic measurement inputs: seed 7000 + i


@dataclasses.dataclass(frozen=True)
class Reduction:
    """How to reduce precision (every field has a default that reproduces plain
    ``--precision``)."""

    data: Data | None = None
    method: CalibrationMethod = CalibrationMethod.MINMAX
    per_channel: bool = PER_CHANNEL
    keep_fp32: tuple[str, ...] = ()
    stages: bool = False
    min_sqnr: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", CalibrationMethod(self.method))
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))
        if self.min_sqnr is not None and (not is_number(self.min_sqnr)
                                          or not -100 <= self.min_sqnr <= 200):
            raise InputError(f"--min-sqnr must be a number of dB from -100 to 200, got "
                             f"{self.min_sqnr!r}")

    def describe(self) -> dict[str, Any]:
        """What decides the reduced file (an export plan's hash covers it): the method,
        per-channel weights, the stages kept in fp32, ``--stages``, the SQNR floor, and
        the data (its split and a digest of its arrays)."""
        data = None
        if self.data is not None:
            digest = hashlib.sha256()
            for feature_set in (*self.data.calibration, *self.data.holdout):
                for array in feature_set.arrays:
                    digest.update(array.tobytes())
            data = {**self.data.to_dict(), "sha256": digest.hexdigest()}
        return {"method": self.method.value, "per_channel": self.per_channel,
                "keep_fp32": list(self.keep_fp32), "stages": self.stages,
                "min_sqnr": self.min_sqnr, "data": data}

    @property
    def plain(self) -> bool:
        """Nothing asked beyond the conversion itself."""
        return self == Reduction()

    def check(self, precision: Precision) -> None:
        """Refuse options that mean nothing at ``precision``."""
        if precision is Precision.FP32:
            given = [f for f, v in (("--keep-fp32", self.keep_fp32), ("--stages", self.stages),
                                    ("--min-sqnr", self.min_sqnr is not None)) if v]
            if given:
                raise InputError(f"{', '.join(given)} describe an fp16 or int8 file; add "
                                 "--precision fp16 or int8")
        if precision is not Precision.INT8 and self.method is not CalibrationMethod.MINMAX:
            raise InputError("--calibration-method sets int8 calibration; add --precision "
                             "int8")


def synthetic_feeds(spec: NeckSpec, shapes: Sequence[Shape], count: int = 4
                    ) -> list[dict[str, np.ndarray]]:
    from necktool.necks.build import make_inputs

    feeds = []
    for i in range(count):
        size, batch = shapes[i % len(shapes)]
        inputs = make_inputs(spec, size, batch, seed=MEASURE_SEED + i)
        feeds.append({n: t.numpy() for n, t in zip(spec.input_names, inputs, strict=True)})
    return feeds


def reduce_precision(proto: onnx.ModelProto, precision: Precision, *, spec: NeckSpec,
                     part_of: PartOf, shapes: Sequence[Shape],
                     calibration: int | None = None, how: Reduction | None = None
                     ) -> tuple[onnx.ModelProto, PrecisionReport]:
    """``proto`` (fp32, checked) at ``precision``, and what it lost against the fp32 graph.

    Raises:
        InputError: a ``keep_fp32`` stage the neck does not have.
        ExportError: a conversion failed.
    """
    how = how or Reduction()
    how.check(precision)
    int8 = precision is Precision.INT8
    keep_nodes = stage_nodes(proto, part_of, how.keep_fp32) if how.keep_fp32 else []
    data = how.data
    names = spec.input_names
    calib = [s.feeds(names) for s in data.calibration] if data is not None else None
    measure = [s.feeds(names) for s in data.verification] if data is not None else \
        synthetic_feeds(spec, shapes)
    count = calibration or DEFAULT_CALIBRATION

    def make(method: CalibrationMethod, keep: Sequence[str]) -> onnx.ModelProto:
        return convert(proto, precision, spec=spec, shapes=shapes, calibration=count,
                       feeds=calib, method=method, per_channel=how.per_channel,
                       keep_fp32=keep)

    reference = Reference(proto, measure, part_of)
    methods: tuple[MethodTrial, ...] = ()
    method = how.method if int8 else None
    if int8 and how.method is CalibrationMethod.AUTO:
        converted, trials = choose_method(reference, lambda m: make(m, keep_nodes))
        methods, method = tuple(trials), trials[0].method
    else:
        converted = make(how.method, keep_nodes)
    outputs = reference.output_sqnr(converted)
    suggestion = None
    if how.min_sqnr is not None and min(outputs.values()) < how.min_sqnr:
        assert method is not None or not int8
        chosen = method or CalibrationMethod.MINMAX
        suggestion = suggest_keep_fp32(
            reference, stages_of(proto, part_of), how.min_sqnr,
            lambda keep: make(chosen, stage_nodes(proto, part_of, keep)))
    measured_on = data.describe() if data is not None else \
        f"{SYNTHETIC} ({len(measure)} seeded batches)"
    report = PrecisionReport(precision=precision, measured_on=measured_on, method=method,
                             per_channel=how.per_channel if int8 else None, keep_fp32=how.keep_fp32,
                             outputs=outputs, methods=methods,
                             stages=tuple(reference.stage_sqnr(converted)) if how.stages else (),
                             min_sqnr=how.min_sqnr, suggestion=suggestion,
                             note=SYNTHETIC_NOTE if int8 and data is None else "", data=data)
    return converted, report
