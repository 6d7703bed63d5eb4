"""``necktool verify``: re-check an ONNX file against the PyTorch neck."""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

from necktool.cli.options import (
    ActOpt,
    Atol,
    BuildFlags,
    GnGroups,
    InChannels,
    InputSize,
    Json,
    LeakySlope,
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
from necktool.verify import DEFAULT_ATOL, DEFAULT_PROVIDER, DEFAULT_RTOL, DEFAULT_TRIALS

ModelArg = Annotated[pathlib.Path, typer.Argument(
    metavar="MODEL.onnx", show_default=False,
    help="An ONNX file, normally written by 'necktool export'.")]
NeckOpt = Annotated[str | None, typer.Option(
    "--neck", show_default=False,
    help="The neck the file holds (preset or family). Default: from the file's metadata; "
    "required for a file necktool did not write.")]
VerifyBatch = Annotated[int | None, typer.Option(
    "--batch", min=1, show_default=False, help="Batch of the export-size case. Default: "
    "as recorded in the file, else 1.")]


def verify_command(
    model: ModelArg,
    neck: NeckOpt = None,
    in_channels: InChannels = None,
    out_channels: OutChannels = None,
    norm: NormOpt = None,
    gn_groups: GnGroups = None,
    act: ActOpt = None,
    leaky_slope: LeakySlope = None,
    input_size: InputSize = None,
    batch: VerifyBatch = None,
    seed: Seed = None,
    weights: WeightsFile = None,
    prefix: Prefix = None,
    provider: Provider = DEFAULT_PROVIDER,
    atol: Atol = DEFAULT_ATOL,
    rtol: Rtol = DEFAULT_RTOL,
    trials: Trials = DEFAULT_TRIALS,
    json_out: Json = False,
) -> None:
    """Compare an ONNX file in ONNX Runtime with the neck rebuilt from its metadata.

    The neck, its weights (seed or file) and the export size come from the file's
    metadata unless --neck, build flags, --seed or --weights say otherwise. Exit 1 if
    any output of any case is over tolerance.
    """
    from necktool.errors import CheckFailed
    from necktool.verify import verify_onnx

    overrides = BuildFlags(in_channels, out_channels, norm, gn_groups, act, leaky_slope,
                           input_size).overrides()
    load_heavy()  # before the work: see cli.output.load_heavy
    with progress(1, "verify") as advance:
        result = verify_onnx(model, neck=neck, seed=seed, weights=weights, prefix=prefix,
                             batch=batch, provider=provider, atol=atol, rtol=rtol,
                             trials=trials, **overrides)
        advance(str(model))
    if json_out:
        from necktool.export import describe_file

        graph = describe_file(model)  # the same top-level keys as `export --json`
        print_json({"path": str(model), "opset": graph["opset"], "dynamic": result.dynamic,
                    "inputs": graph["inputs"], "outputs": graph["outputs"],
                    "verification": result.to_dict()})
    else:
        stdout().print(result.table())
    if not result:
        raise CheckFailed(f"verification of {str(model)!r} failed: {result.summary()}")
