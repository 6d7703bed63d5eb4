"""Option groups for real data and reduced precision (``export``, ``verify``):
``--calibration-data``/``--images``/``--backbone`` with preprocessing and ``--holdout``,
and ``--calibration-method``, ``--stages``, ``--keep-fp32``, ``--min-sqnr``."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Annotated, Any

import typer

from necktool.cli.params import PATH, PRECISION_PANEL, OptionGroup, _option, typer_parser
from necktool.deploy.data import DEFAULT_HOLDOUT, DataRequest, parse_triple
from necktool.errors import InputError
from necktool.spec.families import FAMILIES, ImageNorm
from necktool.spec.fields import ChoiceKind, FloatKind, SizeKind
from necktool.spec.precision import CalibrationMethod

DATA_PANEL = "Representative data (calibration and held-out verification)"


def _by_family(describe: Any) -> str:
    """``fpn: 104,117,123; pafpn, mmdet_pafpn: 127.5; ...``: each family's declared
    preprocessing (its registration's ``preprocess``), grouped by value."""
    groups: dict[str, list[str]] = {}
    for info in FAMILIES.values():
        if info.preprocess is not None:
            groups.setdefault(describe(info.preprocess), []).append(info.name)
    return "; ".join(f"{', '.join(names)} {text}" for text, names in groups.items())


def _numbers(values: tuple[float, ...]) -> str:
    return str(f"{values[0]:g}") if len(set(values)) == 1 else ",".join(f"{v:g}" for v in values)


def _order(norm: ImageNorm) -> str:
    return "BGR" if norm.bgr else "RGB"


def _stages(text: str) -> tuple[str, ...]:
    words = tuple(dict.fromkeys(w.strip() for w in text.split(",") if w.strip()))
    if not words:
        raise InputError("--keep-fp32: expected stage names like lateral,output")
    return words


class DataGroup(OptionGroup):
    def parameters(self, prefix: str) -> list[inspect.Parameter]:
        return [
            _option(f"{prefix}calibration_data", Annotated[Any, typer.Option(
                "--calibration-data", metavar="PATH", rich_help_panel=DATA_PANEL,
                show_default=False, parser=PATH,
                help="An .npz of the neck's input features (arrays c3, c4, ... or one per "
                "level in order; (batch, C, H, W) or (C, H, W)), or a directory of them.")]),
            _option(f"{prefix}images", Annotated[Any, typer.Option(
                "--images", metavar="DIR", rich_help_panel=DATA_PANEL, show_default=False,
                parser=PATH, help="PNG/JPEG images, turned into features by --backbone.")]),
            _option(f"{prefix}backbone", Annotated[Any, typer.Option(
                "--backbone", metavar="FILE.onnx", rich_help_panel=DATA_PANEL,
                show_default=False, parser=PATH,
                help="A backbone ONNX whose outputs are the neck's input levels, or a whole "
                "detector ONNX, cut at the inputs of the neck found in its graph; run in ONNX "
                "Runtime on --images.")]),
            _option(f"{prefix}mean", Annotated[Any, typer.Option(
                "--mean", metavar="R,G,B", rich_help_panel=DATA_PANEL, show_default=False,
                parser=typer_parser(parse_triple),
                help="Pixel mean subtracted, in the channel order fed to the backbone. "
                "Default by family: " + _by_family(
                    lambda n: f"{_numbers(n.mean)} ({_order(n)})") + ".")]),
            _option(f"{prefix}std", Annotated[Any, typer.Option(
                "--std", metavar="R,G,B", rich_help_panel=DATA_PANEL, show_default=False,
                parser=typer_parser(parse_triple),
                help="Pixel divisor. Default by family: " + _by_family(
                    lambda n: _numbers(n.std)) + ".")]),
            _option(f"{prefix}bgr", Annotated[bool | None, typer.Option(
                "--bgr/--rgb", rich_help_panel=DATA_PANEL, show_default=False,
                help="Channel order fed to the backbone. Default: BGR for " + ", ".join(
                    f.name for f in FAMILIES.values() if f.preprocess and f.preprocess.bgr)
                + ", RGB otherwise.")]),
            _option(f"{prefix}image_size", Annotated[Any, typer.Option(
                "--image-size", metavar="HxW", rich_help_panel=DATA_PANEL, show_default=False,
                parser=typer_parser(SizeKind().from_text),
                help="Resize every image to HxW. Default: each image's own size (a backbone "
                "with a fixed input size: that size).")]),
            _option(f"{prefix}holdout", Annotated[Any, typer.Option(
                "--holdout", metavar="FRACTION", rich_help_panel=DATA_PANEL,
                show_default=False, parser=typer_parser(FloatKind(0.0, 0.95).from_text),
                help=f"Share of the data held out of calibration for verification "
                f"(deterministic). Default: {DEFAULT_HOLDOUT:g}.")]),
        ]

    def collect(self, values: dict[str, Any]) -> DataRequest:
        return DataRequest(**{k: v for k, v in values.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class ReduceRequest:
    method: CalibrationMethod | None = None
    stages: bool = False
    keep_fp32: tuple[str, ...] = ()
    min_sqnr: float | None = None


class ReduceGroup(OptionGroup):
    def __init__(self, keep: bool = True) -> None:
        self.keep = keep

    def parameters(self, prefix: str) -> list[inspect.Parameter]:
        out = [
            _option(f"{prefix}stages", Annotated[bool, typer.Option(
                "--stages", rich_help_panel=PRECISION_PANEL,
                help="fp16/int8: SQNR of every stage's output (lateral, top-down, "
                "bottom-up, output, ...) per level against fp32, to see where precision "
                "is lost.")], False),
        ]
        if not self.keep:
            return out
        return [
            _option(f"{prefix}method", Annotated[Any, typer.Option(
                "--calibration-method", metavar="[" + "|".join(CalibrationMethod) + "]",
                rich_help_panel=PRECISION_PANEL, show_default=False,
                parser=typer_parser(ChoiceKind(CalibrationMethod).from_text),
                help="int8 activation ranges: minmax (default), percentile, entropy, or auto "
                "(each; keeps the best held-out worst-level SQNR and shows all).")]),
            *out,
            _option(f"{prefix}keep_fp32", Annotated[Any, typer.Option(
                "--keep-fp32", metavar="STAGE,...", rich_help_panel=PRECISION_PANEL,
                show_default=False, parser=typer_parser(_stages),
                help="fp16/int8: leave these stages' nodes in fp32 (mixed precision).")]),
            _option(f"{prefix}min_sqnr", Annotated[Any, typer.Option(
                "--min-sqnr", metavar="DB", rich_help_panel=PRECISION_PANEL,
                show_default=False, parser=typer_parser(FloatKind(-100.0, 200.0).from_text),
                help="fp16/int8: fail (exit 1, nothing written) when the worst output's "
                "SQNR against fp32 is below DB, and suggest the fewest stages to keep in "
                "fp32 that reach it (measured).")]),
        ]

    def collect(self, values: dict[str, Any]) -> ReduceRequest:
        return ReduceRequest(**{k: v for k, v in values.items() if v not in (None, ())})


DataOpt = Annotated[DataRequest, DataGroup()]
ReduceOpt = Annotated[ReduceRequest, ReduceGroup()]
StagesOpt = Annotated[ReduceRequest, ReduceGroup(keep=False)]
