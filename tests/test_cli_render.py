"""Output ends well: a closed stdout is a quiet exit 0; narrow terminals never cut a
number."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from _cli import run


# -- exits ----------------------------------------------------------------------------------
def test_a_closed_stdout_ends_quietly(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(f"{sys.executable} -m necktool profile 'scrfd_*' --input-size 64 "
                          "| head -n 1; echo \"rc=${PIPESTATUS[0]}\"", shell=True, cwd=tmp_path,
                          executable="/bin/bash", capture_output=True, text=True, check=False)
    assert proc.stdout.strip().endswith("rc=0") and proc.stderr == ""


# -- terminals -------------------------------------------------------------------------------
@pytest.mark.parametrize("columns", ["60", "40"])
def test_narrow_terminals_never_cut_a_number(tmp_path: pathlib.Path, columns: str) -> None:
    data = json.loads(run("profile", "scrfd_2.5g", "--json")[1])
    numbers = [f"{data['flops']:,}", f"{data['params']:,}"] + \
        [f"{lv['flops']:,}" for lv in data["levels"]]
    out = run("profile", "scrfd_2.5g", env={"COLUMNS": columns})[1]
    for number in numbers:
        assert number in out, (columns, number)
    assert "…" not in out and max(map(len, out.splitlines())) <= int(columns)
    listing = run("list", env={"COLUMNS": columns})[1]
    for name in ("scrfd_34g", "retinaface_mnet", "512,1024,2048", "840x840"):
        assert name in listing
    assert "…" not in listing and max(map(len, listing.splitlines())) <= int(columns)


# -- one output pipeline ------------------------------------------------------------------
HEADER = ("neck", "family", "config", "input_size", "batch", "unit")


@pytest.mark.parametrize("args", [
    ["profile", "scrfd_0.5g", "--input-size", "64"],
    ["bench", "scrfd_0.5g", "--input-size", "64", "--repeat", "2", "--warmup", "1"],
])
def test_per_neck_json_starts_with_the_same_keys(args: list[str]) -> None:
    code, out, err = run(*args, "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert tuple(data)[:len(HEADER)] == HEADER
    assert data["config"]["family"] == data["family"] == "pafpn"
    code, again, _ = run(*args, "--json")
    assert code == 0 and json.loads(again).keys() == data.keys()


@pytest.mark.parametrize("args", [
    ["list", "scrfd_*"],
    ["profile", "scrfd_0.5g", "--input-size", "64"],
    ["sweep", "scrfd_0.5g", "--sizes", "64,96"],
])
def test_markdown_for_every_command(args: list[str]) -> None:
    code, out, err = run(*args, "--format", "markdown")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("**") and any(ln.startswith("|---") for ln in lines)
    assert "┃" not in out and "\x1b[" not in out  # no box drawing, no colour codes


def test_json_and_another_format_conflict() -> None:
    code, out, err = run("list", "--json", "--format", "markdown")
    assert code == 2 and out == "" and "--json and --format markdown conflict" in err
    code, _, err = run("list", "--format", "github")
    assert code == 2 and "'github' is not one of 'table', 'json', 'markdown'" in err


def test_a_caption_wraps_at_the_consoles_width_not_the_tables() -> None:
    """A long caption under a narrow table is one paragraph at the console's width (a
    caption wrapped at a 20-column table's width splits its sentences line by line); the
    pass/fail mark of a heading shows on a terminal and in markdown, not in a pipe."""
    import io

    from rich.console import Console

    from necktool.cli.render import _renderable, to_markdown
    from necktool.report import Heading, table

    caption = "a caption of about one hundred characters that says what every column means, once"
    block = table("t", ["a", "b"], [("1", "2")], caption=caption)
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(
        _renderable(block, Console(file=io.StringIO(), width=120)))
    assert caption in out.getvalue().splitlines()
    piped = io.StringIO()
    console = Console(file=piped, width=120, color_system=None, force_terminal=False)
    console.print(_renderable(Heading("necktool check: passed", "✅"), console))
    assert piped.getvalue() == "necktool check: passed\n"
    assert to_markdown([Heading("necktool check: passed", "✅")]).startswith(
        "### ✅ necktool check: passed")
