"""Hostile input and hostile environments: nothing crashes, hangs, imports code because a
file said so, leaks third-party noise, or cuts a number; errors are bounded."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import onnx
import pytest
from typer.testing import CliRunner

from necktool.cli import COMMANDS, app

SMALL = ["--input-size", "64"]


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def necktool(*args: str, cwd: pathlib.Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "necktool", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)


# -- memory -------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["profile", "pafpn", "--in-channels", "4096,4096,4096", "--out-channels", "4096",
     "--input-size", "8192", "--batch", "64"],
    ["profile", "scrfd_34g", "--batch", "1000"],
    ["export", "fpn", "--in-channels", "16384,16384,16384", "--out-channels", "16384"],
])
def test_work_that_cannot_fit_is_refused_with_the_figure(args: list[str]) -> None:
    code, out, err = run(*args, env={"NECKTOOL_MAX_MEMORY": "16G"})
    assert code == 2 and out == ""
    assert re.search(r"needs about [0-9.]+ (GB|TB) of memory; the limit 16G", err), err
    assert err.count("\n") == 1


def test_the_memory_limit_is_a_flag_or_an_environment_variable() -> None:
    code, _, err = run("--max-memory", "100k", "profile", "scrfd_0.5g", *SMALL)
    assert code == 2 and "needs about" in err and "the limit 100k" in err
    code, _, err = run("profile", "scrfd_0.5g", *SMALL, env={"NECKTOOL_MAX_MEMORY": "100k"})
    assert code == 2 and "the limit 100k" in err
    code, out, err = run("--max-memory", "none", "profile", "scrfd_0.5g", *SMALL, "--json")
    assert code == 0 and json.loads(out)["neck"] == "scrfd_0.5g"
    code, _, err = run("--max-memory", "lots", "list")
    assert code == 2 and "cannot read 'lots' as a memory size" in err


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


# -- code named by a file --------------------------------------------------------------------
def test_a_custom_neck_in_metadata_is_never_imported_unasked(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "imported.txt"
    (tmp_path / "evilpkg.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("module code ran")
        def make(in_channels, out_channels):
            raise SystemExit(0)
    """))
    exported = tmp_path / "n.onnx"
    code, _, err = run("export", "scrfd_0.5g", *SMALL, "--trials", "1", "-o", str(exported))
    assert code == 0, err
    model = onnx.load(str(exported))
    props = {p.key: p for p in model.metadata_props}
    spec = json.loads(props["necktool.spec"].value)
    props["necktool.spec"].value = json.dumps({"family": "custom", "factory": "evilpkg:make",
                                               "in_channels": spec["in_channels"],
                                               "out_channels": 16, "input_size": [64, 64]})
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    proc = necktool("verify", str(edited), cwd=tmp_path)
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr == (f"necktool: error: {str(edited)!r} records the custom neck "
                           "'evilpkg:make'; necktool imports a module only when you name "
                           "it: pass --neck evilpkg:make to allow it\n")
    # named, it is imported, and its factory's SystemExit is a bad neck, not an exit 0
    proc = necktool("verify", str(edited), "--neck", "evilpkg:make", cwd=tmp_path)
    assert marker.exists()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "custom neck 'evilpkg:make' raised SystemExit" in proc.stderr


# -- exits ----------------------------------------------------------------------------------
def test_a_closed_stdout_ends_quietly(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(f"{sys.executable} -m necktool profile 'scrfd_*' --input-size 64 "
                          "| head -n 1; echo \"rc=${PIPESTATUS[0]}\"", shell=True, cwd=tmp_path,
                          executable="/bin/bash", capture_output=True, text=True, check=False)
    assert proc.stdout.strip().endswith("rc=0") and proc.stderr == ""


# -- noise ----------------------------------------------------------------------------------
def test_no_third_party_noise_with_an_unwritable_home(tmp_path: pathlib.Path) -> None:
    env = {"HOME": "/dev/null", "XDG_CACHE_HOME": "/dev/null/cache", "MPLCONFIGDIR": ""}
    (tmp_path / "necktool.toml").write_text(
        '[[budget]]\nneck = "scrfd_0.5g"\ninput-size = 64\nmax-gflops = 1\n')
    onnx_file = str(tmp_path / "n.onnx")
    for args in (["list"], ["profile", "scrfd_0.5g", *SMALL],
                 ["export", "scrfd_0.5g", *SMALL, "--trials", "1", "-o", onnx_file],
                 ["verify", onnx_file, "--trials", "1"], ["check"],
                 ["sweep", "scrfd_0.5g", "--sizes", "64", "--plot", str(tmp_path / "p.png")],
                 ["bench", "scrfd_0.5g", *SMALL, "--repeat", "2", "--warmup", "1"]):
        proc = necktool(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stderr == "", (args, proc.stderr)
        assert "\x1b[" not in proc.stdout


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


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_readable_metavars(command: str) -> None:
    code, out, _ = run(*([command] if command else []), "--help", env={"COLUMNS": "200"})
    assert code == 0
    for raw in ("<bool>", "<str>", "<int", "<float", "<text>", "<path>", "{", "x>=",
                "<function"):
        assert raw not in out, (command, raw)


# -- weights --------------------------------------------------------------------------------
def _fpn_state() -> dict[str, object]:
    from necktool.necks.weights import seeded_model

    return dict(seeded_model(__import__("necktool").get_spec("fpn")).state_dict())


def test_a_malicious_pickle_is_refused_naming_what_it_would_call(
        tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned.txt"
    payload = textwrap.dedent(f"""
        import os, torch
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned > {marker}",))
        torch.save({{"state_dict": {{"output1.0.weight": Evil()}}}}, {str(tmp_path / 'evil.pth')!r})
    """)
    subprocess.run([sys.executable, "-c", payload], check=True)
    proc = necktool("export", "fpn", *SMALL, "--weights", str(tmp_path / "evil.pth"),
                    "-o", str(tmp_path / "x.onnx"))
    assert proc.returncode == 2 and not marker.exists()
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("necktool: error: refused to load") and "posix.system" in lines[0]
    assert len(lines) == 2 and "Warning" not in proc.stderr and "weights_only=False" in lines[1]


def test_weights_dtypes_are_converted_or_refused(tmp_path: pathlib.Path) -> None:
    import torch

    state = _fpn_state()
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(half, tmp_path / "half.pth")
    code, out, err = run("export", "fpn", *SMALL, "--trials", "1", "--weights",
                         str(tmp_path / "half.pth"), "-o", str(tmp_path / "h.onnx"), "--json")
    assert code == 0, err  # float16 read as float32; num_batches_tracked stays int64
    assert json.loads(out)["verification"]["passed"] is True
    for dtype in (torch.int64, torch.bool, torch.complex64):
        bad = dict(state)
        bad["merge1.0.weight"] = state["merge1.0.weight"].to(dtype)
        torch.save(bad, tmp_path / "bad.pth")
        code, out, err = run("export", "fpn", *SMALL, "--weights", str(tmp_path / "bad.pth"),
                             "-o", str(tmp_path / "b.onnx"))
        assert code == 2 and out == "" and err.count("\n") == 1
        assert f"merge1.0.weight is {dtype}" in err and "Warning" not in err
        assert not (tmp_path / "b.onnx").exists()


def test_a_prefix_mismatch_is_one_line_and_a_short_block(tmp_path: pathlib.Path) -> None:
    import torch

    torch.save({f"fpn.{k}": v for k, v in _fpn_state().items()}, tmp_path / "p.pth")
    code, out, err = run("export", "fpn", *SMALL, "--weights", str(tmp_path / "p.pth"),
                         "-o", str(tmp_path / "x.onnx"))
    lines = err.splitlines()
    assert code == 2 and out == "" and 2 <= len(lines) <= 7
    assert lines[0].endswith("the keys under 'fpn.' fit: try --prefix fpn.")
    assert all(line.startswith("  ") for line in lines[1:])
