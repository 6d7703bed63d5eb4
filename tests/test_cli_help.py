"""Help reads well: metavars, never Typer's raw type tags."""

from __future__ import annotations

import itertools

import pytest
from _cli import run

from necktool.cli import COMMANDS


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_readable_metavars(command: str) -> None:
    code, out, _ = run(*([command] if command else []), "--help", env={"COLUMNS": "200"})
    assert code == 0
    for raw in ("<bool>", "<str>", "<int", "<float", "<text>", "<path>", "{", "x>=",
                "<function"):
        assert raw not in out, (command, raw)


def test_the_top_level_help_lists_every_command_without_importing_it() -> None:
    """``necktool --help`` reads each command's one line from COMMANDS: no command module
    (and nothing they import, numpy or onnx) is loaded for it."""
    import subprocess
    import sys

    from necktool.cli import COMMANDS

    code = ("import sys\nfrom necktool.cli import app\ntry:\n    app(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.endswith('_cmd') or m in "
            "('numpy', 'onnx', 'torch')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    for name in COMMANDS:
        assert f" {name} " in proc.stdout
    assert "[tool.necktool]" in proc.stdout  # the one-line help is text, not markup


def _blocks(lines: list[str]) -> list[list[str]]:
    """The help's text blocks: the description (outside the panels), and each panel's
    rows with the box characters cut off."""
    blocks: list[list[str]] = [[]]
    in_panel = False
    for line in lines:
        if line.startswith("╭"):
            in_panel = True
            blocks.append([])
        elif line.startswith("╰"):
            in_panel = False
            blocks.append([])
        elif in_panel:
            blocks[-1].append(line[1:-1])
        elif not line.startswith(" Usage:"):
            blocks[0].append(line)
    return [b for b in blocks if b]


def ragged_lines(text: str) -> list[str]:
    """Lines a paragraph was broken after although the next word fitted: the mark of text
    wrapped twice (in the source, then by rich), which leaves fragments such as a line
    holding one word. A continuation line starts where the text of the line above starts,
    with nothing before it (in a panel: right of the first column); the text could have
    gone on when that line plus the next word is no longer than the longest line of the
    column. Typer's own ``[required]``/``[default: ...]`` lines are not text."""
    ragged = []
    for index, block in enumerate(_blocks(text.splitlines())):
        rows = [r.rstrip() for r in block]
        starts = [len(r) - len(r.lstrip()) for r in rows if r.strip()]
        first_column = min(starts) if index else -1  # the description has no columns
        for above, below in itertools.pairwise(rows):
            if not below.strip() or not above.strip():
                continue
            start = len(below) - len(below.lstrip())
            if start <= first_column or len(above) <= start or above[start - 1] != " " \
                    or above[start] == " " or below.lstrip().startswith(("-", "[")):
                continue  # a new row, or not a continuation of the text above
            column = [r[start:] for r in rows if len(r) > start and r[start - 1] == " "]
            width = max(len(c) for c in column)
            fragment, word = above[start:], below.split()[0]
            if len(fragment) + 1 + len(word) <= width:
                ragged.append(f"{fragment!r} then {word!r}")
    return ragged


@pytest.mark.parametrize("columns", ["80", "200"])
@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_reflows_as_paragraphs_at_any_width(command: str, columns: str) -> None:
    """Descriptions reach rich as one line per paragraph, so rich wraps them once, at the
    terminal's width: no line is broken while its next word would have fitted."""
    code, out, _ = run(*([command] if command else []), "--help",
                       env={"COLUMNS": columns})
    assert code == 0
    assert ragged_lines(out) == [], (command, columns)


def test_the_ragged_line_check_finds_text_wrapped_twice() -> None:
    """The check above fails on the help as it read before: a docstring wrapped at 90
    columns, wrapped again by rich at 80."""
    twice = (" Inputs are named c3, c4 and so on, outputs p3, p4 and so on. The file carries\n"
             " metadata\n"
             " (necktool version, resolved spec, export size, the sizes it serves, precision,\n")
    once = (" Inputs are named c3, c4 and so on, outputs p3, p4 and so on. The file carries\n"
            " metadata (necktool version, resolved spec, export size, the sizes it serves,\n"
            " precision.\n")
    assert ragged_lines(twice) == ["'metadata' then '(necktool'"]
    assert ragged_lines(once) == []


def test_literal_brackets_survive_the_help() -> None:
    """rich markup would swallow '[ncnn]' and '[tool.necktool]'; the help escapes them."""
    _, export_help, _ = run("export", "--help", env={"COLUMNS": "200"})
    assert "'necktool[ncnn]'" in export_help and "'necktool[openvino]'" in export_help
    _, schema_help, _ = run("schema", "--help", env={"COLUMNS": "200"})
    assert "describing the [tool.necktool] table" in schema_help
