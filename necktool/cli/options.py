"""Option types shared by every command that builds a neck, declared once."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Annotated, Any

import typer

from necktool.specs import Activation, Norm, parse_channels, parse_size
from necktool.verify import TOLERANCE_NOTE

BUILD = "Build flags (override the preset; unset flags leave it alone)"

NeckArg = Annotated[str, typer.Argument(
    help="Preset name (see 'necktool list'), or a family: fpn, pafpn.", show_default=False)]
NecksArg = Annotated[list[str], typer.Argument(
    help="One or more preset names or shell patterns such as 'scrfd_*'.", show_default=False)]
InChannels = Annotated[str | None, typer.Option(
    "--in-channels", metavar="C3,C4,...", rich_help_panel=BUILD,
    help="Backbone channels per level, finest first; the count sets the number of levels.")]
OutChannels = Annotated[int | None, typer.Option(
    "--out-channels", rich_help_panel=BUILD, help="Channels of every output level.")]
NormOpt = Annotated[Norm | None, typer.Option(
    "--norm", rich_help_panel=BUILD, help="Normalisation after each conv (none: conv bias).")]
GnGroups = Annotated[int | None, typer.Option(
    "--gn-groups", rich_help_panel=BUILD,
    help="GroupNorm groups; must divide --out-channels. Default: the seed's rule.")]
ActOpt = Annotated[Activation | None, typer.Option(
    "--act", rich_help_panel=BUILD, help="Activation after each norm.")]
LeakySlope = Annotated[float | None, typer.Option(
    "--leaky-slope", rich_help_panel=BUILD, help="Negative slope for --act leaky_relu.")]
InputSize = Annotated[str | None, typer.Option(
    "--input-size", metavar="HxW", rich_help_panel=BUILD,
    help="Image size as HxW (640x480) or one number for square. Default: the preset's.")]
Batch = Annotated[int, typer.Option("--batch", min=1, rich_help_panel=BUILD,
                                    help="Batch size.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]


@dataclasses.dataclass
class BuildFlags:
    """The parsed build flags, as ``NeckSpec`` overrides (``None`` = not given)."""

    in_channels: str | None = None
    out_channels: int | None = None
    norm: Norm | None = None
    gn_groups: int | None = None
    act: Activation | None = None
    leaky_slope: float | None = None
    input_size: str | None = None

    def overrides(self) -> dict[str, Any]:
        return {
            "in_channels": parse_channels(self.in_channels) if self.in_channels else None,
            "out_channels": self.out_channels,
            "norm": self.norm,
            "gn_groups": self.gn_groups,
            "act": self.act,
            "leaky_slope": self.leaky_slope,
            "input_size": parse_size(self.input_size) if self.input_size else None,
        }


# -- weights and ONNX verification (export, verify) -----------------------------------
WEIGHTS = "Weights"
VERIFY = "Verification (ONNX Runtime vs PyTorch)"

Seed = Annotated[int | None, typer.Option(
    "--seed", rich_help_panel=WEIGHTS,
    help="Seed of the weight init when --weights is not given (conv weights, norm scales "
    "and shifts, BN running statistics and conv biases are all drawn from it).")]
WeightsFile = Annotated[pathlib.Path | None, typer.Option(
    "--weights", metavar="FILE", rich_help_panel=WEIGHTS, dir_okay=False,
    help="A .pt/.pth state dict, loaded with torch.load(weights_only=True) and strict "
    "key matching.")]
Prefix = Annotated[str | None, typer.Option(
    "--prefix", rich_help_panel=WEIGHTS,
    help="Key prefix of the neck inside --weights, e.g. 'fpn.' for a RetinaFace "
    "checkpoint; a 'module.' prefix (DataParallel) is stripped automatically.")]
Provider = Annotated[str, typer.Option(
    "--provider", rich_help_panel=VERIFY,
    help="ONNX Runtime execution provider: cpu, cuda, ... or a full name.")]
Atol = Annotated[float, typer.Option(
    "--atol", min=0.0, rich_help_panel=VERIFY,
    help=f"Absolute tolerance ({TOLERANCE_NOTE}).")]
Rtol = Annotated[float, typer.Option(
    "--rtol", min=0.0, rich_help_panel=VERIFY, help="Relative tolerance (fp32 default).")]
Trials = Annotated[int, typer.Option(
    "--trials", min=1, rich_help_panel=VERIFY,
    help="Seeded random inputs per case (export size; for a dynamic file also a "
    "non-square size and batch 2).")]
