"""The ``necktool`` command line: a thin Typer layer over the library.

This is the one place that turns exceptions into exit codes:
0 success, 1 a check failed, 2 bad usage or input (see the README).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from necktool import __version__
from necktool.errors import ExitCode, NecktoolError


def _error(message: str) -> None:
    sys.stderr.write(f"necktool: error: {message}\n")


class _Group(TyperGroup):
    """Turns every expected error into one line on stderr and a documented exit code."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name or "necktool",
                              complete_var=complete_var, standalone_mode=False,
                              windows_expand_args=windows_expand_args, **extra)
            code = rv if isinstance(rv, int) else ExitCode.OK
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
            _error(str(exc))
            code = exc.exit_code
        except (typer.Abort, KeyboardInterrupt):
            _error("interrupted")
            code = 130
        except BrokenPipeError:
            code = ExitCode.OK
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


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Build, profile, export and budget the feature-pyramid necks of face detectors."""


def _register() -> None:
    from necktool.cli.bench_cmd import bench_command
    from necktool.cli.check_cmd import check_command
    from necktool.cli.export_cmd import export_command
    from necktool.cli.list_cmd import list_command
    from necktool.cli.profile_cmd import profile_command
    from necktool.cli.sweep_cmd import sweep_command
    from necktool.cli.verify_cmd import verify_command

    app.command("list")(list_command)
    app.command("profile")(profile_command)
    app.command("export")(export_command)
    app.command("verify")(verify_command)
    app.command("check")(check_command)
    app.command("sweep")(sweep_command)
    app.command("bench")(bench_command)


_register()


def main() -> None:
    """Console-script entry point."""
    app()
