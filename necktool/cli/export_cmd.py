"""``necktool export``: write a checked, verified ONNX file of a neck."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.artifact import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from necktool.cli.params import (
    NECK_HELP,
    PATH,
    VERIFY_PANEL,
    BuildFlagsOpt,
    FormatOpt,
    VerifyOpt,
    Weights,
    WeightsOpt,
    typer_parser,
)
from necktool.cli.render import load_heavy, progress
from necktool.errors import InputError
from necktool.fields import IntKind
from necktool.registry import resolve_spec
from necktool.specs import NeckSpec

if TYPE_CHECKING:
    from necktool.export import ExportResult

EXPORT = "Export"

OptionalNeckArg = Annotated[str | None, typer.Argument(
    metavar="[NECK]", show_default=False,
    help=NECK_HELP + " Optional with --weights FILE when the file holds a neck necktool "
    "recognises.")]
OnnxFlag = Annotated[bool, typer.Option(
    "--onnx", rich_help_panel=EXPORT, show_default=False,
    help="Write ONNX, the export format (the default; the result names it).")]
Output = Annotated[Any, typer.Option(
    "-o", "--output", metavar="PATH", rich_help_panel=EXPORT, show_default=False, parser=PATH,
    help="Destination file. Default: <neck>.onnx. Written only after every check passed.")]
Static = Annotated[bool, typer.Option(
    "--static", rich_help_panel=EXPORT,
    help="Fix batch and image size to the export size. Default: dynamic batch, height and "
    "width (any multiple of the coarsest stride).")]
Opset = Annotated[Any, typer.Option(
    "--opset", metavar="N", rich_help_panel=EXPORT, show_default=False,
    parser=typer_parser(IntKind(low=MIN_OPSET, high=MAX_OPSET).from_text),
    help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}. Default: {DEFAULT_OPSET}.")]
VerifyFlag = Annotated[bool, typer.Option(
    "--verify/--no-verify", rich_help_panel=VERIFY_PANEL,
    help="Compare ONNX Runtime with PyTorch before writing the file.")]


def neck_or_weights(neck: str | None, weights: Weights) -> tuple[str | NeckSpec, Weights]:
    """The neck to export: NECK, else the one ``--weights`` holds (with its prefix).

    The one place that handles an omitted NECK.
    """
    if neck is not None:
        return neck, weights
    if weights.path is None:
        raise InputError("export needs a NECK (a preset, a family or package.module:factory; "
                         "see 'necktool list'), or --weights FILE holding a neck necktool "
                         "recognises (see 'necktool inspect FILE')")
    load_heavy()
    from necktool.identify import identify_checkpoint

    found = identify_checkpoint(weights.path, weights.prefix)
    return found.neck_spec, dataclasses.replace(weights,
                                                prefix=weights.prefix or found.load_prefix)


def export_command(
    neck: OptionalNeckArg = None,
    onnx: OnnxFlag = True,
    output: Output = None,
    static: Static = False,
    opset: Opset = None,
    verify: VerifyFlag = True,
    *,
    flags: BuildFlagsOpt,
    weights: WeightsOpt,
    options: VerifyOpt,
    fmt: FormatOpt,
) -> ExportResult:
    """Export a neck to ONNX, check it, verify it in ONNX Runtime, then write it.

    Inputs are named c3, c4, ... and outputs p3, p4, .... The file carries metadata
    (necktool version, resolved spec, export size, FLOPs, params, weights' origin) and
    passes onnx.checker (full) and shape inference. Exit 1 if verification fails: the
    destination is then left untouched.

    NECK may be omitted when --weights holds a neck necktool recognises, as 'necktool
    inspect' finds it (its prefix too, unless --prefix is given).
    """
    chosen, weights = neck_or_weights(neck, weights)
    resolve_spec(chosen, **flags.overrides())  # a bad name or flag: exit 2 before torch loads
    load_heavy()
    from necktool.errors import VerificationFailed
    from necktool.export import STEPS, ExportResult, export_onnx

    steps = len(STEPS) - (0 if verify else 1)
    try:
        with progress(steps, "export") as advance:
            return export_onnx(
                chosen, output, batch=flags.batch, dynamic=not static,
                opset=DEFAULT_OPSET if opset is None else opset,
                seed=weights.seed or 0, weights=weights.path, prefix=weights.prefix,
                verify=verify, options=options, on_step=advance, **flags.overrides())
    except VerificationFailed as exc:
        if not isinstance(exc.result, ExportResult):
            raise
        return exc.result  # rendered like a passing one; its falseness is exit 1
