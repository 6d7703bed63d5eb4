"""The ``necktool`` command line: a thin Typer layer over the library.

This is the one place that turns outcomes into exit codes (docs/reference/exit-codes.md):
0 success; 1 a result that failed (verification, budgets) or a check that could not
pass; 2 bad usage or input; 70 a bug in necktool; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from necktool.cli import interrupts
from necktool.errors import ExitCode, NecktoolError, first_line
from necktool.spec.fields import is_int
from necktool.version import __version__

MAX_DETAIL_LINES = 6

_TOLERANCE_ITEM = re.compile(r"[A-Za-z_][\w.\-/]*:[+-]?[0-9.]+([eE][+-]?[0-9]+)?")


def fold_tolerances(args: Sequence[str]) -> list[str]:
    """Accept Polygraphy's ``--atol 1e-4 p5:1e-3``: each ``OUTPUT:VALUE`` word after
    ``--atol``/``--rtol`` becomes one more ``--atol OUTPUT:VALUE``."""
    out: list[str] = []
    current: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return out + list(args[i:])
        if arg in ("--atol", "--rtol") and i + 1 < len(args):
            out += [arg, args[i + 1]]
            current = arg
            i += 2
            continue
        if current is not None and _TOLERANCE_ITEM.fullmatch(arg):
            out += [current, arg]
        else:
            current = arg.split("=", 1)[0] if arg.startswith(("--atol=", "--rtol=")) else None
            out.append(arg)
        i += 1
    return out


DEBUG_ENV = "NECKTOOL_DEBUG"


def _error(message: str, details: Sequence[str] = ()) -> None:
    lines = message.splitlines() or [""]
    extra = [*lines[1:], *details]
    shown = extra[:MAX_DETAIL_LINES]
    if len(extra) > MAX_DETAIL_LINES:
        shown[-1] = f"  ... and {len(extra) - MAX_DETAIL_LINES + 1} more"
    sys.stderr.write(f"necktool: error: {lines[0]}\n")
    for line in shown:
        sys.stderr.write(f"  {line.strip()}\n" if not line.startswith("  ") else f"{line}\n")


def exit_code(outcome: Any) -> int:
    """The exit code of what a command returned: a result that failed is 1."""
    if is_int(outcome):
        return outcome
    if hasattr(outcome, "blocks") and not outcome:  # a Result (necktool.report) that failed
        failure = getattr(outcome, "failure", lambda: None)()
        if failure:
            _error(failure)
        return ExitCode.CHECK_FAILED
    return ExitCode.OK


#: Every command: where it lives, and its one-line summary for ``necktool --help`` (a test
#: checks each equals its docstring's first line). Only the command a user names is
#: imported, so ``--help`` and ``list`` never import the others or torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("necktool.cli.list_cmd:list_command",
             "List the neck presets with their family, channels and default input size."),
    "profile": ("necktool.cli.profile_cmd:profile_command",
                "Per-level output shapes, FLOPs (fvcore: 1 multiply-add = 1 flop), "
                "parameters and memory."),
    "export": ("necktool.cli.export_cmd:export_command",
               "Export a neck to ONNX, check it, verify it in ONNX Runtime, then write it."),
    "verify": ("necktool.cli.verify_cmd:verify_command",
               "Compare an ONNX file in ONNX Runtime with the neck rebuilt from its metadata."),
    "inspect": ("necktool.cli.inspect_cmd:inspect_command",
                "Find the neck in a checkpoint or ONNX file: family, channels, levels, presets."),
    "check": ("necktool.cli.check_cmd:check_command",
              "Check every budget in the config: limit, actual, headroom, PASS/FAIL."),
    "sweep": ("necktool.cli.sweep_cmd:sweep_command",
              "FLOPs (fvcore: 1 multiply-add = 1 flop), parameters and memory of each neck "
              "at each size."),
    "bench": ("necktool.cli.bench_cmd:bench_command",
              "Latency of PyTorch eager and ONNX Runtime (CPU): median, spread, GFLOP/s."),
    "schema": ("necktool.cli.schema_cmd:schema_command",
               "Print the JSON Schema of the budget config ([tool.necktool]); --format json "
               "for the file."),
}


class _Untagged:
    """An argument's type that adds no ``<str>`` tag to the help's argument panel; it
    delegates everything else (conversion included) to the type it wraps."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Command(TyperCommand):
    """Readable help: an argument shows as its metavar (``NECK...``, ``MODEL.onnx``),
    without Typer's ``{braces}`` in the usage line or a ``<str>`` type tag."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "argument":
                param.type = _Untagged(param.type)  # type: ignore[assignment]

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p
                for p in super().collect_usage_pieces(ctx)]


def readable_help(text: str | None) -> str | None:
    """Help text as the terminal should get it: each paragraph one line, for rich to wrap
    at the terminal's width, and rich's markup escaped, so that ``necktool[ncnn]`` and
    ``[tool.necktool]`` print as written.

    Docstrings and help strings are wrapped in the source at its width; passed on as they
    are, rich would wrap them again and leave one-word lines (Typer keeps single line
    breaks after the first paragraph). A paragraph Click marks ``\\b`` keeps its breaks.

    Example:
        >>> readable_help("Needs pip install\\n'necktool[ncnn]'.\\n\\nSecond paragraph.")
        "Needs pip install 'necktool\\\\[ncnn]'.\\n\\nSecond paragraph."
    """
    if text is None:
        return None
    from rich.markup import escape

    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(escape(p if p.startswith("\b") else " ".join(p.split()))
                       for p in paragraphs)


def _readable(command: Any) -> Any:
    """``command`` with its own help and every parameter's through :func:`readable_help`:
    the one place help text is made ready for the terminal."""
    command.help = readable_help(command.help)
    command.short_help = readable_help(command.short_help)
    for param in command.params:
        if getattr(param, "help", None):
            param.help = readable_help(param.help)
    return command


def load_command(name: str) -> Any:
    """The Typer-built command ``name``, its option groups expanded."""
    from necktool.cli.params import expand

    module, _, attr = COMMANDS[name][0].partition(":")
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(name, help=None, cls=_Command)(
        expand(getattr(importlib.import_module(module), attr)))
    command = typer.main.get_command(single)
    command.name = name
    return _readable(command)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush into the closed pipe
    does not print 'Exception ignored ... BrokenPipeError' on the way out."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class _Stop(Exception):
    """An interrupt or a closed stdout, carried past Typer's own handling of both (it would
    exit 130 silently, or 1 for a broken pipe) to :meth:`_Group.main`."""

    def __init__(self, code: ExitCode, closed_stdout: bool = False) -> None:
        super().__init__(code)
        self.code = code
        self.closed_stdout = closed_stdout


class _Group(TyperGroup):
    """Click's lazy command group (``list_commands``/``get_command``, as Click's docs show
    for lazy loading): a command's module is imported when the command is looked up, so
    ``necktool list`` imports no other command. It also turns every outcome into one
    documented exit code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _readable(self)
        self._loaded: dict[str, Any] = {}
        self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        # ``necktool --help`` lists every command by its one-line help: that needs no
        # command's module (importing them all cost 60 ms over Typer's own --help).
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if self._listing and cmd_name not in self._loaded:
            line = readable_help(COMMANDS[cmd_name][1])
            return TyperCommand(cmd_name, help=line, short_help=line)
        if cmd_name not in self._loaded:
            command = load_command(cmd_name)
            command.short_help = readable_help(COMMANDS[cmd_name][1])
            self._loaded[cmd_name] = command
        return self._loaded[cmd_name]

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except typer.TyperException as exc:  # Typer suggests from loaded commands only
            close = difflib.get_close_matches(args[0], list(COMMANDS)) if args else []
            message = getattr(exc, "message", "")
            if close and message and "Did you mean" not in message:
                exc.message = f"{message.rstrip('.')}. Did you mean " \
                              f"{', '.join(map(repr, close))}?"
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Stop(ExitCode.INTERRUPTED) from None
        except BrokenPipeError:  # `necktool ... | head`: the reader has all it wanted
            raise _Stop(ExitCode.OK, closed_stdout=True) from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        argv = fold_tolerances(list(sys.argv[1:] if args is None else args))
        previous = interrupts.install()
        try:
            rv = super().main(args=argv, prog_name=prog_name or "necktool",
                              complete_var=complete_var, standalone_mode=False,
                              windows_expand_args=windows_expand_args, **extra)
            code = exit_code(rv)
        except typer.TyperException as exc:  # Typer's (vendored click) usage errors
            code = exc.exit_code
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare 'necktool': show help
                sys.stderr.write(exc.format_message() + "\n")
            elif ctx is not None:
                cmd = f"necktool {ctx.info_name}" if ctx.parent else "necktool"
                _error(f"{exc.format_message()} (see '{cmd} --help')")
            else:
                _error(exc.format_message())
        except NecktoolError as exc:
            if interrupts.requested():  # a library's error about the interrupt, not ours
                code = ExitCode.INTERRUPTED
            else:
                _error(str(exc), exc.details)
                code = exc.exit_code
        except (typer.Abort, KeyboardInterrupt):
            code = ExitCode.INTERRUPTED
        except _Stop as stop:
            code = stop.code
            if stop.closed_stdout:
                _silence_stdout()
        except BrokenPipeError:
            code = ExitCode.OK
            _silence_stdout()
        except Exception as exc:  # a bug: say so in one line, unless asked for the traceback
            if interrupts.requested():  # the aftermath of an interrupt, not a bug
                code = ExitCode.INTERRUPTED
            elif os.environ.get(DEBUG_ENV):
                raise
            else:
                sys.stderr.write(f"necktool: internal error: {first_line(exc, 200)} (a "
                                 f"bug in necktool; run with {DEBUG_ENV}=1 for the traceback)\n")
                code = ExitCode.INTERNAL
        finally:
            interrupts.restore(previous)
            if "necktool.spec.resources" in sys.modules:  # --max-memory lasts one invocation
                sys.modules["necktool.spec.resources"].set_limit(None)
        if interrupts.requested():  # even if a library swallowed the KeyboardInterrupt
            code = ExitCode.INTERRUPTED
        if code == ExitCode.INTERRUPTED:  # also Typer's own 130, from an interrupt in parsing
            interrupts.report()
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=_Group,
    name="necktool",
    help="Build, profile, export and budget the feature-pyramid necks of face detectors.\n\n"
    "FLOPs follow fvcore: one fused multiply-add counts as one flop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"necktool {__version__}\n")
        raise typer.Exit()


def _max_memory(value: str | None) -> str | None:
    if value is not None:
        from necktool.spec import resources

        try:
            resources.set_limit(value)
        except NecktoolError as exc:
            raise typer.BadParameter(str(exc).partition(": ")[2]) from None
    return value


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    max_memory: str = typer.Option(
        None, "--max-memory", metavar="SIZE", callback=_max_memory, show_default=False,
        help="Refuse work estimated to need more memory than SIZE (64G, 512M, none). "
        "Default: the memory available now; also $NECKTOOL_MAX_MEMORY."),
) -> None:
    """Build, profile, export and budget the feature-pyramid necks of face detectors."""


def main(standalone: bool = True) -> int:
    """Run the command line on ``sys.argv``; exit with its code, or return it when
    ``standalone`` is false (as :func:`necktool.__main__.run` does, to end the process
    itself)."""
    return int(app(standalone_mode=standalone))
