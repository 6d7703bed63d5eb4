"""``necktool export``: write a checked, verified ONNX file of a neck, or of every neck of
the project's budget config."""

from __future__ import annotations

import dataclasses
import enum
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
from necktool.errors import InputError
from necktool.spec.fields import ChoiceKind, IntKind
from necktool.spec.graph_form import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, Upsample
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.precision import CalibrationMethod
from necktool.spec.registry import resolve_spec
from necktool.spec.weights import WeightsRequest

if TYPE_CHECKING:
    from necktool.budgets.export import ConfigExport
    from necktool.deploy.export import ExportResult
    from necktool.deploy.plan import ExportSettings
    from necktool.deploy.runtimes.ncnn_export import NcnnExportResult

EXPORT = "Export"


class ExportTo(enum.StrEnum):
    """``--to``: necktool.deploy.export.ExportFormat's values (that module imports torch)."""

    ONNX = "onnx"
    NCNN = "ncnn"


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
    from necktool.deploy.plan import ExportPlan, ExportSettings

    if calibration is not None and data.given:
        raise InputError("--calibration counts seeded batches; with --calibration-data or "
                         "--images every calibration set is used: leave it out")
    if neck is None and weights.path is None and (data.given or reduce != type(reduce)()):
        raise InputError("the data and reduced-precision flags describe one neck; name a NECK")
    if to is ExportTo.NCNN:
        if data.given or reduce != type(reduce)():
            raise InputError("the data and reduced-precision flags apply to ONNX files; "
                             "--to ncnn writes fp32 or fp16 weights: leave them out")
        return _export_ncnn(neck, output, static, opset, precision, calibration, config,
                            verify, runtime, upsample, flags=flags, weights=weights,
                            options=options)
    # What applies to any neck (precision, calibration, opset, provider): checked once.
    given = {k: v for k, v in (("opset", opset), ("precision", precision),
                               ("upsample", upsample), ("runtimes", runtime)) if v is not None}
    settings = ExportSettings.check(dynamic=not static, weights=weights, verify=verify,
                                    options=options, calibration=calibration, **given)
    if neck is None and weights.path is None:
        if runtime:
            raise InputError("--runtime verifies one neck's file; with no NECK (every budget "
                             "entry) leave it out, or name a NECK")
        return _export_config(config, output, settings, flags=flags, force=force)
    if config is not None:
        raise InputError("--config names the budget config whose entries are exported when "
                         "no NECK is given; with a NECK (or --weights), leave it out")
    chosen: str | NeckSpec
    chosen, weights = (neck, weights) if neck is not None else neck_in_weights(weights)
    # A bad name or flag: exit 2 before torch loads (unless --weights needed it to say
    # which neck it holds).
    spec = resolve_spec(chosen, **flags.overrides())
    reduction = None
    if data.given or reduce != type(reduce)():  # the user's data: read and checked here
        from necktool.deploy.precision.reduce import Reduction

        reduction = Reduction(data.load(spec), reduce.method or CalibrationMethod.MINMAX,
                              keep_fp32=reduce.keep_fp32, stages=reduce.stages,
                              min_sqnr=reduce.min_sqnr)
    plan = ExportPlan.for_spec(spec, output, flags.batch,
                               dataclasses.replace(settings, weights=weights),
                               reduction=reduction)
    load_heavy()
    from necktool.deploy.export import run_export

    with progress(len(plan.steps), "export") as advance:
        return run_export(plan, on_step=advance)  # a failed verification is falsy: exit 1


def _export_ncnn(neck: str | None, output: pathlib.Path | None, static: bool, opset: int | None,
                 precision: Any, calibration: int | None, config: pathlib.Path | None,
                 verify: bool, runtime: list[Any] | None, upsample: Any, *, flags: Any,
                 weights: WeightsRequest, options: Any) -> NcnnExportResult:
    """``--to ncnn``: one neck's pair (see :mod:`necktool.deploy.runtimes.ncnn_export`)."""
    given = [flag for flag, on in (("--static", static), ("--opset", opset is not None),
                                   ("--calibration", calibration is not None),
                                   ("--config", config is not None),
                                   ("--upsample", upsample is not None)) if on]
    if runtime and [r.value for r in runtime] != ["ncnn"]:
        given.append("--runtime")
    if given:
        raise InputError(f"{', '.join(given)} apply to ONNX files; --to ncnn writes an ncnn "
                         "pair (every size, verified in ncnn): leave them out")
    if neck is None and weights.path is None:
        raise InputError("--to ncnn needs a NECK (or --weights FILE holding one)")
    chosen: str | NeckSpec
    chosen, weights = (neck, weights) if neck is not None else neck_in_weights(weights)
    from necktool.deploy.runtimes.ncnn_export import plan_ncnn

    plan = plan_ncnn(chosen, output, batch=flags.batch, weights=weights, verify=verify,
                     options=options, precision=precision or "fp32", **flags.overrides())
    load_heavy()
    from necktool.deploy.runtimes.ncnn_export import run_ncnn

    with progress(len(plan.steps), "export") as advance:
        return run_ncnn(plan, on_step=advance)  # a failed verification is falsy: exit 1


def _export_config(config: pathlib.Path | None, output: pathlib.Path | None,
                   settings: ExportSettings, *, flags: Any, force: bool = False
                   ) -> ConfigExport:
    """Every budget entry of the project's config (see :mod:`necktool.budgets.export`)."""
    from necktool.budgets.config import ConfigNotFound, load_config

    given = [f"--{k.replace('_', '-')}" for k in flags.overrides()]
    given += ["--batch"] if flags.given("batch") is not None else []
    given += [f for f, v in (("--weights", settings.weights.path),
                             ("--prefix", settings.weights.prefix)) if v is not None]
    if given:
        verb = "describes" if len(given) == 1 else "describe"
        raise InputError(f"{', '.join(given)} {verb} one neck; with no NECK every budget "
                         "entry is exported with its own settings from the config (name a "
                         "NECK to use them)")
    try:
        cfg = load_config(config, pathlib.Path.cwd())
    except ConfigNotFound:
        raise InputError(NO_NECK) from None
    from necktool.budgets.export import plan_config, run_config

    plan = plan_config(cfg, output, dataclasses.replace(
        settings, weights=WeightsRequest(seed=settings.weights.seed or 0)), force=force)
    if not plan.todo:  # every file is up to date: answered from their metadata, no torch
        return run_config(plan)
    load_heavy()
    with progress(plan.steps, "export") as advance:
        return run_config(plan, on_step=advance)
