"""Errors a user meets: built in bounded time, one line, with a hint where the shell
is the likely cause; no match is exit 2 for every command."""

from __future__ import annotations

import pathlib

import pytest
from _cli import necktool, run


# -- bounded time ---------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["profile", "pafpn", "--out-channels", "1000000000001", "--gn-groups", "7"],
    ["profile", "pafpn", "--out-channels", "16380", "--gn-groups", "7"],
    ["profile", "pafpn", "--input-size", "9" * 5000],
    ["sweep", "pafpn", "--sizes", "1:99999999999999999999:1"],
])
def test_errors_are_built_in_bounded_time(args: list[str]) -> None:
    proc = necktool(*args, timeout=60)  # a hang fails here instead of stalling CI
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


# -- consistency and help ---------------------------------------------------------------------
def test_a_file_the_shell_expanded_gets_a_quote_hint(tmp_path: pathlib.Path) -> None:
    (tmp_path / "scrfd_notes.txt").write_text("")
    proc = necktool("profile", "scrfd_notes.txt", cwd=tmp_path)
    assert proc.returncode == 2
    assert "which is a file here" in proc.stderr and "quote it" in proc.stderr


def test_list_with_no_match_is_exit_2_like_profile() -> None:
    for command in ("list", "profile"):
        code, out, err = run(command, "nomatch_*")
        assert code == 2 and out == "" and "pattern 'nomatch_*' matches no neck" in err
