"""Help reads well: metavars, never Typer's raw type tags."""

from __future__ import annotations

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
