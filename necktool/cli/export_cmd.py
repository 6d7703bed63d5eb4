"""``necktool export``: write a checked, verified ONNX file of a neck, or of every neck of
the project's budget config."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.cli.params import (
    NECK_HELP,
    PATH,
    VERIFY_PANEL,
    BuildFlagsOpt,
    CalibrationOpt,
    ConfigOpt,
    FormatOpt,
    PrecisionOpt,
    VerifyOpt,
    Weights,
    WeightsOpt,
    typer_parser,
)
from necktool.cli.render import load_heavy, progress
from necktool.deploy.metadata import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, WeightsRequest
from necktool.deploy.options import Upsample
from necktool.errors import InputError
from necktool.spec.fields import ChoiceKind, IntKind
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.registry import resolve_spec

if TYPE_CHECKING:
    from necktool.deploy.export import ExportResult
    from necktool.deploy.plan import ExportSettings
    from necktool.deploy.project import ConfigExport

EXPORT = "Export"

OptionalNeckArg = Annotated[str | None, typer.Argument(
    metavar="[NECK]", show_default=False,
    help=NECK_HELP + " Without one: the neck --weights FILE holds, as 'necktool inspect' "
    "finds it; with no --weights either, every budget entry of the project's config (found "
    "as 'necktool check' finds it, or --config).")]
OnnxFlag = Annotated[bool, typer.Option(  # accepted, never read: ONNX is the one format
    "--onnx", rich_help_panel=EXPORT, show_default=False, expose_value=False,
    help="Write ONNX, the export format (the default; the result names it).")]
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
VerifyFlag = Annotated[bool, typer.Option(
    "--verify/--no-verify", rich_help_panel=VERIFY_PANEL,
    help="Compare ONNX Runtime with PyTorch before writing the file.")]

NO_NECK = ("no NECK given and no budget config found (necktool.toml, or pyproject.toml with "
           "[tool.necktool], here or in a parent directory): name a neck, e.g. 'necktool "
           "export scrfd_2.5g --onnx', or give --weights FILE holding one (see 'necktool "
           "inspect FILE'), or put [[budget]] entries (neck = \"scrfd_2.5g\") in "
           "necktool.toml, or pass --config PATH, to export every entry")


def neck_in_weights(weights: Weights) -> tuple[NeckSpec, Weights]:
    """The neck ``--weights`` holds, as ``necktool inspect`` finds it, with its prefix
    (unless ``--prefix`` was given)."""
    assert weights.path is not None
    load_heavy()
    from necktool.necks.identify import identify_checkpoint

    found = identify_checkpoint(weights.path, weights.prefix)
    return found.neck_spec, dataclasses.replace(weights,
                                                prefix=weights.prefix or found.load_prefix)


def export_command(
    neck: OptionalNeckArg = None,
    onnx_flag: OnnxFlag = True,
    output: Output = None,
    static: Static = False,
    opset: Opset = None,
    precision: PrecisionOpt = None,
    calibration: CalibrationOpt = None,
    config: ConfigOpt = None,
    verify: VerifyFlag = True,
    upsample: UpsampleOpt = None,
    *,
    flags: BuildFlagsOpt,
    weights: WeightsOpt,
    options: VerifyOpt,
    fmt: FormatOpt,
) -> ExportResult | ConfigExport:
    """Export a neck to ONNX, check it, verify it in ONNX Runtime, then write it.

    Inputs are named c3, c4, ... and outputs p3, p4, .... The file carries metadata
    (necktool version, resolved spec, export size, the sizes it serves, precision, upsample
    form, FLOPs, params, weights' origin) and passes onnx.checker (full) and shape
    inference. Exit 1 if verification fails: the destination is then left untouched.

    Without a NECK: with --weights, the neck the file holds, as 'necktool inspect' finds it
    (its prefix too, unless --prefix is given); otherwise every budget entry of the
    project's config, each to <entry name>.onnx.
    """
    from necktool.deploy.plan import ExportPlan, ExportSettings

    # What applies to any neck (precision, calibration, opset, provider): checked once.
    given = {k: v for k, v in (("opset", opset), ("precision", precision),
                               ("upsample", upsample)) if v is not None}
    settings = ExportSettings.check(dynamic=not static, weights=weights, verify=verify,
                                    options=options, calibration=calibration, **given)
    if neck is None and weights.path is None:
        return _export_config(config, output, settings, flags=flags)
    if config is not None:
        raise InputError("--config names the budget config whose entries are exported when "
                         "no NECK is given; with a NECK (or --weights), leave it out")
    chosen: str | NeckSpec
    chosen, weights = (neck, weights) if neck is not None else neck_in_weights(weights)
    # A bad name or flag: exit 2 before torch loads (unless --weights needed it to say
    # which neck it holds).
    spec = resolve_spec(chosen, **flags.overrides())
    plan = ExportPlan.for_spec(spec, output, flags.batch,
                               dataclasses.replace(settings, weights=weights))
    load_heavy()
    from necktool.deploy.export import run_export

    with progress(len(plan.steps), "export") as advance:
        return run_export(plan, on_step=advance)  # a failed verification is falsy: exit 1


def _export_config(config: pathlib.Path | None, output: pathlib.Path | None,
                   settings: ExportSettings, *, flags: Any) -> ConfigExport:
    """Every budget entry of the project's config (see :mod:`necktool.deploy.project`)."""
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
    from necktool.deploy.project import plan_config, run_config

    plan = plan_config(cfg, output, dataclasses.replace(
        settings, weights=WeightsRequest(seed=settings.weights.seed or 0)))
    load_heavy()
    with progress(plan.steps, "export") as advance:
        return run_config(plan, on_step=advance)
