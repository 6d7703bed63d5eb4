"""``necktool export``: write a checked, verified ONNX file of a neck."""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

from necktool.cli.options import (
    ActOpt,
    Atol,
    Batch,
    BuildFlags,
    GnGroups,
    InChannels,
    InputSize,
    Json,
    LeakySlope,
    NeckArg,
    NormOpt,
    OutChannels,
    Prefix,
    Provider,
    Rtol,
    Seed,
    Trials,
    WeightsFile,
)
from necktool.cli.output import load_heavy, print_json, progress, stdout
from necktool.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET  # torch-free at import
from necktool.verify import DEFAULT_ATOL, DEFAULT_PROVIDER, DEFAULT_RTOL, DEFAULT_TRIALS

EXPORT = "Export"

OnnxFlag = Annotated[bool, typer.Option(
    "--onnx", rich_help_panel=EXPORT, help="Export to ONNX (the only format; the default).")]
Output = Annotated[pathlib.Path | None, typer.Option(
    "-o", "--output", metavar="PATH", rich_help_panel=EXPORT, show_default=False,
    help="Destination file. Default: <neck>.onnx. Written only after every check passed.")]
Static = Annotated[bool, typer.Option(
    "--static", rich_help_panel=EXPORT,
    help="Fix batch and image size to the export size. Default: dynamic batch, height and "
    "width (any multiple of the coarsest stride).")]
Opset = Annotated[int, typer.Option(
    "--opset", min=MIN_OPSET, max=MAX_OPSET, rich_help_panel=EXPORT, help="ONNX opset.")]
VerifyFlag = Annotated[bool, typer.Option(
    "--verify/--no-verify", rich_help_panel="Verification (ONNX Runtime vs PyTorch)",
    help="Compare ONNX Runtime with PyTorch before writing the file.")]


def export_command(
    neck: NeckArg,
    in_channels: InChannels = None,
    out_channels: OutChannels = None,
    norm: NormOpt = None,
    gn_groups: GnGroups = None,
    act: ActOpt = None,
    leaky_slope: LeakySlope = None,
    input_size: InputSize = None,
    batch: Batch = 1,
    onnx: OnnxFlag = True,
    output: Output = None,
    static: Static = False,
    opset: Opset = DEFAULT_OPSET,
    seed: Seed = 0,
    weights: WeightsFile = None,
    prefix: Prefix = None,
    verify: VerifyFlag = True,
    provider: Provider = DEFAULT_PROVIDER,
    atol: Atol = DEFAULT_ATOL,
    rtol: Rtol = DEFAULT_RTOL,
    trials: Trials = DEFAULT_TRIALS,
    json_out: Json = False,
) -> None:
    """Export a neck to ONNX, check it, verify it in ONNX Runtime, then write it.

    Inputs are named c3, c4, ... and outputs p3, p4, .... The file carries metadata
    (necktool version, resolved spec, export size, FLOPs, params, weights' origin) and
    passes onnx.checker (full) and shape inference. Exit 1 if a check or verification
    fails: the destination is then left untouched.
    """
    from necktool.errors import VerificationFailed
    from necktool.export import STEPS, export_onnx

    overrides = BuildFlags(in_channels, out_channels, norm, gn_groups, act, leaky_slope,
                           input_size).overrides()
    steps = len(STEPS) - (0 if verify else 1)
    load_heavy()  # before the work: see cli.output.load_heavy
    try:
        with progress(steps, "export") as advance:
            result = export_onnx(
                neck, output, batch=batch, dynamic=not static, opset=opset,
                seed=0 if seed is None else seed, weights=weights, prefix=prefix,
                verify=verify, provider=provider, atol=atol, rtol=rtol, trials=trials,
                on_step=advance, **overrides)
    except VerificationFailed as exc:
        if exc.result is not None:
            _render(exc.result, json_out)
        raise
    _render(result, json_out)


def _render(result: object, json_out: bool) -> None:
    from necktool.export import ExportResult

    assert isinstance(result, ExportResult)  # VerificationFailed.result from export_onnx
    if json_out:
        print_json(result.to_dict())
        return
    console = stdout()
    for table in result.tables():
        console.print(table)
