"""Verification options: one validated value, Polygraphy-style per-output tolerances, the
error statistic, and the same through the CLI."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from necktool.cli import app, fold_tolerances
from necktool.deploy.tolerance import ErrorStat, Tolerance, VerifyOptions
from necktool.deploy.verify import compare_arrays
from necktool.errors import InputError


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_polygraphy_syntax_parses_to_a_default_and_per_output_values() -> None:
    t = Tolerance.parse(["1e-4", "p5:1e-3"], "atol")
    assert t.default == 1e-4 and t.for_output("p5") == 1e-3 and t.for_output("p3") == 1e-4
    assert Tolerance.parse(["p4:0.5"], "rtol").default == 1e-4  # the fp32 default stays
    assert Tolerance.parse(["1e-4,p5:2e-3"], "atol") == Tolerance(1e-4, (("p5", 2e-3),))
    assert VerifyOptions(atol="0.01 p3:1", trials=1).tolerances("p3") == (1.0, 1e-4)


@pytest.mark.parametrize(("items", "says"), [
    (["1e-4", "2e-4"], "two default values"),
    (["-1"], "a tolerance must be a number from 0 to 1e\\+06, got -1.0"),
    (["nan"], "cannot read 'nan'"),
    (["p5:inf"], "cannot read 'p5:inf'"),
    (["1e999"], "got inf"),
    (["p5:1", "p5:2"], "two tolerances"),
    (["9x:1"], "is not an output name"),
    ([""], "no value"),
])
def test_bad_tolerances_are_input_errors(items: list[str], says: str) -> None:
    with pytest.raises(InputError, match=says):
        Tolerance.parse(items, "atol")


@given(st.text(max_size=20))
def test_any_tolerance_text_parses_or_is_an_input_error(text: str) -> None:
    try:
        t = Tolerance.parse([text], "atol")
    except InputError:
        return
    assert all(math.isfinite(v) and v >= 0 for v in (t.default, *dict(t.per_output).values()))


def test_options_are_validated_once_when_made() -> None:
    with pytest.raises(InputError, match="trials must be an integer from 1 to 100"):
        VerifyOptions(trials=0)
    with pytest.raises(InputError, match="not one of elemwise, mean, median"):
        VerifyOptions(error_stat="p99")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not a provider name"):
        VerifyOptions(provider="cpu; rm -rf /")
    with pytest.raises(InputError, match="a number from 0"):
        VerifyOptions(atol=-1.0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="names output 'p9'"):
        VerifyOptions(atol="1e-4 p9:1").check_outputs(["p3", "p4", "p5"])


def test_fold_tolerances_accepts_polygraphy_words_after_the_flag() -> None:
    assert fold_tolerances(["export", "fpn", "--atol", "1e-4", "p5:1e-3", "p4:2e-3",
                            "--rtol", "0", "-o", "x.onnx"]) == [
        "export", "fpn", "--atol", "1e-4", "--atol", "p5:1e-3", "--atol", "p4:2e-3",
        "--rtol", "0", "-o", "x.onnx"]
    # an import path is not a tolerance, and nothing is folded without the flag
    assert fold_tolerances(["export", "pkg.mod:Neck", "--atol", "1e-4", "x.y:Neck"]) == [
        "export", "pkg.mod:Neck", "--atol", "1e-4", "x.y:Neck"]


def test_error_statistics_by_hand() -> None:
    ref = np.array([1.0, 2.0, 0.0, -4.0], np.float32)
    got = np.array([1.1, 2.0, 0.001, -4.0], np.float32)
    # excess e = |d| - rtol*|ref| = .1-.05, 0-.1, .001-0, 0-.2 = .05, -.1, .001, -.2
    mean = compare_arrays("p3", got, ref, atol=0.01, rtol=0.05, error_stat=ErrorStat.MEAN)
    assert mean.min_atol == 0.0 and mean.passed  # mean excess -0.06225 -> 0 needed
    median = compare_arrays("p3", got, ref, atol=0.0, rtol=0.05, error_stat=ErrorStat.MEDIAN)
    assert median.min_atol == 0.0 and median.passed  # median of (-.2, -.1, .001, .05) < 0
    elem = compare_arrays("p3", got, ref, atol=0.01, rtol=0.05)
    assert elem.min_atol == pytest.approx(0.05, rel=1e-4) and not elem.passed
    # a median that exceeds atol fails even though some elements are within
    worse = np.array([1.3, 2.3, 0.3, -4.0], np.float32)
    bad = compare_arrays("p3", worse, ref, atol=0.1, rtol=0.0, error_stat=ErrorStat.MEDIAN)
    assert bad.min_atol == pytest.approx(0.3, rel=1e-4) and not bad.passed


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("tol") / "n.onnx"
    code, _, err = run("export", "scrfd_0.5g", "--input-size", "64", "-o", str(path),
                       "--trials", "1")
    assert code == 0, err
    return path


def test_per_output_tolerance_through_the_cli(exported: pathlib.Path) -> None:
    # atol 0 and rtol 0 fail every output (fp32 kernels differ by ~1e-6) except p5, given 1
    code, out, err = run("verify", str(exported), "--trials", "1", "--json", "--atol", "0",
                         "p5:1", "--rtol", "0")
    assert code == 1
    data = json.loads(out)["verification"]
    assert data["atol"] == {"default": 0.0, "p5": 1.0} and data["rtol"] == 0.0
    verdicts = {o["name"]: o["passed"] for o in data["cases"][0]["outputs"]}
    assert verdicts == {"p3": False, "p4": False, "p5": True}
    assert {o["name"]: o["atol"] for o in data["cases"][0]["outputs"]} == \
        {"p3": 0.0, "p4": 0.0, "p5": 1.0}
    assert "verification of" in err and "FAIL" in err


def test_a_tolerance_for_an_output_the_file_lacks_is_exit_2(exported: pathlib.Path) -> None:
    code, out, err = run("verify", str(exported), "--atol", "1e-4", "p9:1e-3")
    assert code == 2 and out == ""
    assert "--atol names output 'p9', which this model does not have; outputs: p3, p4, p5" \
        in err


def test_mean_statistic_passes_where_elemwise_fails(exported: pathlib.Path) -> None:
    # atol 0, rtol 0: every element with any error fails elementwise; the mean excess is
    # the mean abs error (~1e-7), so an atol of 1e-5 passes with --error-stat mean
    code, _, _ = run("verify", str(exported), "--trials", "1", "--atol", "1e-9", "--rtol", "0")
    assert code == 1
    code, out, err = run("verify", str(exported), "--trials", "1", "--atol", "1e-5",
                         "--rtol", "0", "--error-stat", "mean", "--json")
    assert code == 0, err
    assert json.loads(out)["verification"]["error_stat"] == "mean"
