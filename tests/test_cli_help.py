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
