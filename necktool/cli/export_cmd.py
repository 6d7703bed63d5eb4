"""``necktool export``: write a checked, verified ONNX file of a neck, or of every neck of
the project's budget config."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.cli.data_params import DataOpt, ReduceOpt
from necktool.cli.params import (
    NECK_HELP,
    PATH,
    VERIFY_PANEL,
    BuildFlagsOpt,
    CalibrationOpt,
    ConfigOpt,
    PrecisionOpt,
    RuntimeOpt,
    VerifyOpt,
    WeightsOpt,
    neck_in_weights,
    typer_parser,
)
from necktool.cli.render import load_heavy, progress
from necktool.deploy.plan import ExportTo
from necktool.errors import InputError
from necktool.spec.fields import ChoiceKind, IntKind
from necktool.spec.graph_form import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, Upsample
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.precision import CalibrationMethod
from necktool.spec.registry import resolve_spec

if TYPE_CHECKING:
    from necktool.budgets.export import ConfigExport
    from necktool.deploy.export import ExportResult
    from necktool.deploy.plan import ExportRequest
    from necktool.deploy.runtimes.ncnn_export import NcnnExportResult

EXPORT = "Export"


ExportNeckArg = Annotated[str | None, typer.Argument(
    metavar="[NECK]", show_default=False,
    help=NECK_HELP + " Without one: the neck --weights FILE holds, as 'necktool inspect' "
    "finds it; with no --weights either, every budget entry of the project's config (found "
    "as 'necktool check' finds it, or --config).")]
OnnxFlag = Annotated[bool, typer.Option(  # accepted, never read: ONNX is the one format
    "--onnx", rich_help_panel=EXPORT, show_default=False, expose_value=False,
    help="Write ONNX, the export format (the default; the result names it).")]
To = Annotated[Any, typer.Option(
    "--to", metavar="[onnx|ncnn]", rich_help_panel=EXPORT, show_default=False,
    parser=typer_parser(ChoiceKind(ExportTo).from_text),
    help="The format: onnx (default), or ncnn: the .param/.bin pair converted by pnnx from "
    "the PyTorch module (fp32 weights unless --precision fp16), verified in ncnn at the "
    "same sizes as an ONNX export; the report names the input and output blobs. -o X.param "
    "names the pair (default <neck>.ncnn.param/.bin). Needs pip install 'necktool[ncnn]'.")]
Output = Annotated[Any, typer.Option(
    "-o", "--output", metavar="PATH", rich_help_panel=EXPORT, show_default=False, parser=PATH,
    help="With a NECK: the destination file (default <neck>.onnx). Without one: the "
    "directory that gets <entry name>.onnx per budget entry (default: the current "
    "directory). Written only after every check passed.")]
Static = Annotated[bool, typer.Option(
    "--static", rich_help_panel=EXPORT,
    help="Fix batch and image size to the export size. Default: dynamic batch, height and "
    "width (every image size from the coarsest stride up).")]
Opset = Annotated[Any, typer.Option(
    "--opset", metavar="N", rich_help_panel=EXPORT, show_default=False,
    parser=typer_parser(IntKind(low=MIN_OPSET, high=MAX_OPSET).from_text),
    help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}. Default: {DEFAULT_OPSET}.")]
UpsampleOpt = Annotated[Any, typer.Option(
    "--upsample", metavar="[" + "|".join(Upsample) + "]", rich_help_panel=EXPORT,
    parser=typer_parser(ChoiceKind(Upsample).from_text), show_default=False,
    help="How the file writes nearest upsampling. size (default): a Resize to the finer "
    "level's size, computed from its Shape. scale2: a constant x2 Resize, then a crop to the "
    "finer level's size, for converters that freeze a size-computed Resize at the export "
    "size (ncnn, OpenCV). The same numbers, FLOPs and conv MACs; a scale2 file's levels must "
    "be the ceil(H/stride) sizes of one image.")]
ForceFlag = Annotated[bool, typer.Option(
    "--force", rich_help_panel=EXPORT,
    help="Without a NECK: export every budget entry, also those whose file is up to date "
    "(its metadata matches the export this run would make: spec, size, batch, precision, "
    "opset, upsample form, weights, necktool version). Default: keep those.")]
VerifyFlag = Annotated[bool, typer.Option(
    "--verify/--no-verify", rich_help_panel=VERIFY_PANEL,
    help="Compare ONNX Runtime with PyTorch before writing the file.")]

NO_NECK = ("no NECK given and no budget config found (necktool.toml, or pyproject.toml with "
           "[tool.necktool], here or in a parent directory): name a neck, e.g. 'necktool "
           "export scrfd_2.5g --onnx', or give --weights FILE holding one (see 'necktool "
           "inspect FILE'), or put [[budget]] entries (neck = \"scrfd_2.5g\") in "
           "necktool.toml, or pass --config PATH, to export every entry")


def export_command(
    neck: ExportNeckArg = None,
    onnx_flag: OnnxFlag = True,
    output: Output = None,
    static: Static = False,
    opset: Opset = None,
    precision: PrecisionOpt = None,
    calibration: CalibrationOpt = None,
    config: ConfigOpt = None,
    verify: VerifyFlag = True,
    upsample: UpsampleOpt = None,
    force: ForceFlag = False,
    to: To = None,
    runtime: RuntimeOpt = None,
    *,
    flags: BuildFlagsOpt,
    weights: WeightsOpt,
    options: VerifyOpt,
    data: DataOpt,
    reduce: ReduceOpt,
) -> ExportResult | NcnnExportResult | ConfigExport:
    """Export a neck to ONNX, check it, verify it in ONNX Runtime, then write it.

    Inputs are named c3, c4 and so on, outputs p3, p4 and so on. The file carries metadata
    (necktool version, resolved spec, export size, the sizes it serves, precision, upsample
    form, FLOPs, params, weights' origin) and passes onnx.checker (full) and shape
    inference. Exit 1 if verification fails: the destination is then left untouched.

    Without a NECK: with --weights, the neck the file holds, as 'necktool inspect' finds it
    (its prefix too, unless --prefix is given); otherwise every budget entry of the
    project's config, each to <entry name>.onnx. --to ncnn writes the ncnn .param/.bin
    pair instead; --runtime ort,openvino,ncnn verifies the ONNX file in each runtime.
    """
    from necktool.deploy.plan import ExportPlan, ExportRequest

    reduced = data.given or reduce != type(reduce)()
    one_neck = neck is not None or weights.path is not None
    if not one_neck and reduced:  # the data need a neck to be read for
        raise InputError("the data and reduced-precision flags describe one neck; name a NECK")
    if one_neck and config is not None:
        raise InputError("--config names the budget config whose entries are exported when "
                         "no NECK is given; with a NECK (or --weights), leave it out")
    chosen: str | NeckSpec | None = neck
    if neck is None and weights.path is not None:
        chosen, weights = neck_in_weights(weights)
    # A bad name or flag: exit 2 before torch loads (unless --weights needed it to say
    # which neck it holds).
    spec = resolve_spec(chosen, **flags.overrides()) if chosen is not None else None
    reduction = None
    if spec is not None and reduced:  # the user's data: read and checked here
        from necktool.deploy.precision.reduce import Reduction

        reduction = Reduction(data.load(spec), reduce.method or CalibrationMethod.MINMAX,
                              keep_fp32=reduce.keep_fp32, stages=reduce.stages,
                              min_sqnr=reduce.min_sqnr)
    # Every option, and every rule between options: the one request, checked once.
    given: dict[str, Any] = {k: v for k, v in (
        ("to", to), ("opset", opset), ("precision", precision), ("upsample", upsample),
        ("runtimes", runtime), ("calibration", calibration), ("reduction", reduction),
        ("batch", flags.given("batch"))) if v is not None}
    request = ExportRequest(dynamic=not static, weights=weights, verify=verify,
                            options=options, **given)
    if spec is None:
        return _export_config(config, output, request, flags=flags, force=force)
    load_heavy()
    if request.to is ExportTo.NCNN:
        from necktool.deploy.runtimes.ncnn_export import plan_for_spec, run_ncnn

        ncnn = plan_for_spec(spec, output, request)
        with progress(len(ncnn.steps), "export") as advance:
            return run_ncnn(ncnn, on_step=advance)  # a failed verification is falsy: exit 1
    plan = ExportPlan.for_spec(spec, output, request)
    from necktool.deploy.export import run_export

    with progress(len(plan.steps), "export") as advance:
        return run_export(plan, on_step=advance)  # a failed verification is falsy: exit 1


def _export_config(config: pathlib.Path | None, output: pathlib.Path | None,
                   request: ExportRequest, *, flags: Any, force: bool = False
                   ) -> ConfigExport:
    """Every budget entry of the project's config (see :mod:`necktool.budgets.export`)."""
    from necktool.budgets.config import ConfigNotFound, load_config

    try:
        cfg = load_config(config, pathlib.Path.cwd())
    except ConfigNotFound:
        raise InputError(NO_NECK) from None
    from necktool.budgets.export import plan_config, run_config

    plan = plan_config(cfg, output, request, force=force, flags=flags.overrides())
    if not plan.todo:  # every file is up to date: answered from their metadata, no torch
        return run_config(plan)
    load_heavy()
    with progress(plan.steps, "export") as advance:
        return run_config(plan, on_step=advance)
