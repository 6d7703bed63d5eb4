"""``necktool export``: write a checked, verified ONNX file of a neck."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.artifact import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from necktool.cli.params import (
    PATH,
    VERIFY_PANEL,
    BuildFlagsOpt,
    FormatOpt,
    NeckArg,
    VerifyOpt,
    WeightsOpt,
    typer_parser,
)
from necktool.cli.render import load_heavy, progress
from necktool.fields import IntKind
from necktool.registry import resolve_spec

if TYPE_CHECKING:
    from necktool.export import ExportResult

EXPORT = "Export"

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


def export_command(
    neck: NeckArg,
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
    """
    resolve_spec(neck, **flags.overrides())  # a bad name or flag: exit 2 before torch loads
    load_heavy()
    from necktool.errors import VerificationFailed
    from necktool.export import STEPS, ExportResult, export_onnx

    steps = len(STEPS) - (0 if verify else 1)
    try:
        with progress(steps, "export") as advance:
            return export_onnx(
                neck, output, batch=flags.batch, dynamic=not static,
                opset=DEFAULT_OPSET if opset is None else opset,
                seed=weights.seed or 0, weights=weights.path, prefix=weights.prefix,
                verify=verify, options=options, on_step=advance, **flags.overrides())
    except VerificationFailed as exc:
        if not isinstance(exc.result, ExportResult):
            raise
        return exc.result  # rendered like a passing one; its falseness is exit 1
