"""``necktool check``: budgets from TOML, through the CLI, with their exit codes.

The gate logic, not the neck, is under test, so entries use scrfd_2.5g at 64x64 (cheap)
and limits placed exactly at, just under or just over the measured counts.
"""

from __future__ import annotations

import errno
import json
import math
import tempfile
import textwrap
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from _analytic import pafpn_params
from _cli import run_without
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from necktool import ProfileResult, profile
from necktool.budgets import check_budgets, load_config, parse_percent
from necktool.cli import app
from necktool.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "necktool.toml"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    # Never append to a real job summary when the suite itself runs in GitHub Actions.
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture(scope="module")
def small() -> ProfileResult:
    """The measured truth for the entries below: scrfd_2.5g at 64x64, batch 1."""
    return profile("scrfd_2.5g", input_size=(64, 64))


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def pyproject(tmp_path: Path, entries: str, defaults: str = 'input-size = "64x64"') -> Path:
    """Write a pyproject.toml with a [tool.necktool] table and chdir-able ``tmp_path``."""
    path = tmp_path / "pyproject.toml"
    path.write_text("[project]\nname = 'demo'\n\n[tool.necktool]\n" + defaults + "\n\n"
                    + textwrap.dedent(entries))
    return path


def entry(body: str = "", neck: str = "scrfd_2.5g") -> str:
    return f'[[tool.necktool.budget]]\nneck = "{neck}"\n{textwrap.dedent(body)}\n'


def exact(count: int, scale: int) -> str:
    """A TOML float equal to count / scale in decimal: no rounding in the config."""
    return f"{count}e-{round(math.log10(scale))}"


# -- pass / fail ----------------------------------------------------------------------
def test_pass_shows_budget_actual_headroom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           small: ProfileResult) -> None:
    limit = small.flops * 1.25 / 1e9  # headroom (1.25 - 1) / 1.25 = 20%
    pyproject(tmp_path, entry(f"max-gflops = {limit!r}"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run("check")
    assert code == 0, err
    assert err == ""
    assert "pyproject.toml" in out and "scrfd_2.5g" in out and "PASS" in out
    assert f"{small.flops / 1e9:.4f}" in out and "20.0%" in out
    assert "fvcore flops / 1e9" in out  # the unit is stated
    assert "1 of 1 budgets passed" in out

    code, out, _ = run("check", "--json")
    data = json.loads(out)
    assert code == 0 and data["passed"] is True and data["unit"] == "flops"
    (result,) = data["entries"]
    assert result["flops"] == small.flops and result["params"] == small.params
    assert result["input_size"] == [64, 64] and result["batch"] == 1
    (check,) = result["checks"]
    assert check["metric"] == "gflops" and check["count"] == small.flops
    assert check["headroom_pct"] == pytest.approx(20.0)


def test_limit_equal_to_actual_passes_one_flop_under_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: ProfileResult) -> None:
    monkeypatch.chdir(tmp_path)
    pyproject(tmp_path, entry(f"max-gflops = {exact(small.flops, 10**9)}"))
    code, out, err = run("check")
    assert code == 0, err
    assert "0.0%" in out

    pyproject(tmp_path, entry(f"max-gflops = {exact(small.flops - 1, 10**9)}"))
    code, out, err = run("check")
    assert code == 1, err
    assert "FAIL" in out and "0 of 1 budgets passed" in out
    # Unequal values are never printed alike: enough decimals to tell them apart.
    assert f"{(small.flops - 1) / 1e9:.9f}" in out and f"{small.flops / 1e9:.9f}" in out
    assert "exceeds the budget" in out and "raise the budget or reduce the neck" in out


def test_params_budget_against_hand_count(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    params = pafpn_params([48, 48, 80], 40)  # worked out from the shapes, not measured
    monkeypatch.chdir(tmp_path)
    pyproject(tmp_path, entry(f"max-mparams = {exact(params, 10**6)}"))
    assert run("check")[0] == 0
    pyproject(tmp_path, entry(f"max-mparams = {exact(params - 1, 10**6)}"))
    code, out, _ = run("check")
    assert code == 1
    assert "Mparams" in out and f"by {1e-6:.4g} Mparams" in out


def test_per_level_limit_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     small: ProfileResult) -> None:
    p3, p5 = small.levels[0], small.levels[2]
    pyproject(tmp_path, entry(f"""
        max-gflops = 1.0
        levels = {{ P3 = {{ max-gflops = {exact(p3.flops - 1, 10**9)} }}, P5 = {{ max-mparams = {exact(p5.params, 10**6)} }} }}
    """))  # noqa: E501
    monkeypatch.chdir(tmp_path)
    code, out, err = run("check", "--json")
    assert code == 1, err
    checks = {(c["metric"], c["level"]): c for c in json.loads(out)["entries"][0]["checks"]}
    assert checks[("gflops", None)]["passed"] is True
    assert checks[("gflops", "P3")]["passed"] is False
    assert checks[("gflops", "P3")]["count"] == p3.flops
    assert checks[("mparams", "P5")]["passed"] is True  # equal passes
    code, out, _ = run("check")
    assert code == 1
    assert "P3 GFLOPs" in out and "level P3 GFLOPs" in out and "FAIL" in out


def mib(count: int) -> str:
    """A TOML float equal to count / 2^20 in decimal (MiB, the unit of the -mb keys)."""
    text = repr(count / 2**20)
    assert Fraction(text) == Fraction(count, 2**20), "not exact in 17 digits: pick another"
    return text


def test_memory_budgets_are_exact_in_mib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         small: ProfileResult) -> None:
    mem = small.memory
    monkeypatch.chdir(tmp_path)
    pyproject(tmp_path, entry(f"""
        max-peak-mb = {mib(mem.peak_activation_bytes)}
        max-activation-mb = {mib(mem.activation_bytes)}
        max-param-mb = {mib(mem.param_bytes)}
    """))
    code, out, err = run("check", "--json")
    assert code == 0, err  # equal passes
    result = json.loads(out)["entries"][0]
    assert result["peak_activation_bytes"] == mem.peak_activation_bytes
    assert result["activation_bytes"] == mem.activation_bytes
    assert result["param_bytes"] == mem.param_bytes == 4 * small.params
    assert result["peak_mib"] == mem.peak_activation_bytes / 2**20
    assert {c["metric"] for c in result["checks"]} == {"peak_mib", "activation_mib", "param_mib"}
    assert all(c["headroom_pct"] == 0.0 for c in result["checks"])
    assert result["cross_check"]["agree"] is True

    # One float (4 bytes) under the measured peak fails, and says so in MiB.
    pyproject(tmp_path, entry(f"max-peak-mb = {mib(mem.peak_activation_bytes - 4)}"))
    code, out, err = run("check")
    assert code == 1, err
    assert "peak MiB" in out and "FAIL" in out and "MiB =" in out and "2^20" in out
    # the figures came from the first run's cache entry: the cross-check ran when it was written
    assert ("the 1 entry from the cache was cross-checked with torch.utils.flop_counter when "
            "its entry was written (equal)") in " ".join(out.split())
    # Unequal values are never printed alike: 5 decimals here, where 4 would round alike.
    assert (f"scrfd_2.5g: peak MiB {mem.peak_activation_bytes / 2**20:.5f} exceeds the "
            f"budget {(mem.peak_activation_bytes - 4) / 2**20:.5f} by 3.815e-06 MiB") in out


def test_memory_level_limits_and_the_peak_has_no_level(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: ProfileResult) -> None:
    p3, p5 = small.levels[0], small.levels[2]
    assert p3.activation_bytes > 0 and p5.param_bytes == 4 * p5.params
    pyproject(tmp_path, entry(f"""
        levels = {{ P3 = {{ max-activation-mb = {mib(p3.activation_bytes - 1024)} }}, P5 = {{ max-param-mb = {mib(p5.param_bytes)} }} }}
    """))  # noqa: E501
    monkeypatch.chdir(tmp_path)
    code, out, err = run("check", "--json")
    assert code == 1, err
    checks = {(c["metric"], c["level"]): c for c in json.loads(out)["entries"][0]["checks"]}
    assert checks[("activation_mib", "P3")]["passed"] is False
    assert checks[("activation_mib", "P3")]["count"] == p3.activation_bytes
    assert checks[("param_mib", "P5")]["passed"] is True
    code, out, _ = run("check")
    assert "level P3 activation MiB" in out

    pyproject(tmp_path, entry("levels = { P3 = { max-peak-mb = 1 } }"))
    code, out, err = run("check")
    assert code == 2 and out == ""
    assert "levels.P3.max-peak-mb: is a whole-neck limit with no per-level meaning" in err


def test_memory_growth_against_a_baseline_and_older_baselines_still_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: ProfileResult) -> None:
    pyproject(tmp_path, entry("max-gflops = 1.0"))
    monkeypatch.chdir(tmp_path)
    assert run("check", "--save-baseline", "base.json")[0] == 0
    saved = json.loads((tmp_path / "base.json").read_text())["entries"]["scrfd_2.5g"]
    assert saved["peak_activation_bytes"] == small.memory.peak_activation_bytes
    assert saved["activation_bytes"] == small.memory.activation_bytes
    assert saved["param_bytes"] == small.memory.param_bytes
    assert saved["levels"]["P3"]["activation_bytes"] == small.levels[0].activation_bytes
    assert saved["levels"]["P3"]["param_bytes"] == 4 * small.levels[0].params

    # The peak 5% smaller in the baseline: growth fails under every absolute budget.
    saved["peak_activation_bytes"] = round(small.memory.peak_activation_bytes / 1.05)
    (tmp_path / "base.json").write_text(json.dumps({"version": 1, "entries": {
        "scrfd_2.5g": saved}}))
    code, out, _ = run("check", "--baseline", "base.json", "--max-increase", "2%")
    assert code == 1
    assert "peak activation bytes grew +5.00% against the baseline" in out
    assert run("check", "--baseline", "base.json", "--max-increase", "6%")[0] == 0

    # A baseline from before memory figures: loads, gates FLOPs and params only.
    write_baseline(tmp_path / "old.json", small.flops, small.params)
    code, out, err = run("check", "--baseline", "old.json", "--json")
    assert code == 0, err
    growth = json.loads(out)["entries"][0]["baseline"]
    assert set(growth) == {"known", "flops", "params"}
    code, out, _ = run("check", "--baseline", "old.json", "--format", "markdown")
    assert "| peak MiB | - | " in out and " | - | - |" in out


def test_a_cross_check_disagreement_fails_the_gate_with_both_figures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: ProfileResult) -> None:
    import necktool.analysis.memory

    real = necktool.analysis.memory.conv_flop_count
    monkeypatch.setattr(necktool.analysis.memory, "conv_flop_count",
                        lambda *a, **k: real(*a, **k) + 2)  # one MAC too many per conv
    pyproject(tmp_path, entry("max-gflops = 1.0"))
    monkeypatch.chdir(tmp_path)
    code, out, _ = run("check")
    assert code == 1
    conv = small.operators["conv"]
    assert f"conv MACs differ: {conv:,} from fvcore vs" in out
    assert "torch.utils.flop_counter (a counting bug" in out
    assert "for every entry: equal" not in out


def test_extra_levels_and_mmdet_keys_are_budgeted_like_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    measured = profile("mmdet_fpn", input_size=(128, 128), extra_convs="on_output",
                       relu_before_extra_convs=True)
    p7 = measured.levels[4]
    assert p7.name == "P7" and p7.flops == 256 * 1 * 1 * 256 * 9  # 3x3 s2 conv onto 1x1
    pyproject(tmp_path, entry(f"""
        extra-convs = "on_output"
        relu-before-extra-convs = true
        max-gflops = {exact(measured.flops, 10**9)}
        levels = {{ P7 = {{ max-gflops = {exact(p7.flops - 1, 10**9)} }}, P6 = {{ max-mparams = 1.0 }} }}
    """, neck="mmdet_fpn"), defaults='input-size = "128x128"')  # noqa: E501
    monkeypatch.chdir(tmp_path)
    code, out, err = run("check", "--json")
    assert code == 1, err
    checks = {(c["metric"], c["level"]): c for c in json.loads(out)["entries"][0]["checks"]}
    assert checks[("gflops", None)]["passed"] is True  # equal passes
    assert checks[("gflops", "P7")]["passed"] is False
    assert checks[("gflops", "P7")]["count"] == p7.flops
    assert checks[("mparams", "P6")]["passed"] is True
    pyproject(tmp_path, entry('relu-before-extra-convs = "yes"', neck="mmdet_fpn"))
    code, _, err = run("check")
    assert code == 2 and "relu-before-extra-convs" in err and "expected true or false" in err


def test_entries_resolving_to_the_same_neck_are_profiled_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.analysis.profiling

    calls: list[object] = []
    real = necktool.analysis.profiling.run_profile

    def counting(*args: object, **kwargs: object) -> tuple[ProfileResult, ...]:
        calls.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(necktool.analysis.profiling, "run_profile", counting)
    # 'fpn' and 'retinaface_mnet' differ only in name: one trace serves both.
    pyproject(tmp_path, entry("max-gflops = 1.0", "fpn") + entry("max-gflops = 1.0",
                                                                 "retinaface_mnet"))
    config = load_config(None, tmp_path)
    report = check_budgets(config)
    assert report and len(calls) == 1
    assert report.entries[0].profile.flops == report.entries[1].profile.flops


# -- discovery ------------------------------------------------------------------------
def test_discovery_walks_up_and_prefers_necktool_toml(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject(tmp_path, entry("max-gflops = 0.000001"))  # would fail if it were used
    (tmp_path / "necktool.toml").write_text(
        'input-size = 64\n[[budget]]\nname = "standalone"\nneck = "scrfd_2.5g"\n'
        "max-gflops = 1.0\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    (sub / "pyproject.toml").write_text("[project]\nname = 'x'\n")  # no table: skipped
    monkeypatch.chdir(sub)
    code, out, err = run("check")
    assert code == 0, err
    assert "standalone" in out and "necktool.toml" in out


def test_standalone_file_may_use_a_tool_necktool_table(tmp_path: Path) -> None:
    path = tmp_path / "necktool.toml"
    path.write_text('[tool.necktool]\n[[tool.necktool.budget]]\nneck = "scrfd_2.5g"\n'
                    "max-gflops = 1.0\n")
    config = load_config(path, tmp_path)
    assert config.key_path == "tool.necktool" and config.budgets[0].input_size == (640, 640)
    path.write_text(path.read_text() + 'batch = 2\n[extra]\nkey = 1\n')
    code, _, err = run("check", "--config", str(path))
    assert code == 2 and "use either top-level keys or one [tool.necktool] table" in err


def test_missing_config_says_where_it_looked(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run("check")
    assert code == 2 and out == ""
    assert err.startswith("necktool: error: no budget config found")
    assert str(tmp_path.resolve()) in err and "necktool.toml" in err and "--config" in err
    code, _, err = run("check", "--config", "nope.toml")
    assert code == 2 and "nope.toml: config file not found" in err


# -- strict schema: exit 2, file and key path named -------------------------------------
def test_typo_key_names_file_and_key_path(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject(tmp_path, entry("max-gflops = 1.0") + entry("max-gflop = 0.3"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run("check")
    assert code == 2 and out == ""
    assert err.startswith("necktool: error: pyproject.toml: tool.necktool.budget[1].max-gflop: "
                          "unknown key; did you mean 'max-gflops'? valid: name, neck,")
    assert err.count("\n") == 1  # one line, no traceback


@pytest.mark.parametrize(("line", "path", "says"), [
    ('max-gflops = "0.3"', "max-gflops", 'expected a positive number, got string "0.3"'),
    ("max-gflops = -1", "max-gflops", "expected a positive number, got integer -1"),
    ("max-gflops = true", "max-gflops", "got boolean true"),
    ('in-channels = "48,48,80"', "in-channels", "expected an array of positive integers"),
    ("out-channels = 4.5", "out-channels", "expected a positive integer, got float 4.5"),
    ('norm = "layer"', "norm", 'expected one of "gn", "bn", "none", got string "layer"'),
    ('input-size = "64by64"', "input-size", 'expected a size like "640x480"'),
    ("batch = 0", "batch", "expected a positive integer, got integer 0"),
    ("levels = { P3 = 0.2 }", "levels.P3", "expected a table like { max-gflops = 0.2 }"),
    ("levels = { P3 = { max-gflop = 0.2 } }", "levels.P3.max-gflop", "unknown key"),
    ("levels = { P9 = { max-gflops = 0.2 } }", "levels.P9", "no level 'P9' in this neck"),
    ("levels = { p3 = { max-gflops = 0.2 } }", "levels.p3", "did you mean 'P3'?"),
    ('max-increase = "lots"', "max-increase", "expected a non-negative percentage"),
])
def test_wrong_type_says_expected_and_given(tmp_path: Path, line: str, path: str,
                                            says: str) -> None:
    pyproject(tmp_path, entry(f"max-gflops = 1.0\n{line}" if "max-gflops" not in line
                              else line))
    code, out, err = run("check", "--config", str(tmp_path / "pyproject.toml"))
    assert code == 2 and out == ""
    assert f"tool.necktool.budget[0].{path}: " in err and says in err


def test_unknown_neck_suggests_the_close_match(tmp_path: Path) -> None:
    pyproject(tmp_path, entry("max-gflops = 0.3", neck="scrfd_25g"))
    code, _, err = run("check", "--config", str(tmp_path / "pyproject.toml"))
    assert code == 2
    assert "tool.necktool.budget[0].neck: unknown neck 'scrfd_25g'; did you mean " \
           "'scrfd_2.5g'?" in err


@pytest.mark.parametrize(("entries", "defaults", "says"), [
    (entry(""), 'input-size = "64x64"', "budget[0]: no limit"),
    (entry("max-gflops = 1") * 2, 'input-size = "64x64"',
     "budget[1].name: duplicate budget name 'scrfd_2.5g' (also tool.necktool.budget[0])"),
    (entry("max-gflops = 1\ngn-groups = 7"), 'input-size = "64x64"',
     "budget[0]: invalid neck 'scrfd_2.5g': gn_groups=7 does not divide out_channels=40"),
    (entry("max-gflops = 1"), 'input-size = "64x64"\nmax-gflops = 1',
     "tool.necktool.max-gflops: unknown key"),
    (entry("max-gflops = 1"), "input-size = 16",
     "is smaller than the coarsest stride 32"),
    ("[tool.necktool.budget]\nneck = 'scrfd_2.5g'\n", "", "expected an array of tables"),
    ("", "", "no budget entries"),
])
def test_config_errors_exit_2(tmp_path: Path, entries: str, defaults: str, says: str) -> None:
    pyproject(tmp_path, entries, defaults)
    code, _, err = run("check", "--config", str(tmp_path / "pyproject.toml"))
    assert code == 2 and says in err, err


def test_invalid_toml_and_missing_table(tmp_path: Path) -> None:
    bad = tmp_path / "necktool.toml"
    bad.write_text("[[budget]\nneck = 1\n")
    code, _, err = run("check", "--config", str(bad))
    assert code == 2 and "necktool.toml: invalid TOML" in err
    plain = tmp_path / "pyproject.toml"
    plain.write_text("[project]\nname = 'x'\n")
    code, _, err = run("check", "--config", str(plain))
    assert code == 2 and "no [tool.necktool] table" in err


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                 st.lists(st.integers(-3, 300), max_size=4)))
def test_any_garbage_limit_is_a_config_error_or_a_limit(value: object) -> None:
    import tomllib

    if value is None:
        return
    literal = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) \
        else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, bool):
        literal = "true" if value else "false"
    text = f'[[budget]]\nneck = "scrfd_2.5g"\nmax-gflops = {literal}\n'
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # not TOML at all (e.g. a string with control characters)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "necktool.toml")
        path.write_text(text)
        try:
            budget = load_config(path, Path(tmp)).budgets[0]
        except ConfigError as exc:
            assert "budget[0].max-gflops: expected a positive number" in str(exc)
        else:
            limit = budget.limits.get("gflops")
            assert limit is not None and limit > 0


@given(st.one_of(st.text(max_size=6), st.floats(), st.integers(), st.booleans()))
def test_parse_percent_accepts_only_non_negative_percentages(value: object) -> None:
    try:
        pct = parse_percent(value)
    except InputError:
        return
    assert math.isfinite(pct) and pct >= 0 and not isinstance(value, bool)


# -- baselines ------------------------------------------------------------------------
def write_baseline(path: Path, flops: int, params: int, name: str = "scrfd_2.5g") -> Path:
    path.write_text(json.dumps({"version": 1, "entries": {
        name: {"flops": flops, "params": params}}}))
    return path


def test_baseline_growth_fails_under_the_absolute_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: ProfileResult) -> None:
    pyproject(tmp_path, entry("max-gflops = 1.0\nmax-mparams = 1.0"))
    monkeypatch.chdir(tmp_path)
    # The baseline is 3% smaller than today's neck (params unchanged).
    base_flops = round(small.flops / 1.03)
    growth = (small.flops - base_flops) / base_flops * 100
    write_baseline(tmp_path / "base.json", base_flops, small.params)

    code, out, err = run("check", "--baseline", "base.json", "--max-increase", "2%")
    assert code == 1, err
    assert f"+{growth:.2f}%" in out and "+0.00%" in out and "vs baseline" in out
    assert f"FLOPs grew +{growth:.2f}% against the baseline" in out
    assert "more than the allowed 2%" in out and "--save-baseline" in out

    code, out, _ = run("check", "--baseline", "base.json", "--max-increase", "5")
    assert code == 0
    # Without --max-increase: the config's max-increase, else 0 (any growth fails).
    assert run("check", "--baseline", "base.json")[0] == 1
    pyproject(tmp_path, entry("max-gflops = 1.0"), 'input-size = 64\nmax-increase = "3.5%"')
    assert run("check", "--baseline", "base.json")[0] == 0


def test_save_baseline_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   small: ProfileResult) -> None:
    pyproject(tmp_path, entry("max-gflops = 1.0"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run("check", "--save-baseline", "out/base.json")
    assert code == 2 and "directory out does not exist" in err
    code, _, err = run("check", "--save-baseline", "base.json")
    assert code == 0 and "saved baseline to base.json" in err
    saved = json.loads((tmp_path / "base.json").read_text())
    assert saved["version"] == 1 and saved["unit"] == "flops"
    assert saved["entries"]["scrfd_2.5g"]["flops"] == small.flops
    assert saved["entries"]["scrfd_2.5g"]["params"] == small.params
    assert list(tmp_path.glob(".base.json.*")) == []  # the temp file was renamed away
    code, out, _ = run("check", "--baseline", "base.json", "--json")
    growth = json.loads(out)["entries"][0]["baseline"]
    assert code == 0 and growth["flops"]["change_pct"] == 0.0 and growth["known"] is True


def test_unwritable_save_baseline_fails_before_profiling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.analysis.profiling

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("profiled before checking the output path")

    monkeypatch.setattr(necktool.analysis.profiling, "profile", boom)
    pyproject(tmp_path, entry("max-gflops = 1.0"))
    locked = tmp_path / "locked"
    locked.mkdir()
    real_mkstemp = tempfile.mkstemp

    def denied(*args: Any, **kwargs: Any) -> tuple[int, str]:
        if Path(kwargs.get("dir") or ".").resolve() == locked:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    # chmod does not bind root (the usual CI user in containers), so deny the write probe.
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    monkeypatch.chdir(tmp_path)
    code, out, err = run("check", "--save-baseline", "locked/base.json")
    assert code == 2 and out == ""
    assert "locked/base.json: cannot write baseline: permission denied" in err


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "baseline is not valid JSON"),
    ('{"version": 2, "entries": {}}', "version is 2"),
    ('{"version": 1, "entries": {"a": {"flops": "1", "params": 2}}}',
     "entries.a needs integer 'flops' and 'params'"),
    ("[1, 2]", "not a necktool baseline"),
])
def test_malformed_baseline_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    text: str, says: str) -> None:
    pyproject(tmp_path, entry("max-gflops = 1.0"))
    (tmp_path / "base.json").write_text(text)
    monkeypatch.chdir(tmp_path)
    code, out, err = run("check", "--baseline", "base.json")
    assert code == 2 and out == "" and says in err
    code, _, err = run("check", "--baseline", "missing.json")
    assert code == 2 and "baseline file not found" in err


@pytest.mark.parametrize(("args", "says"), [
    (["--max-increase", "2%"], "--max-increase needs --baseline"),
    (["--baseline", "b.json", "--max-increase", "-1%"], "non-negative percentage"),
    (["--baseline", "b.json", "--max-increase", "two"], 'got string "two"'),
    (["--json", "--format", "github"], "--json and --format github conflict"),
    (["--format", "yaml"], "'yaml' is not one of"),
])
def test_usage_errors_exit_2(args: list[str], says: str) -> None:
    code, out, err = run("check", *args)
    assert code == 2 and out == "" and says in err, err


# -- CI output ------------------------------------------------------------------------
def test_github_annotations_and_step_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             small: ProfileResult) -> None:
    pyproject(tmp_path, entry("max-gflops = 1.0") + entry(
        f'name = "tight"\nmax-gflops = {exact(small.flops - 1000, 10**9)}'))
    write_baseline(tmp_path / "base.json", small.flops, small.params, name="tight")
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.chdir(tmp_path)
    code, out, err = run("check", "--format", "github", "--baseline", "base.json")
    assert code == 1, err
    lines = out.splitlines()
    errors = [ln for ln in lines if ln.startswith("::error ")]
    warnings = [ln for ln in lines if ln.startswith("::warning ")]
    # Annotations point at the failing entry's [[budget]] header line.
    headers = [i for i, ln in enumerate((tmp_path / "pyproject.toml").read_text().splitlines(),
                                        1) if ln == "[[tool.necktool.budget]]"]
    header = headers[1]
    assert len(errors) == 1
    assert errors[0].startswith(f"::error file=pyproject.toml,line={header},"
                                "title=necktool budget exceeded::tight: GFLOPs ")
    assert "%25 over); raise the budget or reduce the neck" in errors[0]  # '%' escaped
    assert len(warnings) == 1 and "scrfd_2.5g: not in the baseline base.json" in warnings[0]
    assert warnings[0].startswith("::warning file=pyproject.toml,line=")
    text = summary.read_text()
    assert text.startswith("earlier step\n### ❌ necktool check: 1 of 2 budgets passed")
    assert "| tight | scrfd_2.5g 64x64 | GFLOPs |" in text and "**FAIL**" in text


@pytest.mark.parametrize("root", ["workspace", "git"])
def test_annotations_name_the_file_from_the_repository_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: str) -> None:
    """GitHub places annotations by path from the repository root, so a check run from a
    subdirectory must not write file=../pyproject.toml."""
    import subprocess

    project = tmp_path / "models" / "neck"
    (project / "src").mkdir(parents=True)
    pyproject(project, entry("max-gflops = 1e-9"))  # fails: one annotation
    if root == "workspace":
        monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    else:
        monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(project / "src")  # found upwards, as a CI step in a subdirectory would
    code, out, err = run("check", "--format", "github")
    assert code == 1, err
    errors = [ln for ln in out.splitlines() if ln.startswith("::error ")]
    assert len(errors) == 1 and errors[0].startswith("::error file=models/neck/pyproject.toml,")


@pytest.mark.parametrize(("data", "says"), [
    ("# caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 5"),
    (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "levels deep; at most"),
])
def test_hostile_config_files_are_one_line_exit_2(tmp_path: Path, data: bytes,
                                                   says: str) -> None:
    config = tmp_path / "necktool.toml"
    config.write_bytes(data)
    code, out, err = run("check", "--config", str(config))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("necktool: error: ") and says in err, err


def test_markdown_format_for_a_pr_comment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          small: ProfileResult) -> None:
    pyproject(tmp_path, entry(f"max-gflops = {exact(small.flops * 2, 10**9)}\n"
                              f"max-mparams = {exact(small.params - 1, 10**6)}"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run("check", "--format", "markdown")
    assert code == 1 and err == ""
    assert out.startswith("### ❌ necktool check: 0 of 1 budgets passed (1 failed)\n")
    assert "| budget | neck | check | limit | actual | headroom | result |" in out
    assert (f"| scrfd_2.5g | scrfd_2.5g 64x64 | GFLOPs | {small.flops * 2 / 1e9:.4f} | "
            f"{small.flops / 1e9:.4f} | 50.0% | PASS |") in out
    assert "| Mparams |" in out and "| **FAIL** |" in out
    assert "fvcore flops / 1e9" in out
    assert "- scrfd_2.5g: Mparams" in out and "raise the budget or reduce the neck" in out


def test_example_config_passes_with_honest_headroom() -> None:
    config = load_config(EXAMPLE, REPO)
    assert len(config.budgets) == 6
    necks = {b.neck for b in config.budgets}
    assert {"scrfd_2.5g", "retinaface_mnet", "retinaface_r50", "pafpn"} <= necks
    report = check_budgets(config)
    assert report, [m for _, m in report.failures()]
    for result in report.entries:
        for check in result.limits:
            assert 0 < check.headroom_pct < 10, (result.budget.name, check.label)


def test_check_help_does_not_import_torch() -> None:
    run_without(["check", "--help"])
