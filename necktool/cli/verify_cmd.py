"""``necktool verify``: re-check an ONNX file against the PyTorch neck."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.cli.data_params import DataOpt, StagesOpt
from necktool.cli.params import (
    PATH,
    FileFlagsOpt,
    RuntimeOpt,
    VerifyOpt,
    WeightsOpt,
)
from necktool.cli.render import load_heavy, progress

if TYPE_CHECKING:
    from necktool.deploy.against import AgainstReport
    from necktool.deploy.verify import VerifyReport

ModelArg = Annotated[Any, typer.Argument(
    metavar="[MODEL.onnx]", show_default=False, parser=PATH,
    help="An ONNX file, normally written by 'necktool export'. Optional with --weights "
    "DET.onnx: the neck is built with the detector's weights and compared with it.")]
AgainstOpt = Annotated[Any, typer.Option(
    "--against", metavar="DET.onnx", show_default=False, parser=PATH,
    help="A detector ONNX file: run it in ONNX Runtime with its neck's input and output "
    "tensors exposed, and compare MODEL.onnx and necktool's neck (built with the "
    "detector's weights) on the same neck inputs, level by level.")]
NeckOpt = Annotated[str | None, typer.Option(
    "--neck", metavar="NECK", show_default=False,
    help="The neck the file holds (preset, family or import path). Default: from the file's "
    "metadata; for a file necktool did not write, the neck --weights holds.")]


def verify_command(model: ModelArg = None, neck: NeckOpt = None, runtime: RuntimeOpt = None,
                   against: AgainstOpt = None, *, flags: FileFlagsOpt, weights: WeightsOpt,
                   options: VerifyOpt, data: DataOpt,
                   reduce: StagesOpt) -> VerifyReport | AgainstReport:
    """Compare an ONNX file in ONNX Runtime with the neck rebuilt from its metadata.

    The neck, its weights (seed or file) and the export size come from the file's
    metadata unless --neck, build flags, --seed or --weights say otherwise; --batch sets
    the export-size case's batch (default: as recorded). Exit 1 if any output of any case
    is over tolerance. --runtime ort,openvino,ncnn runs it in each runtime, in one table.
    With --calibration-data or --images/--backbone, the cases are the held-out feature sets
    (the same split export calibrated on); --stages adds an fp16/int8 file's SQNR per stage.

    With --against DET.onnx (or --weights DET.onnx and no MODEL): compare with the neck
    inside a detector, level by level (shape, max abs error, SQNR); exit 1 on a mismatch.
    --images DIR then feeds those images to the detector.
    """
    from necktool.errors import InputError

    detector = against
    if detector is None and model is None and weights.path is not None \
            and str(weights.path).lower().endswith(".onnx"):
        detector = weights.path
    if detector is not None:
        if weights.path is not None and weights.path != detector:
            raise InputError("--against compares with the detector's own weights; leave "
                             "out --weights (or give the same file)")
        extra = [flag for flag, on in (("--runtime", runtime), ("--stages", reduce.stages),
                                       ("--calibration-data", data.calibration_data),
                                       ("--backbone", data.backbone)) if on]
        if extra:
            raise InputError(f"{', '.join(extra)} verify an exported file; with --against "
                             "the detector runs in ONNX Runtime on --images: leave them out")
        load_heavy()
        from necktool.deploy.against import verify_against

        with progress(1, "verify") as advance:
            against_report = verify_against(detector, neck_file=model, images=data.images,
                                            options=options)
            advance(str(detector))
        return against_report
    if model is None:
        raise InputError("verify needs MODEL.onnx, or --weights DET.onnx (a detector) to "
                         "compare necktool's neck with the one inside it")
    from necktool.deploy.plan import VerifyPlan

    plan = VerifyPlan.build(model, neck=neck, weights=weights, batch=flags.given("batch"),
                            options=options, runtimes=runtime or ("ort",),
                            data=data if data.given else None, **flags.overrides())
    load_heavy()
    from necktool.deploy.verify import run_verify

    with progress(plan.steps, "verify") as advance:
        report = run_verify(plan, on_case=advance)
    if reduce.stages:
        from necktool.deploy.precision.audit import add_stages

        report = add_stages(report)
    return report
