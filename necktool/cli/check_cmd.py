"""``necktool check``: gate FLOP, parameter and memory budgets declared in TOML (exit 1 if
over)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from necktool.cli.params import PATH, ConfigOpt, output_formats, parse_path, typer_parser
from necktool.cli.render import load_heavy, progress, stderr_console, to_markdown
from necktool.errors import ConfigError, InputError
from necktool.report import OutputFormat

if TYPE_CHECKING:
    from necktool.budgets.check import CheckReport

BASELINE = "Baseline (growth gate)"

BaselineOpt = Annotated[Any, typer.Option(
    "--baseline", metavar="FILE", rich_help_panel=BASELINE, show_default=False, parser=PATH,
    help="Fail entries whose FLOPs, params or memory grew more than --max-increase against "
    "FILE.")]
MaxIncreaseOpt = Annotated[str | None, typer.Option(
    "--max-increase", metavar="PCT", rich_help_panel=BASELINE,
    help="Allowed growth against --baseline: '2%' or '2' (percent). Default: the config's "
    "max-increase, else 0.", show_default=False)]
#: The file ``--save-baseline DIR/`` writes in DIR.
BASELINE_NAME = "necktool-baseline.json"


def parse_baseline_dest(text: str) -> Path:
    """``--save-baseline``: a file, or a folder named with a trailing slash (``DIR/``), which
    gets :data:`BASELINE_NAME` (``Path`` drops the slash: it wrote a file named DIR)."""
    path = parse_path(text)
    if text.endswith(("/", os.sep)):
        return path / BASELINE_NAME
    return path


SaveBaselineOpt = Annotated[Any, typer.Option(
    "--save-baseline", metavar="FILE", rich_help_panel=BASELINE, show_default=False,
    parser=typer_parser(parse_baseline_dest),
    help=f"Write the measured figures to FILE as JSON (also when a budget fails); DIR/ "
    f"writes DIR/{BASELINE_NAME}.")]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", help="Measure every entry; do not read or write the result cache "
    "(.necktool_cache/ beside the config, or $NECKTOOL_CACHE_DIR).")]
HINTS = "Hints"
SuggestOpt = Annotated[bool, typer.Option(
    "--suggest", rich_help_panel=HINTS,
    help="For each limit with more than 10% headroom, print the tighter limit that passes "
    "with 3% to spare (rounded up to 3 significant digits). Does not change the exit code.")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", rich_help_panel=HINTS,
    help="Exit 1 when a hint is found (a loose limit, a stale baseline entry); implies "
    "--suggest.")]


@output_formats(*OutputFormat)
def check_command(
    config: ConfigOpt = None,
    baseline: BaselineOpt = None,
    max_increase: MaxIncreaseOpt = None,
    save_baseline_to: SaveBaselineOpt = None,
    no_cache: NoCacheOpt = False,
    suggest: SuggestOpt = False,
    strict: StrictOpt = False,
) -> CheckReport:
    """Check every budget in the config: limit, actual, headroom, PASS/FAIL.

    FLOPs follow fvcore (1 multiply-add = 1 flop); GFLOPs = flops / 1e9; the max-*-mb
    memory limits are MiB (2^20 bytes).
    Exit 0 when all pass, 1 when any budget is exceeded (with --strict also when a hint
    is found), 2 for a config or usage error. Unchanged entries come from the result cache
    (.necktool_cache/ beside the config) without importing torch.
    """
    from necktool.budgets.baseline import load_baseline, save_baseline
    from necktool.budgets.config import load_config, parse_percent
    from necktool.files import check_writable

    allowed = None
    if max_increase is not None:
        allowed = parse_percent(max_increase, "--max-increase")
        if baseline is None:
            raise InputError("--max-increase needs --baseline FILE to compare against")

    # Every usage and config error surfaces here, before torch is imported.
    cfg = load_config(config, Path.cwd())
    base = load_baseline(baseline) if baseline is not None else None
    if save_baseline_to is not None:
        check_writable(save_baseline_to, "baseline", ConfigError)

    from necktool.budgets.cache import ResultCache, cache_dir
    from necktool.budgets.check import check_budgets

    cache = None if no_cache else ResultCache(cache_dir(cfg.path))
    if cache is not None and not cache.usable:  # no key to prove entries are ours: none
        cache = None
    with progress(len(cfg.budgets), "checking budgets") as advance:
        report = check_budgets(cfg, base, allowed, on_progress=advance, cache=cache,
                               before_profiling=lambda: load_heavy(counting=True))
    if suggest or strict:
        from necktool.budgets.hints import with_hints

        report = with_hints(report, strict=strict)
    if save_baseline_to is not None:
        save_baseline(report, save_baseline_to)
        stderr_console().print(f"saved baseline to {save_baseline_to}", markup=False)
    _append_step_summary(to_markdown(report.blocks()))
    return report


def _append_step_summary(markdown: str) -> None:
    """Append to GitHub's job summary when running in Actions; never fail the gate over it."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
    except OSError as exc:
        # One line, however narrow the terminal: a warning split mid-sentence reads badly.
        stderr_console().print(f"necktool: warning: cannot append to GITHUB_STEP_SUMMARY "
                               f"({target}): {exc.strerror or exc}", markup=False,
                               soft_wrap=True)
