"""Option groups, declared once and expanded into each command's Typer options.

Typer builds options from a function's signature and has no notion of a group. A command
here declares one parameter per group, e.g. ``flags: BuildFlagsOpt`` or
``weights: WeightsOpt``; :func:`expand` replaces it with the group's options (the build
flags come from :data:`necktool.spec.fields.FIELDS`) and hands the command one object built
by keyword. Every value is parsed and range-checked here, at the border, by the field's
kind.

:func:`expand` also adds ``--format``/``--json`` to every command and renders what the
command returns through the one output pipeline, so a command is: parse, one or two
library calls, return the result.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import pathlib
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from necktool.deploy.tolerance import (
    DEFAULT_PROVIDER,
    DEFAULT_TRIALS,
    MAX_TRIALS,
    PRECISION_DEFAULTS,
    ErrorStat,
    VerifyOptions,
)
from necktool.errors import InputError
from necktool.report import OutputFormat, Result
from necktool.spec.families import FAMILIES, families_taking
from necktool.spec.fields import FIELD, FIELDS, BadValue, ChoiceKind, IntKind, describe_text
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.precision import DEFAULT_CALIBRATION, MAX_CALIBRATION, Precision
from necktool.spec.registry import bare_families
from necktool.spec.runtimes import parse_runtimes
from necktool.spec.weights import WeightsRequest

BUILD_PANEL = "Build flags (override the preset; unset flags leave it alone)"
PRECISION_PANEL = "Precision"
WEIGHTS_PANEL = "Weights"
VERIFY_PANEL = "Verification (ONNX Runtime vs PyTorch)"
OUTPUT_PANEL = "Output"


class BuildFlags:
    """The build flags a command was given: spec overrides plus the batch, by keyword.

    Example:
        >>> flags = BuildFlags(out_channels=32, batch=2)
        >>> flags.overrides(), flags.batch
        ({'out_channels': 32}, 2)
    """

    __slots__ = ("_values",)

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(FIELD))
        if unknown:
            raise TypeError(f"unknown build flag(s) {unknown}")
        self._values = {k: v for k, v in values.items() if v is not None}

    def overrides(self) -> dict[str, Any]:
        """The spec fields given (``None`` never appears: unset flags keep preset values)."""
        return {k: v for k, v in self._values.items() if FIELD[k].in_spec}

    @property
    def batch(self) -> int:
        """The batch size (1 when ``--batch`` was not given)."""
        return int(self._values.get("batch", 1))

    def given(self, name: str) -> Any:
        """The value of flag ``name`` if it was given, else ``None``."""
        return self._values.get(name)

    def __repr__(self) -> str:
        return f"BuildFlags({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"


#: Where weights come from: ``--weights FILE`` (with ``--prefix``) or ``--seed``; the one
#: request type the library takes too (:class:`necktool.artifact.metadata.WeightsRequest`).
Weights = WeightsRequest


# -- groups ----------------------------------------------------------------------------
class OptionGroup:
    """Expands into Typer parameters and collects their values back into one object."""

    def parameters(self, prefix: str) -> list[inspect.Parameter]:
        raise NotImplementedError

    def collect(self, values: dict[str, Any]) -> Any:
        raise NotImplementedError


def _option(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


def typer_parser(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    """A Typer ``parser`` that turns our errors into a usage error naming the option."""
    def convert(value: Any) -> Any:
        if not isinstance(value, str):  # Typer also passes defaults through the parser
            return value
        try:
            return parse(value)
        except BadValue as exc:
            raise typer.BadParameter(exc.message(describe_text(value))) from None
        except InputError as exc:
            raise typer.BadParameter(str(exc)) from None
    return convert


def parse_path(text: str) -> pathlib.Path:
    """A path from the command line: not empty, no NUL byte (which no OS call accepts)."""
    if not text.strip() or "\x00" in text:
        raise typer.BadParameter(f"{describe_text(text)} is not a file name")
    return pathlib.Path(text)


#: A ``parser=`` for every path option and argument.
PATH = typer_parser(parse_path)


def _families_note(field: str) -> str:
    takers = families_taking(field)
    return "" if not FIELD[field].in_spec or len(takers) == len(FAMILIES) \
        else f" Families: {', '.join(takers)}."


class BuildGroup(OptionGroup):
    """Every build flag of :data:`~necktool.spec.fields.FIELDS` (minus ``exclude``)."""

    def __init__(self, exclude: Sequence[str] = (), defaults_from: str | None = None) -> None:
        self.fields = [f for f in FIELDS if f.name not in exclude]
        self.defaults_from = defaults_from

    def _help(self, f: Any) -> str:
        text = f.help
        if self.defaults_from is not None and " Default: " in text:
            # verify: the neck, its size and batch come from the file, not a preset
            text = text.split(" Default: ")[0] + f" Default: {self.defaults_from}."
        return text + _families_note(f.name)

    def parameters(self, prefix: str) -> list[inspect.Parameter]:
        return [_option(f"{prefix}{f.name}", Annotated[Any, typer.Option(
            f.flag, parser=typer_parser(f.kind.from_text), metavar=f.metavar, show_default=False,
            rich_help_panel=BUILD_PANEL, help=self._help(f))])
            for f in self.fields]

    def collect(self, values: dict[str, Any]) -> BuildFlags:
        return BuildFlags(**values)


class WeightsGroup(OptionGroup):
    def parameters(self, prefix: str) -> list[inspect.Parameter]:
        return [
            _option(f"{prefix}seed", Annotated[Any, typer.Option(
                "--seed", metavar="N", rich_help_panel=WEIGHTS_PANEL, show_default=False,
                parser=typer_parser(IntKind(low=0, high=2**31 - 1).from_text),
                help="Seed of the weight init when --weights is not given (conv weights, norm "
                "scales and shifts, BN running statistics and conv biases are all drawn from "
                "it). Default: 0, or what the file records.")]),
            _option(f"{prefix}path", Annotated[Any, typer.Option(
                "--weights", metavar="FILE", rich_help_panel=WEIGHTS_PANEL, show_default=False,
                parser=PATH,
                help="A .pt/.pth state dict, loaded with torch.load(weights_only=True) and "
                "strict key matching.")]),
            _option(f"{prefix}prefix", Annotated[str | None, typer.Option(
                "--prefix", metavar="PREFIX", rich_help_panel=WEIGHTS_PANEL,
                show_default=False,
                help="Key prefix of the neck inside --weights, e.g. 'fpn.' for a RetinaFace "
                "checkpoint; a 'module.' prefix (DataParallel) is stripped automatically.")]),
        ]

    def collect(self, values: dict[str, Any]) -> Weights:
        return Weights(**values)


def _defaults(index: int) -> str:
    return ", ".join(f"{v[index]:g} ({p.value})" for p, v in PRECISION_DEFAULTS.items())


class VerifyGroup(OptionGroup):
    def parameters(self, prefix: str) -> list[inspect.Parameter]:
        return [
            _option(f"{prefix}atol", Annotated[list[str] | None, typer.Option(
                "--atol", metavar="TOL", rich_help_panel=VERIFY_PANEL, show_default=False,
                help=f"Absolute tolerance, Polygraphy-style: a value for every output and/or "
                f"OUTPUT:VALUE for one, e.g. --atol 1e-4 p5:1e-3. Default: by the file's "
                f"precision, {_defaults(0)}.")]),
            _option(f"{prefix}rtol", Annotated[list[str] | None, typer.Option(
                "--rtol", metavar="TOL", rich_help_panel=VERIFY_PANEL, show_default=False,
                help=f"Relative tolerance, same syntax. Default: {_defaults(1)}. An "
                "output passes when every element has |ort - torch| <= atol + rtol*|torch| "
                "(with --error-stat mean or median: when that statistic of |ort - torch| - "
                "rtol*|torch| over its elements is <= atol).")]),
            _option(f"{prefix}error_stat", Annotated[Any, typer.Option(
                "--error-stat", metavar="[" + "|".join(s.value for s in ErrorStat) + "]",
                parser=typer_parser(ChoiceKind(ErrorStat).from_text),
                rich_help_panel=VERIFY_PANEL, show_default=False,
                help="Which statistic of the element excess |ort - torch| - rtol*|torch| must "
                "stay within atol: elemwise (every element; default), mean or median.")]),
            _option(f"{prefix}trials", Annotated[Any, typer.Option(
                "--trials", metavar="N", rich_help_panel=VERIFY_PANEL, show_default=False,
                parser=typer_parser(IntKind(high=MAX_TRIALS).from_text),
                help=f"Seeded random inputs per case. Default: {DEFAULT_TRIALS}.")]),
            _option(f"{prefix}provider", Annotated[str | None, typer.Option(
                "--provider", metavar="NAME", rich_help_panel=VERIFY_PANEL, show_default=False,
                help=f"ONNX Runtime execution provider: cpu, cuda, ... or a full name. "
                f"Default: {DEFAULT_PROVIDER}.")]),
        ]

    def collect(self, values: dict[str, Any]) -> VerifyOptions:
        given = {k: v for k, v in values.items() if v not in (None, [], ())}
        return VerifyOptions(**given)


class FormatGroup(OptionGroup):
    """``--format`` (and ``--json``, its shorthand)."""

    def __init__(self, formats: Sequence[OutputFormat] = (
            OutputFormat.TABLE, OutputFormat.JSON, OutputFormat.MARKDOWN)) -> None:
        self.formats = tuple(formats)

    def _parse(self, text: str) -> OutputFormat:
        valid = [f.value for f in self.formats]
        if text.strip().lower() not in valid:
            raise typer.BadParameter(f"{text[:40]!r} is not one of "
                                     f"{', '.join(map(repr, valid))}")
        return OutputFormat(text.strip().lower())

    def parameters(self, prefix: str) -> list[inspect.Parameter]:
        choices = "|".join(f.value for f in self.formats)
        return [
            _option(f"{prefix}format", Annotated[Any, typer.Option(
                "--format", metavar=f"[{choices}]", parser=self._parse,
                rich_help_panel=OUTPUT_PANEL, show_default=False,
                help="What to print on stdout. Default: table.")]),
            _option(f"{prefix}json", Annotated[bool, typer.Option(
                "--json", rich_help_panel=OUTPUT_PANEL,
                help="Shorthand for --format json.")], default=False),
        ]

    def collect(self, values: dict[str, Any]) -> OutputFormat:
        fmt, as_json = values["format"], values["json"]
        if as_json and fmt not in (None, OutputFormat.JSON):
            raise InputError(f"--json and --format {fmt.value} conflict; give one of them")
        return OutputFormat.JSON if as_json else (fmt or OutputFormat.TABLE)


BuildFlagsOpt = Annotated[BuildFlags, BuildGroup()]
SizelessFlagsOpt = Annotated[BuildFlags, BuildGroup(exclude=("input_size",))]
#: verify's build flags: each defaults to what the file's metadata records
FileFlagsOpt = Annotated[BuildFlags, BuildGroup(defaults_from="what the file records")]
WeightsOpt = Annotated[Weights, WeightsGroup()]
VerifyOpt = Annotated[VerifyOptions, VerifyGroup()]
FORMAT_PREFIX = "_format__"  # the options expand() adds to every command


def output_formats(*formats: OutputFormat) -> Callable[[Any], Any]:
    """Give a command more ``--format`` choices than table, json and markdown (``check``:
    ``github`` too); :func:`expand` reads it."""
    def mark(command: Any) -> Any:
        command.output_formats = formats
        return command
    return mark

def parse_precisions(text: str) -> list[Precision]:
    """``fp32,fp16,int8``: distinct precisions, in the order given."""
    words = [w.strip() for w in text.split(",")]
    kind: ChoiceKind[Precision] = ChoiceKind(Precision)
    if not all(words):
        raise BadValue(f"a comma-separated list of {', '.join(Precision)}")
    return list(dict.fromkeys(kind.from_text(w) for w in words))


PrecisionOpt = Annotated[Any, typer.Option(
    "--precision", metavar="[" + "|".join(Precision) + "]", rich_help_panel=PRECISION_PANEL,
    parser=typer_parser(ChoiceKind(Precision).from_text), show_default=False,
    help="The file's arithmetic: fp32 (default); fp16: weights and compute float16; int8: "
    "ONNX Runtime static quantization (QDQ). Inputs and outputs stay float32; verification "
    "compares with the fp32 PyTorch module, with the precision's default tolerances.")]
PrecisionsOpt = Annotated[Any, typer.Option(
    "--precision", metavar="fp32,fp16,int8", rich_help_panel=PRECISION_PANEL,
    parser=typer_parser(parse_precisions), show_default=False,
    help="Time ONNX Runtime at each of these precisions, in one table with file size, "
    "max abs error and SQNR against fp32 PyTorch.")]
CalibrationOpt = Annotated[Any, typer.Option(
    "--calibration", metavar="N", rich_help_panel=PRECISION_PANEL, show_default=False,
    parser=typer_parser(IntKind(high=MAX_CALIBRATION).from_text),
    help=f"int8: seeded calibration batches (synthetic normal inputs; real features: "
    "--calibration-data or --images). A static file calibrates at its export size and "
    "batch; a dynamic one at the two odd sizes verification draws, batch 1. Default: "
    f"{DEFAULT_CALIBRATION}.")]
RuntimeOpt = Annotated[Any, typer.Option(
    "--runtime", metavar="RUNTIMES", rich_help_panel=VERIFY_PANEL,
    parser=typer_parser(parse_runtimes), show_default=False,
    help="Where verification runs the file: ort (ONNX Runtime, default), openvino (f32 "
    "precision hint set), openvino:bf16 (OpenVINO's default hint, bf16 on CPUs with "
    "AVX512-BF16), ncnn (the neck converted by pnnx from the PyTorch module, fp32). Several, "
    "comma-separated, give one table. Extras: pip install 'necktool[openvino]' or "
    "'necktool[ncnn]'.")]
ConfigOpt = Annotated[Any, typer.Option(
    "--config", metavar="PATH", show_default=False, parser=PATH,
    help="Budget file (pyproject.toml or necktool.toml). Default: search upwards from the "
    "working directory for necktool.toml, then a pyproject.toml with a tool.necktool table.")]

NECK_HELP = (f"A preset (see 'necktool list'), a family ({', '.join(bare_families())}) to vary "
             "with flags, or your own module as package.module:factory.")
NeckArg = Annotated[str, typer.Argument(metavar="NECK", help=NECK_HELP, show_default=False)]
NecksArg = Annotated[list[str], typer.Argument(
    metavar="NECK...", show_default=False,
    help=NECK_HELP + " Several, or shell patterns such as 'scrfd_*' (quoted).")]
OptionalNecksArg = Annotated[list[str] | None, typer.Argument(
    metavar="[NECK]...", show_default=False,
    help=NECK_HELP + " Several, or shell patterns such as 'scrfd_*' (quoted). Without one: "
    "the neck --weights FILE holds (a checkpoint or a detector ONNX file).")]
OptionalNeckArg = Annotated[str | None, typer.Argument(
    metavar="[NECK]", show_default=False,
    help=NECK_HELP + " Without one: the neck --weights FILE holds (a checkpoint or a "
    "detector ONNX file), as 'necktool inspect' finds it.")]


def neck_in_weights(weights: Weights) -> tuple[NeckSpec, Weights]:
    """The neck ``--weights`` holds, as ``necktool inspect`` finds it, with its prefix
    (unless ``--prefix`` was given)."""
    assert weights.path is not None
    from necktool.cli.render import load_heavy

    load_heavy()
    from necktool.detector.identify import identify_checkpoint

    found = identify_checkpoint(weights.path, weights.prefix)
    return found.neck_spec, dataclasses.replace(weights,
                                                prefix=weights.prefix or found.load_prefix)


# -- expansion -------------------------------------------------------------------------
def expand(command: Callable[..., Result | None]) -> Callable[..., Result | None]:
    """A Typer-ready command: option groups expanded, the result rendered.

    The command's parameters annotated with an :class:`OptionGroup` become that group's
    options; the command receives each group's object. ``--format``/``--json`` are added to
    every command here (the choices :func:`output_formats` gave it, else table, json,
    markdown) and decide how the returned result is printed; the command never sees them.
    """
    from necktool.cli.render import emit

    signature = inspect.signature(command)
    # Parameter annotations only: a return annotation may name a type imported for
    # type-checking alone (the result classes live in torch-importing modules).
    hints = {name: eval(p.annotation, command.__globals__)
             if isinstance(p.annotation, str) else p.annotation
             for name, p in signature.parameters.items()}
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[OptionGroup, str]] = {}
    for param in signature.parameters.values():
        annotation = hints[param.name]
        group = next((m for m in getattr(annotation, "__metadata__", ())
                      if isinstance(m, OptionGroup)), None)
        if group is None:
            params.append(param.replace(annotation=annotation))
            continue
        prefix = f"_{param.name}__"
        groups[param.name] = (group, prefix)
        params.extend(group.parameters(prefix))
    formats = getattr(command, "output_formats", None)
    fmt_group = FormatGroup(formats) if formats else FormatGroup()
    params.extend(fmt_group.parameters(FORMAT_PREFIX))

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Result | None:
        call: dict[str, Any] = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        fmt = fmt_group.collect({k[len(FORMAT_PREFIX):]: v for k, v in kwargs.items()
                                 if k.startswith(FORMAT_PREFIX)})
        for name, (group, prefix) in groups.items():
            own = {k[len(prefix):]: v for k, v in kwargs.items() if k.startswith(prefix)}
            call[name] = group.collect(own)
        result = command(**call)
        if result is not None:
            emit(result, fmt)
        return result

    ordered = sorted(params, key=lambda p: p.kind)  # keyword-only options after arguments
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=ordered, return_annotation=inspect.Signature.empty)
    wrapper.__annotations__ = {p.name: p.annotation for p in ordered}
    return wrapper
