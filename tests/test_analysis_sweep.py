"""``necktool sweep``: size parsing, FLOPs equal to separate profiles, plots, streams."""

from __future__ import annotations

import json
import pathlib
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from _cli import run_without
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import necktool.analysis.profiling
import necktool.necks.build
from necktool import profile
from necktool.analysis.sweep import MATPLOTLIB_MISSING, MAX_SIZES, Y_LABEL, parse_sizes, sweep
from necktool.cli import app
from necktool.errors import InputError, SpecError

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- parse_sizes ---------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("320,480,640", [(320, 320), (480, 480), (640, 640)]),
    ("320:1280:160", [(s, s) for s in (320, 480, 640, 800, 960, 1120, 1280)]),
    ("320:700:160", [(320, 320), (480, 480), (640, 640)]),  # 700 is off the grid
    ("640x480, 1280X720", [(640, 480), (1280, 720)]),
    ("256,320:640:160,256,320", [(256, 256), (320, 320), (480, 480), (640, 640)]),
    ("640:640:1", [(640, 640)]),
])
def test_parse_sizes_lists_ranges_and_repeats(text: str, expected: list[tuple[int, int]]) -> None:
    assert parse_sizes(text) == expected


@pytest.mark.parametrize("text", ["", " ", "320,,480", "320,", "abc", "320x", "0", "320:640",
                                  "320:640:0", "640:320:160", "0:320:160", "-320:640:160",
                                  "320:640:1.5", "1:100000000:1", "1:65:1"])
def test_parse_sizes_rejects_garbage_with_an_actionable_message(text: str) -> None:
    with pytest.raises(InputError) as info:
        parse_sizes(text)
    assert "\n" not in str(info.value)
    assert any(hint in str(info.value) for hint in ("320:1280:160", "larger step", "640x480",
                                                   "write it as 320:640:160"))


def test_parse_sizes_caps_the_count() -> None:
    assert len(parse_sizes(f"1:{MAX_SIZES}:1")) == MAX_SIZES
    with pytest.raises(InputError, match="more than 64 sizes"):
        parse_sizes(f"1:{MAX_SIZES + 1}:1")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789x:, -.", max_size=30))
def test_parse_sizes_never_crashes(text: str) -> None:
    try:
        sizes = parse_sizes(text)
    except InputError:
        return
    assert 1 <= len(sizes) <= MAX_SIZES and len(set(sizes)) == len(sizes)
    assert all(h > 0 and w > 0 for h, w in sizes)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5000), st.integers(0, 3000), st.integers(1, 500))
def test_ranges_are_inclusive_grids(start: int, span: int, step: int) -> None:
    stop = start + span
    grid = list(range(start, stop + 1, step))
    if len(grid) > MAX_SIZES:
        with pytest.raises(InputError):
            parse_sizes(f"{start}:{stop}:{step}")
    else:
        assert parse_sizes(f"{start}:{stop}:{step}") == [(s, s) for s in grid]


# -- the library ---------------------------------------------------------------------------
SIZES = [(64, 64), (128, 96), (256, 256)]


@pytest.fixture(scope="module")
def two_necks() -> Any:
    return sweep(["scrfd_2.5g", "retinaface_mnet"], SIZES)


@pytest.mark.parametrize("index", [0, 1])
def test_sweep_equals_a_separate_profile_at_each_size(two_necks: Any, index: int) -> None:
    neck = two_necks.necks[index]
    assert [p.input_size for p in neck.points] == SIZES
    for point in neck.points:
        ref = profile(neck.neck, input_size=point.input_size)
        assert point.flops == ref.flops and point.params == ref.params
        assert point.level_flops == {lv.name: lv.flops for lv in ref.levels}
        assert sum(point.level_flops.values()) == point.flops
        assert point.memory == ref.memory.to_dict()
        assert point.level_activation_bytes == {lv.name: lv.activation_bytes
                                                for lv in ref.levels}
        assert sum(point.level_activation_bytes.values()) == point.memory["activation_bytes"]
        assert point.cross_check == ref.cross_check.to_dict() and point.agree


def test_sweep_builds_once_per_neck_and_traces_once_per_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"build": 0, "analyze": 0}
    real_build, real_analyze = necktool.necks.build.build_neck, necktool.analysis.profiling.analyze

    def build(*args: Any, **kwargs: Any) -> Any:
        calls["build"] += 1
        return real_build(*args, **kwargs)

    def analyze(*args: Any, **kwargs: Any) -> Any:
        calls["analyze"] += 1
        return real_analyze(*args, **kwargs)

    monkeypatch.setattr(necktool.analysis.profiling, "build_neck", build)
    monkeypatch.setattr(necktool.analysis.profiling, "analyze", analyze)
    result = sweep(["retinaface_mnet", "pafpn"], [(64, 64), (96, 96), (64, 64), (128, 128)])
    assert calls == {"build": 2, "analyze": 6}  # the repeated 64x64 is dropped
    assert result.sizes == ((64, 64), (96, 96), (128, 128))


def test_sweep_applies_overrides_and_batch() -> None:
    result = sweep(["pafpn"], [(64, 64)], batch=2, out_channels=32)
    ref = profile("pafpn", input_size=(64, 64), batch=2, out_channels=32)
    point = result.necks[0].points[0]
    assert (point.flops, point.params) == (ref.flops, ref.params)
    data = result.to_dict()
    assert data["batch"] == 2 and data["unit"] == "flops"
    assert data["necks"][0]["config"]["out_channels"] == 32


def test_too_small_size_is_a_spec_error_before_any_trace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(necktool.analysis.profiling, "analyze",
                        lambda *a, **k: pytest.fail("traced before validating"))
    with pytest.raises(SpecError, match="coarsest stride 32"):
        sweep(["scrfd_2.5g"], [(640, 640), (16, 16)])


# -- the CLI -------------------------------------------------------------------------------
def test_cli_table_states_the_unit_and_keeps_stderr_clean() -> None:
    code, out, err = run("sweep", "scrfd_2.5g", "--sizes", "64:128:64")
    assert (code, err) == (0, "")
    r64 = profile("scrfd_2.5g", input_size=(64, 64))
    r128 = profile("scrfd_2.5g", input_size=(128, 128))
    assert f"{r64.flops:,}" in out and f"{r128.flops:,}" in out and f"{r64.params:,}" in out
    assert "1 fused multiply-add = 1 flop" in out and "128x128" in out
    # Every block fits the pipe's width (200), and a caption is never split mid-sentence:
    # it wraps at that width, not at the table's.
    assert all(len(line) <= 200 for line in out.splitlines())


def test_cli_json_expands_patterns() -> None:
    code, out, err = run("sweep", "scrfd_0.5g", "retinaface_*", "--sizes", "64,128x64", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert [n["neck"] for n in data["necks"]] == ["scrfd_0.5g", "retinaface_mnet",
                                                  "retinaface_r50"]
    assert data["sizes"] == [[64, 64], [128, 64]]
    point = data["necks"][2]["points"][1]
    ref = profile("retinaface_r50", input_size=(128, 64))
    assert point["flops"] == ref.flops and point["input_size"] == [128, 64]
    assert set(point["level_flops"]) == {"P3", "P4", "P5"}


@pytest.mark.parametrize(("args", "needle"), [
    (["--sizes", "320:640:0"], "step 0"),
    (["--sizes", "abc"], "valid forms"),
    (["--sizes", "16"], "coarsest stride 32"),
    (["--sizes", "64", "--out-channels", "0"], "--out-channels"),
])
def test_cli_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    code, out, err = run("sweep", "scrfd_2.5g", *args)
    assert code == 2 and out == ""
    assert err.startswith("necktool: error: ") and err.count("\n") == 1 and needle in err


def test_cli_unknown_neck() -> None:
    code, _, err = run("sweep", "scrfd_25g", "--sizes", "64")
    assert code == 2 and "did you mean 'scrfd_2.5g'" in err


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_is_a_valid_image(tmp_path: pathlib.Path, suffix: str) -> None:
    dest = tmp_path / f"sweep{suffix}"
    code, out, err = run("sweep", "scrfd_2.5g", "retinaface_mnet", "--sizes", "64,128,256",
                         "--plot", str(dest), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["sizes"] == [[64, 64], [128, 128], [256, 256]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]  # no temp file left
    if suffix == ".png":
        assert dest.read_bytes()[:8] == PNG_MAGIC
        import matplotlib.image

        image = matplotlib.image.imread(str(dest))
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    else:
        root = ET.parse(dest).getroot()
        assert root.tag.endswith("svg")
        text = dest.read_text()
        # matplotlib writes text as glyph paths with the string in a comment.
        for label in ("scrfd_2.5g", "retinaface_mnet", "square side", Y_LABEL):
            assert label in text, label


@pytest.mark.parametrize(("metric", "says"), [
    ("memory", "peak activation memory, MiB"), ("params", "Mparams"), ("flops", Y_LABEL)])
def test_plot_metric(tmp_path: pathlib.Path, metric: str, says: str) -> None:
    dest = tmp_path / "sweep.svg"
    code, _, err = run("sweep", "scrfd_2.5g", "--sizes", "64,128", "--plot", str(dest),
                         "--metric", metric)
    assert (code, err) == (0, "")
    text = dest.read_text()
    assert says in text and "scrfd_2.5g" in text


def test_metric_without_plot_and_an_unknown_metric_are_exit_2(tmp_path: pathlib.Path) -> None:
    code, out, err = run("sweep", "scrfd_2.5g", "--sizes", "64", "--metric", "memory")
    assert code == 2 and out == "" and "--metric chooses what --plot draws" in err
    code, out, err = run("sweep", "scrfd_2.5g", "--sizes", "64", "--metric", "bytes",
                         "--plot", str(tmp_path / "x.png"))
    assert code == 2 and out == "" and 'expected one of "flops", "params", "memory"' in err


def test_cli_table_shows_the_peak_in_mib() -> None:
    code, out, _ = run("sweep", "scrfd_2.5g", "--sizes", "64,128")
    assert code == 0 and "peak MiB" in out and "2^20 bytes" in out
    for size in (64, 128):
        peak = profile("scrfd_2.5g", input_size=(size, size)).memory.peak_activation_bytes
        assert f"{peak / 2**20:.4f}" in out


def test_plot_non_square_sizes(tmp_path: pathlib.Path) -> None:
    result = sweep(["pafpn"], [(64, 128), (128, 64), (128, 128)])
    dest = result.plot(tmp_path / "mixed.svg")
    text = dest.read_text()
    assert "megapixels" in text and "128x64" in text


@pytest.mark.parametrize("name", ["sweep.jpg", "sweep", "sweep.png.txt"])
def test_plot_suffix_is_checked_before_profiling(tmp_path: pathlib.Path, name: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("necktool.analysis.sweep.sweep", lambda *a, **k: pytest.fail("profiled"))
    code, out, err = run("sweep", "scrfd_2.5g", "--sizes", "64", "--plot", str(tmp_path / name))
    assert code == 2 and out == ""
    assert ".png or .svg" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_unwritable_plot_path_fails_before_profiling(tmp_path: pathlib.Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("necktool.analysis.sweep.sweep", lambda *a, **k: pytest.fail("profiled"))
    code, _, err = run("sweep", "scrfd_2.5g", "--sizes", "64", "--plot",
                       str(tmp_path / "missing" / "sweep.png"))
    assert code == 2 and "does not exist" in err
    (tmp_path / "dir.png").mkdir()
    code, _, err = run("sweep", "scrfd_2.5g", "--sizes", "64", "--plot",
                       str(tmp_path / "dir.png"))
    assert code == 2 and err.startswith("necktool: error: ")


def test_missing_matplotlib_is_a_clear_exit_2(tmp_path: pathlib.Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("necktool.analysis.sweep.sweep", lambda *a, **k: pytest.fail("profiled"))
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes 'import matplotlib' fail
    code, out, err = run("sweep", "scrfd_2.5g", "--sizes", "64", "--plot",
                         str(tmp_path / "sweep.png"))
    assert code == 2 and out == ""
    assert err == f"necktool: error: {MATPLOTLIB_MISSING}\n"
    assert "pip install 'necktool[plot]'" in err
    assert list(tmp_path.iterdir()) == []


def test_sweep_help_does_not_import_torch_or_matplotlib() -> None:
    run_without(["sweep", "--help"], heavy=("torch", "matplotlib"))
