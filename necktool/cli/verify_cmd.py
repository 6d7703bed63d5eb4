"""``necktool verify``: re-check an ONNX file against the PyTorch neck."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.cli.params import PATH, BuildFlagsOpt, FormatOpt, VerifyOpt, WeightsOpt
from necktool.cli.render import load_heavy, progress

if TYPE_CHECKING:
    from necktool.deploy.verify import VerifyReport

ModelArg = Annotated[Any, typer.Argument(
    metavar="MODEL.onnx", show_default=False, parser=PATH,
    help="An ONNX file, normally written by 'necktool export'.")]
NeckOpt = Annotated[str | None, typer.Option(
    "--neck", metavar="NECK", show_default=False,
    help="The neck the file holds (preset, family or import path). Default: from the file's "
    "metadata; for a file necktool did not write, the neck --weights holds.")]


def verify_command(model: ModelArg, neck: NeckOpt = None, *, flags: BuildFlagsOpt,
                   weights: WeightsOpt, options: VerifyOpt, fmt: FormatOpt) -> VerifyReport:
    """Compare an ONNX file in ONNX Runtime with the neck rebuilt from its metadata.

    The neck, its weights (seed or file) and the export size come from the file's
    metadata unless --neck, build flags, --seed or --weights say otherwise; --batch sets
    the export-size case's batch (default: as recorded). Exit 1 if any output of any case
    is over tolerance.
    """
    from necktool.deploy.plan import VerifyPlan

    plan = VerifyPlan.build(model, neck=neck, weights=weights, batch=flags.given("batch"),
                            options=options, **flags.overrides())
    load_heavy()
    from necktool.deploy.verify import run_verify

    with progress(plan.steps, "verify") as advance:
        return run_verify(plan, on_case=advance)
