"""``check --suggest`` / ``--strict``: tighter limits and stale baseline entries
(necktool/budgets/hints.py)."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from necktool.analysis.profiling import ProfileResult, profile
from necktool.budgets.hints import DIGITS, MARGIN_PCT, THRESHOLD_PCT, suggested_limit
from necktool.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.setenv("NECKTOOL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def small() -> ProfileResult:
    return profile("scrfd_2.5g", input_size=(64, 64))


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["check", *args])
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, body: str) -> None:
    (tmp_path / "necktool.toml").write_text(
        f'input-size = "64x64"\n\n[[budget]]\nneck = "scrfd_2.5g"\n{body}\n')


def test_a_hand_worked_suggestion() -> None:
    # 583,676,800 flops = 0.5836768 GFLOPs; +3% = 0.60118710...; up to 3 digits: 0.602.
    assert suggested_limit(583_676_800, 10**9, 3.0) == 0.602
    # 1,000,000 params, +3% = 1.03 Mparams exactly: already 3 digits, kept.
    assert suggested_limit(1_000_000, 10**6, 3.0) == 1.03


@given(st.integers(1, 10**13), st.sampled_from([10**6, 10**9, 2**20]),
       st.floats(0, 50, allow_nan=False))
def test_any_suggestion_passes_exactly_and_is_the_smallest_such(count: int, scale: int,
                                                                margin: float) -> None:
    limit = suggested_limit(count, scale, margin)
    target = Fraction(count, scale) * (1 + Fraction(repr(margin)) / 100)
    exact = Fraction(repr(limit))
    assert exact * scale >= count and exact >= target  # it passes, with the margin
    digits = Decimal(repr(limit)).normalize().as_tuple().digits
    assert len(digits) <= DIGITS
    step = Fraction(10) ** (Decimal(repr(limit)).adjusted() - DIGITS + 1)
    assert exact - step < target  # one step less would not leave the margin


def test_suggest_prints_each_loose_limit_and_keeps_exit_0(tmp_path: Path,
                                                          small: ProfileResult) -> None:
    actual = small.flops / 1e9
    loose = round(actual * 2, 6)  # 50% headroom
    p3 = next(lv for lv in small.levels if lv.name == "P3")
    tight = round(p3.flops * 1.05 / 1e9, 6)  # ~4.8% headroom: under the threshold, no hint
    write(tmp_path, f"max-gflops = {loose}\nmax-mparams = {small.params * 1.05 / 1e6:.6f}\n"
                    f"levels = {{ P3 = {{ max-gflops = {tight} }} }}\n")
    code, out, _ = run("--suggest", "--format", "json")
    assert code == 0
    hints = json.loads(out)["hints"]
    assert hints["threshold_pct"] == THRESHOLD_PCT and hints["margin_pct"] == MARGIN_PCT
    assert [t["key"] for t in hints["tighter"]] == ["max-gflops"]
    (only,) = hints["tighter"]
    assert only["count"] == small.flops and only["limit"] == loose
    assert only["suggested"] == suggested_limit(small.flops, 10**9, MARGIN_PCT)
    assert 3.0 <= only["suggested_headroom_pct"] < 10.0
    assert p3.flops < tight * 1e9
    code, out, _ = run("--suggest", "--format", "markdown")
    assert code == 0 and f"| scrfd_2.5g | max-gflops | {loose:g} |" in out
    code, _, err = run("--strict")
    assert code == 1 and "--strict: 1 limit(s) with more than 10% headroom" in err


def test_a_loose_level_limit_is_named_by_its_key(tmp_path: Path, small: ProfileResult) -> None:
    p3 = next(lv for lv in small.levels if lv.name == "P3")
    write(tmp_path, f"levels = {{ P3 = {{ max-gflops = {p3.flops * 3 / 1e9:.6f} }} }}\n")
    code, out, _ = run("--suggest", "--format", "json")
    (only,) = json.loads(out)["hints"]["tighter"]
    assert code == 0 and only["key"] == "levels.P3.max-gflops" and only["count"] == p3.flops


def test_no_hints_when_every_limit_is_tight_and_strict_passes(tmp_path: Path,
                                                              small: ProfileResult) -> None:
    write(tmp_path, f"max-gflops = {small.flops * 1.04 / 1e9:.6f}\n")
    code, out, _ = run("--strict")
    assert code == 0 and "hints: no limit has more than 10% headroom" in out
    code, out, _ = run()
    assert "hints" not in json.loads(run("--format", "json")[1]) and "hints:" not in out


def test_a_stale_baseline_entry_is_reported_and_fails_only_under_strict(
        tmp_path: Path, small: ProfileResult) -> None:
    write(tmp_path, f"max-gflops = {small.flops * 1.04 / 1e9:.6f}\n")
    code, _, _ = run("--save-baseline", "base.json")
    assert code == 0
    base = json.loads((tmp_path / "base.json").read_text())
    base["entries"]["removed-neck"] = dict(base["entries"]["scrfd_2.5g"])
    (tmp_path / "base.json").write_text(json.dumps(base))
    code, out, _ = run("--baseline", "base.json", "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["stale_baseline"] == ["removed-neck"]
    assert any("removed-neck: stale baseline entry" in w for w in data["warnings"])
    code, _, err = run("--baseline", "base.json", "--strict")
    assert code == 1 and "0 limit(s) with more than 10% headroom, 1 stale baseline entry" in err
