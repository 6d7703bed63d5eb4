"""The arithmetic of an exported file and how int8 is calibrated (torch-free vocabulary)."""

from __future__ import annotations

import enum

from necktool.errors import InputError
from necktool.spec.fields import is_int

DEFAULT_CALIBRATION = 8  # int8: seeded calibration batches (--calibration)

MAX_CALIBRATION = 1000


class Precision(enum.StrEnum):
    """The arithmetic of an exported file (``--precision``); inputs and outputs are float32
    in all three."""

    FP32 = "fp32"
    FP16 = "fp16"  # weights and compute in float16
    INT8 = "int8"  # ONNX Runtime static quantization, QDQ, int8 weights and activations


class CalibrationMethod(enum.StrEnum):
    """How int8 activation ranges are found (``--calibration-method``)."""

    MINMAX = "minmax"  # the observed minimum and maximum
    PERCENTILE = "percentile"  # the 99.999th percentile of |x| (ONNX Runtime's default)
    ENTROPY = "entropy"  # the threshold minimising the KL divergence of the histograms
    AUTO = "auto"  # each of the three; the best held-out worst-level SQNR is kept


def check_precision(precision: Precision | str, calibration: int | None) -> tuple[Precision,
                                                                                  int | None]:
    """The precision, and the calibration batch count (int8 only; default
    :data:`~necktool.deploy.tolerance.DEFAULT_CALIBRATION`)."""
    try:
        precision = Precision(precision)
    except ValueError:
        raise InputError(f"precision {str(precision)[:40]!r} is not one of "
                         f"{', '.join(Precision)}") from None
    if calibration is not None and precision is not Precision.INT8:
        raise InputError(f"--calibration sets the int8 calibration batches; this export is "
                         f"{precision.value} (add --precision int8)")
    if precision is not Precision.INT8:
        return precision, None
    calibration = DEFAULT_CALIBRATION if calibration is None else calibration
    if not is_int(calibration) or not 1 <= calibration <= MAX_CALIBRATION:
        raise InputError(f"calibration must be an integer from 1 to {MAX_CALIBRATION}, got "
                         f"{calibration!r}")
    return precision, calibration
