"""``necktool check``: gate FLOP and parameter budgets declared in TOML (exit 1 if over)."""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from necktool.cli.options import Json
from necktool.cli.output import load_heavy, print_json, progress, stderr, stdout
from necktool.errors import ConfigError, ExitCode, InputError
from necktool.files import check_writable

BASELINE = "Baseline (growth gate)"


class OutputFormat(enum.StrEnum):
    """How results are printed on stdout."""

    TABLE = "table"
    GITHUB = "github"  # workflow-command annotations plus a markdown table in the log
    MARKDOWN = "markdown"  # the table for a PR comment
    JSON = "json"


ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", metavar="PATH", dir_okay=False,
    help="Budget file (pyproject.toml or necktool.toml). Default: search upwards from the "
    "working directory for necktool.toml, then a pyproject.toml with a tool.necktool table.")]
FormatOpt = Annotated[OutputFormat | None, typer.Option(
    "--format", help="Output: table, github (::error annotations), markdown, json.",
    show_default=False)]
BaselineOpt = Annotated[Path | None, typer.Option(
    "--baseline", metavar="FILE", rich_help_panel=BASELINE,
    help="Fail entries whose FLOPs or params grew more than --max-increase against FILE.")]
MaxIncreaseOpt = Annotated[str | None, typer.Option(
    "--max-increase", metavar="PCT", rich_help_panel=BASELINE,
    help="Allowed growth against --baseline: '2%' or '2' (percent). Default: the config's "
    "max-increase, else 0.", show_default=False)]
SaveBaselineOpt = Annotated[Path | None, typer.Option(
    "--save-baseline", metavar="FILE", rich_help_panel=BASELINE,
    help="Write the measured figures to FILE as JSON (also when a budget fails).")]


def check_command(
    config: ConfigOpt = None,
    json_out: Json = False,
    fmt: FormatOpt = None,
    baseline: BaselineOpt = None,
    max_increase: MaxIncreaseOpt = None,
    save_baseline: SaveBaselineOpt = None,
) -> None:
    """Check every budget in the config: limit, actual, headroom, PASS/FAIL.

    FLOPs follow fvcore (1 multiply-add = 1 flop); GFLOPs = flops / 1e9.
    Exit 0 when all pass, 1 when any budget is exceeded, 2 for a config or usage error.
    """
    from necktool import budgets

    if json_out and fmt not in (None, OutputFormat.JSON):
        raise InputError(f"--json and --format {fmt.value} conflict; give one of them")
    output = OutputFormat.JSON if json_out else (fmt or OutputFormat.TABLE)
    allowed = None
    if max_increase is not None:
        allowed = budgets.parse_percent(max_increase, "--max-increase")
        if baseline is None:
            raise InputError("--max-increase needs --baseline FILE to compare against")

    # Every usage and config error surfaces here, before the slow part.
    cfg = budgets.load_config(config, Path.cwd())
    base = budgets.load_baseline(baseline) if baseline is not None else None
    if save_baseline is not None:
        check_writable(save_baseline, "baseline", ConfigError)

    load_heavy(counting=True)  # before the work: see cli.output.load_heavy
    with progress(len(cfg.budgets), "checking budgets") as advance:
        report = budgets.check_budgets(cfg, base, allowed, on_progress=advance)

    if save_baseline is not None:
        budgets.save_baseline(report, save_baseline)
        stderr().print(f"saved baseline to {save_baseline}", highlight=False)

    if output is OutputFormat.JSON:
        print_json(report.to_dict())
    elif output is OutputFormat.MARKDOWN:
        sys.stdout.write(report.to_markdown())
    elif output is OutputFormat.GITHUB:
        # The markdown table reads well in a raw log; annotations go last, one per line.
        sys.stdout.write(report.to_markdown())
        for line in report.github_annotations():
            sys.stdout.write(line + "\n")
    else:
        console = stdout()
        if not console.is_terminal:
            console.width = max(console.width, 120)  # CI logs: don't squeeze numbers
        console.print(report.table())
        for line in report.messages():
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        console.print(report.summary, highlight=False)

    _append_step_summary(report.to_markdown())
    if not report:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


def _append_step_summary(markdown: str) -> None:
    """Append to GitHub's job summary when running in Actions; never fail the gate over it."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
    except OSError as exc:
        stderr().print(f"necktool: warning: cannot append to GITHUB_STEP_SUMMARY "
                       f"({target}): {exc.strerror or exc}", highlight=False, markup=False)
