"""``necktool list`` and ``necktool profile`` through the CLI: streams and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _cli import run_without
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from necktool import profile
from necktool.cli import app
from necktool.spec.registry import PRESETS

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_list_table_and_json() -> None:
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and result.stderr == ""
    # each preset is one row, its whole name in the first cell (a prefix such as
    # 'insightf' would match five presets at once)
    names = [line.split("│")[1].strip() for line in result.stdout.splitlines()
             if line.startswith("│")]
    assert names == list(PRESETS)
    code, out, _ = run("list", "scrfd_*", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["neck"] for r in rows] == ["scrfd_34g", "scrfd_10g", "scrfd_2.5g", "scrfd_0.5g"]
    config = rows[2]["config"]
    assert config["in_channels"] == [48, 48, 80] and config["out_channels"] == 40
    assert config["input_size"] == [640, 640] and rows[2]["family"] == "pafpn"


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--json"], ["profile", "--help"],
                                  ["inspect", "--help"], ["export", "--help"]])
def test_help_and_list_do_not_import_torch(args: list[str]) -> None:
    run_without(args)


def test_profile_table_states_the_unit_and_keeps_stderr_clean() -> None:
    code, out, err = run("profile", "scrfd_2.5g", "--input-size", "320x256")
    assert code == 0
    assert err == ""  # no fvcore/TorchScript warnings leak
    r = profile("scrfd_2.5g", input_size=(320, 256))
    assert f"{r.flops:,}" in out and f"{r.params:,}" in out
    assert "1 fused multiply-add = 1 flop" in out
    for lv in r.levels:
        assert lv.name in out and str(lv.shape) in out


def test_profile_json_single_is_an_object_with_the_documented_keys() -> None:
    code, out, err = run("profile", "retinaface_mnet", "--json", "--input-size", "96")
    assert code == 0 and err == ""
    d = json.loads(out)
    assert {"neck", "family", "config", "input_size", "batch", "unit", "flops", "params",
            "levels", "stages", "operators", "unsupported_ops"} <= set(d)
    assert d["neck"] == "retinaface_mnet" and d["input_size"] == [96, 96]
    assert d["config"]["leaky_slope"] == 0.1
    assert d == profile("retinaface_mnet", input_size=(96, 96)).to_dict()


def test_profile_several_and_patterns_profile_each_once() -> None:
    code, out, _ = run("profile", "scrfd_*", "scrfd_2.5g", "--json", "--input-size", "64")
    assert code == 0
    rows = json.loads(out)
    assert [r["neck"] for r in rows] == ["scrfd_34g", "scrfd_10g", "scrfd_2.5g", "scrfd_0.5g"]
    code, out, _ = run("profile", "scrfd_2.5g", "scrfd_0.5g", "--input-size", "64")
    assert code == 0 and "comparison" in out


def test_flags_override_and_unset_flags_keep_preset() -> None:
    code, out, _ = run("profile", "scrfd_2.5g", "--out-channels", "32", "--norm", "bn",
                       "--act", "leaky_relu", "--leaky-slope", "0.2", "--batch", "2",
                       "--input-size", "640x480", "--json")
    assert code == 0
    d = json.loads(out)
    cfg = d["config"]
    assert cfg["in_channels"] == [48, 48, 80]  # untouched preset field
    assert (cfg["out_channels"], cfg["norm"], cfg["act"], cfg["leaky_slope"]) == \
        (32, "bn", "leaky_relu", 0.2)
    assert d["batch"] == 2 and d["levels"][0]["shape"] == [2, 32, 80, 60]
    code, out, _ = run("profile", "pafpn", "--in-channels", "16,32,64,128", "--gn-groups", "4",
                       "--json", "--input-size", "128")
    d = json.loads(out)
    assert [lv["name"] for lv in d["levels"]] == ["P3", "P4", "P5", "P6"]
    assert d["config"]["gn_groups"] == 4


@pytest.mark.parametrize(("args", "message"), [
    (["profile", "scrfd_25g"], "unknown neck 'scrfd_25g'; did you mean 'scrfd_2.5g'?"),
    (["profile", "nope_*"], "pattern 'nope_*' matches no neck"),
    (["profile", "pafpn", "--in-channels", "64"], "give 2 to 6 channel counts"),
    (["profile", "pafpn", "--in-channels", "64,0,256"],
     "Invalid value for '--in-channels': expected comma-separated positive integers"),
    (["profile", "pafpn", "--in-channels", "64,x"], "got '64,x'"),
    (["profile", "pafpn", "--out-channels", "0"],
     "Invalid value for '--out-channels': expected a positive integer, got '0'"),
    (["profile", "pafpn", "--gn-groups", "7"], "gn_groups=7 does not divide out_channels=64"),
    (["profile", "pafpn", "--input-size", "16"], "smaller than the coarsest stride 32"),
    (["profile", "pafpn", "--input-size", "640x"], "expected HxW like 640x480"),
    (["profile", "pafpn", "--input-size", "99999"], "each side must be at most 8192"),
    (["profile", "pafpn", "--input-size", "0x640"], "must be positive"),
    (["profile", "pafpn", "--norm", "ln"], "Invalid value for '--norm'"),
    (["profile", "pafpn", "--batch", "0"], "Invalid value for '--batch'"),
    (["profile"], "profile needs a NECK"),
    (["frobnicate"], "No such command"),
])
def test_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    code, out, err = run(*args)
    assert code == 2
    assert out == ""
    assert err.startswith("necktool: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=12))
def test_any_size_string_is_accepted_or_rejected_cleanly(text: str) -> None:
    if text.startswith("-"):
        text = " " + text
    result = runner.invoke(app, ["profile", "scrfd_0.5g", "--input-size", text, "--json"])
    assert result.exit_code in (0, 2), result.exception
    if result.exit_code == 2:
        assert result.stderr.startswith("necktool: error: ")


def test_python_dash_m_and_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "necktool", "--version"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("necktool ")
    # one version everywhere: the installed package's metadata reads necktool/version.py
    from importlib.metadata import version

    from necktool import __version__

    assert proc.stdout.split()[1] == __version__ == version("necktool")
    proc = subprocess.run([sys.executable, "-m", "necktool", "profile", "bogus"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("necktool: error: unknown neck")


# -- exits --------------------------------------------------------------------------------
def test_a_bug_is_one_line_exit_70_and_debug_shows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.spec.registry

    def broken(*args: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(necktool.spec.registry.NeckList, "matching", broken)
    code, out, err = run("list")
    assert code == 70 and out == ""
    assert err == ("necktool: internal error: ZeroDivisionError: division by zero (a bug in "
                   "necktool; run with NECKTOOL_DEBUG=1 for the traceback)\n")
    monkeypatch.setenv("NECKTOOL_DEBUG", "1")
    result = CliRunner().invoke(app, ["list"])
    assert isinstance(result.exception, ZeroDivisionError)


def test_an_interrupt_is_exit_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.spec.registry

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(necktool.spec.registry.NeckList, "matching", interrupted)
    code, out, err = run("list")
    assert code == 130 and out == "" and err == "necktool: interrupted\n"
