"""``verify --stages``: where an existing fp16 or int8 file loses precision, stage by stage,
against a fresh fp32 export of the neck it holds (the exporter is deterministic, so the
stage tensors carry the same names in both graphs; a tensor the file lacks is skipped).

A module of its own because it needs both the exporter (:mod:`necktool.deploy.export`)
and the verification (:mod:`necktool.deploy.verify`), which import each other's parts
the other way round.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from necktool.artifact.metadata import load_model
from necktool.artifact.serving import calibration_shapes
from necktool.deploy.data import SYNTHETIC
from necktool.deploy.export import export_model
from necktool.deploy.model import make_model
from necktool.deploy.precision.loss import PrecisionReport, Reference
from necktool.deploy.precision.reduce import synthetic_feeds
from necktool.deploy.verify import VerifyReport, verify_onnx
from necktool.errors import InputError
from necktool.necks.build import input_tensors
from necktool.necks.layers import set_upsample
from necktool.spec.graph_form import DEFAULT_OPSET
from necktool.spec.precision import Precision


def verify_stages(path: str | pathlib.Path, **kwargs: Any) -> VerifyReport:
    """:func:`~necktool.deploy.verify.verify_onnx` plus the per-stage SQNR of the file
    against fp32 (``report.reduced``), on the held-out data when given, else on seeded
    normal inputs.

    Raises:
        InputError: the file is fp32 (nothing to compare stage by stage), or as
            ``verify_onnx``.
    """
    return add_stages(verify_onnx(path, **kwargs))


def add_stages(report: VerifyReport) -> VerifyReport:
    """``report`` with the per-stage SQNR of its file against a fresh fp32 export of the
    neck it was compared with (see :func:`verify_stages`)."""
    path = report.path
    if report.verification.precision is Precision.FP32:
        raise InputError(f"--stages compares an fp16 or int8 file's stages with fp32; "
                         f"{str(path)!r} is fp32")
    assert report.source is not None and report.served is not None
    spec, source, served = report.spec, report.source, report.served
    model, _ = make_model(spec, source.request())
    set_upsample(model, report.upsample)
    proto = load_model(str(path))
    opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                 DEFAULT_OPSET)
    inputs = input_tensors(spec, spec.input_size, report.batch, seed=0)
    fp32 = export_model(model, spec, inputs, dynamic=served.dynamic, opset=opset,
                        served=served)
    data = report.data
    shapes = calibration_shapes(spec, spec.input_size, report.batch, served)
    feeds = [s.feeds(spec.input_names) for s in data.verification] if data else \
        synthetic_feeds(spec, shapes)
    reference = Reference(fp32, feeds, model.part_of)  # type: ignore[arg-type]
    measured_on = data.describe() if data else f"{SYNTHETIC} ({len(feeds)} seeded batches)"
    reduced = PrecisionReport(precision=report.verification.precision, measured_on=measured_on,
                              method=None, per_channel=None, keep_fp32=(),
                              outputs=reference.output_sqnr(proto),
                              stages=tuple(reference.stage_sqnr(proto)), data=data)
    return dataclasses.replace(report, reduced=reduced)
