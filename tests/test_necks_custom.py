"""Custom necks named by an import path, through every command that takes a NECK."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from _analytic import conv_macs, level_sizes
from typer.testing import CliRunner

from necktool import profile
from necktool.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
BIFPN = "examples.custom_neck:BiFPN"

USER_MODULE = '''
import torch
from torch import nn


class Lateral(nn.Module):
    """1x1 lateral convs only: the FLOPs are easy to work out by hand."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1, bias=False)
                                   for c in in_channels)

    def forward(self, feats):
        return tuple(conv(x) for conv, x in zip(self.convs, feats))


def make_lateral(in_channels, out_channels):
    return Lateral(in_channels, out_channels)


class TooFew(Lateral):
    def forward(self, feats):
        return tuple(conv(x) for conv, x in zip(self.convs, feats))[:-1]


class Crashes(Lateral):
    def forward(self, feats):
        raise RuntimeError("boom in forward")


def raises(in_channels, out_channels):
    raise ValueError("this factory refuses")


not_callable = 42
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "my_necks.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)  # the working directory is importable, as with python -m
    yield "my_necks"
    sys.modules.pop("my_necks", None)


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_user_neck_profiles_with_hand_worked_flops(user_module: str) -> None:
    for target in (f"{user_module}:Lateral", f"{user_module}:make_lateral"):
        code, out, err = run("profile", target, "--in-channels", "8,16,32", "--out-channels",
                             "12", "--input-size", "64x96", "--json")
        assert code == 0, err
        d = json.loads(out)
        sizes = level_sizes(64, 96, 3)
        expected = [conv_macs(12, h, w, c, 1) for (h, w), c in zip(sizes, (8, 16, 32),
                                                                      strict=True)]
        assert [lv["flops"] for lv in d["levels"]] == expected
        assert d["flops"] == sum(expected)
        assert d["params"] == 12 * (8 + 16 + 32)
        assert d["family"] == "custom" and d["config"]["factory"] == target
        assert [lv["shape"] for lv in d["levels"]] == [[1, 12, h, w] for h, w in sizes]


def test_example_bifpn_profiles_and_lists_what_fvcore_cannot_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    r = profile(BIFPN, in_channels=(40, 80, 160), out_channels=64)
    assert [lv.shape for lv in r.levels] == [(1, 64, 80, 80), (1, 64, 40, 40), (1, 64, 20, 20)]
    lateral = sum(conv_macs(64, h, w, c, 1) for (h, w), c in
                  zip(level_sizes(640, 640, 3), (40, 80, 160), strict=True))
    separable = sum(conv_macs(64, h, w, 1, 3) + conv_macs(64, h, w, 64, 1)
                    for h, w in [(80, 80), (40, 40), (40, 40), (20, 20)])
    assert r.operators["conv"] == lateral + separable
    assert "aten::max_pool2d" in r.unsupported_ops  # listed, never a stray warning


@pytest.mark.parametrize(("target", "extra", "message"), [
    ("my_necks:Lateral", [], "needs --in-channels"),
    ("nope_pkg.mod:Neck", ["--in-channels", "8,16"], "cannot import 'nope_pkg.mod'"),
    ("my_necks:Missing", ["--in-channels", "8,16"], "has no attribute 'Missing'"),
    ("my_necks:not_callable", ["--in-channels", "8,16"], "not a class or function"),
    ("my_necks:raises", ["--in-channels", "8,16"], "raised ValueError: this factory refuses"),
    ("my_necks:TooFew", ["--in-channels", "8,16"], "forward must return one tensor per level"),
    ("my_necks:Crashes", ["--in-channels", "8,16"], "forward failed"),
    ("my_necks:Lateral", ["--in-channels", "8,16", "--norm", "bn"],
     "--norm does not apply to my_necks:Lateral (family custom); the families that take "
     "it: fpn, pafpn"),
    ("my_necks:", ["--in-channels", "8,16"], "malformed import path"),
])
def test_custom_neck_errors_are_one_line_exit_2(user_module: str, target: str,
                                                extra: list[str], message: str) -> None:
    code, out, err = run("profile", target, *extra)
    assert code == 2, err
    assert out == ""
    assert err.startswith("necktool: error: ") and message in err
    assert err.count("\n") == 1


def test_wrong_output_channels_are_rejected(user_module: str, tmp_path: Path) -> None:
    code, _, err = run("profile", "torch.nn:Identity", "--in-channels", "8,16")
    assert code == 2
    assert "output P3 has shape (1, 8, 80, 80); expected (1, 64, 80, 80)" in err


def test_custom_neck_exports_verifies_and_rebuilds_from_metadata(user_module: str,
                                                                 tmp_path: Path) -> None:
    target = f"{user_module}:Lateral"
    out_path = tmp_path / "lateral.onnx"
    code, out, err = run("export", target, "--in-channels", "8,16", "--out-channels", "4",
                         "--input-size", "64", "--onnx", "-o", str(out_path), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["verification"]["passed"] is True
    assert out_path.exists()
    # `verify` rebuilds the custom neck from the file's metadata, once the user names the
    # same import path: a file alone never makes necktool import a module
    code, out, err = run("verify", str(out_path))
    assert code == 2 and out == ""
    assert f"records the custom neck {target!r}" in err and f"--neck {target}" in err
    code, out, err = run("verify", str(out_path), "--neck", target, "--json")
    assert code == 0, err
    assert json.loads(out)["verification"]["passed"] is True


def test_custom_neck_in_a_budget_entry(user_module: str, tmp_path: Path) -> None:
    flops = conv_macs(4, 8, 8, 8, 1) + conv_macs(4, 4, 4, 16, 1)  # 64x64: P3 8x8, P4 4x4
    (tmp_path / "necktool.toml").write_text(textwrap.dedent(f'''
        [[budget]]
        neck = "{user_module}:Lateral"
        in-channels = [8, 16]
        out-channels = 4
        input-size = "64x64"
        max-gflops = {flops / 1e9!r}
        '''))
    code, out, err = run("check", "--json")
    assert code == 0, err
    (tmp_path / "necktool.toml").write_text(
        (tmp_path / "necktool.toml").read_text().replace(repr(flops / 1e9),
                                                         repr((flops - 1) / 1e9)))
    code, out, err = run("check")
    assert code == 1
    assert "FAIL" in out
