"""``necktool bench``: structure and sanity of the figures (never the speed itself)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from necktool import profile
from necktool.cli import app
from necktool.errors import InputError, SpecError
from necktool.latency.bench import BenchResult, Runtime, bench, percentile

runner = CliRunner()
# A narrow PAFPN at a small size: every runtime path runs, in milliseconds.
SMALL: dict[str, Any] = {"in_channels": (8, 16, 32), "out_channels": 8}
SMALL_FLAGS = ["--in-channels", "8,16,32", "--out-channels", "8", "--input-size", "64x96"]


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def positive_finite(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def small() -> tuple[BenchResult, list[str]]:
    labels: list[str] = []
    result = bench("pafpn", (64, 96), warmup=1, repeat=3, threads=1, on_run=labels.append,
                   **SMALL)
    return result, labels


def test_both_runtimes_report_positive_finite_figures(small: tuple[BenchResult, list[str]]
                                                      ) -> None:
    result, labels = small
    assert [t.runtime for t in result.timings] == [Runtime.TORCH, Runtime.ORT]
    assert labels == ["torch"] * 3 + ["onnxruntime"] * 3  # one progress step per timed run
    for t in result.timings:
        assert (t.warmup, t.repeat, t.threads) == (1, 3, 1)
        for value in (t.median_ms, t.p10_ms, t.p90_ms, t.min_ms, t.max_ms,
                      t.gflops_per_s(result.flops)):
            assert positive_finite(value)
        assert t.min_ms <= t.p10_ms <= t.median_ms <= t.p90_ms <= t.max_ms
        assert t.version
    assert positive_finite(result.ort_speedup)


def test_flops_are_fvcores_at_the_benched_size(small: tuple[BenchResult, list[str]]) -> None:
    result, _ = small
    ref = profile("pafpn", input_size=(64, 96), **SMALL)
    assert (result.flops, result.params, result.input_size) == (ref.flops, ref.params, (64, 96))
    t = result.timings[0]
    assert t.gflops_per_s(result.flops) == pytest.approx(result.flops / (t.median_ms / 1e3) / 1e9)


def test_to_dict_is_strict_json(small: tuple[BenchResult, list[str]]) -> None:
    data = json.loads(json.dumps(small[0].to_dict(), allow_nan=False))
    assert data["unit"] == "flops" and data["threads"] == 1 and data["batch"] == 1
    assert [r["runtime"] for r in data["runtimes"]] == ["torch", "onnxruntime"]
    assert len(data["runtimes"][1]["times_ms"]) == 3
    assert data["ort_speedup"] > 0


def test_threads_are_restored_and_torch_alone_skips_the_export() -> None:
    before = torch.get_num_threads()
    result = bench("pafpn", (64, 64), warmup=1, repeat=2, threads=1, runtimes=["torch"], **SMALL)
    assert torch.get_num_threads() == before
    assert [t.runtime for t in result.timings] == [Runtime.TORCH]
    assert result.ort_speedup is None and result.to_dict()["ort_speedup"] is None


@pytest.mark.parametrize(("kwargs", "error", "needle"), [
    ({"repeat": 0}, InputError, "repeat"),
    ({"warmup": 0}, InputError, "warmup"),
    ({"threads": 0}, InputError, "threads"),
    ({"runtimes": ["tensorrt"]}, InputError, "valid: torch, ort, openvino"),
    ({"runtimes": []}, InputError, "no runtime"),
    ({"input_size": (16, 16)}, SpecError, "coarsest stride"),
    ({"batch": 0}, InputError, "batch"),
])
def test_bad_arguments_fail_before_timing(kwargs: dict[str, Any], error: type[Exception],
                                          needle: str) -> None:
    with pytest.raises(error, match=needle):
        bench("pafpn", **{"warmup": 1, "repeat": 1, **SMALL, **kwargs})


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.001, 1e4), min_size=1, max_size=40), st.sampled_from([0, 10, 50,
                                                                                  90, 100]))
def test_percentile_matches_numpy(values: list[float], q: int) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_precisions_are_timed_in_one_run_with_size_and_error() -> None:
    result = bench("pafpn", (64, 96), warmup=1, repeat=2, threads=1,
                   precisions=["fp32", "fp16", "int8", "fp16"], calibration=2, **SMALL)
    assert [t.precision for t in result.timings] == ["fp32", "fp16", "int8"]
    assert all(t.runtime is Runtime.ORT for t in result.timings)  # ORT alone
    fp32, fp16, int8 = result.timings
    for t in result.timings:
        assert t.nbytes is not None and t.nbytes > 0 and positive_finite(t.median_ms)
        assert t.max_abs is not None and t.sqnr_db is not None
    assert fp32.max_abs is not None and fp32.max_abs < 1e-4 < fp16.max_abs  # type: ignore
    assert fp16.nbytes < fp32.nbytes  # type: ignore[operator]
    assert fp32.sqnr_db > fp16.sqnr_db > int8.sqnr_db > 10  # type: ignore[operator]
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["precisions"] == ["fp32", "fp16", "int8"] and data["calibration"] == 2
    assert [r["precision"] for r in data["runtimes"]] == ["fp32", "fp16", "int8"]


# -- the CLI -------------------------------------------------------------------------------
def test_cli_json_is_one_object_and_stderr_is_clean() -> None:
    code, out, err = run("bench", "pafpn", *SMALL_FLAGS, "--warmup", "1", "--repeat", "3",
                         "--threads", "1", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert isinstance(data, dict) and data["neck"] == "pafpn"
    assert data["input_size"] == [64, 96] and data["config"]["out_channels"] == 8
    assert data["flops"] == profile("pafpn", input_size=(64, 96), **SMALL).flops
    for r in data["runtimes"]:
        assert (r["warmup"], r["repeat"], r["threads"]) == (1, 3, 1)
        for key in ("median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms", "gflops_per_s"):
            assert positive_finite(r[key]), key


def test_cli_table_states_the_unit() -> None:
    code, out, err = run("bench", "pafpn", *SMALL_FLAGS, "--warmup", "1", "--repeat", "2",
                         "--runtime", "torch")
    assert (code, err) == (0, "")
    assert "torch" in out and "GFLOP/s" in out and "1 multiply-add = 1 flop" in out
    assert "onnxruntime" not in out
    # Every block fits the pipe's width (200), and a caption is never split mid-sentence:
    # it wraps at that width, not at the table's.
    assert all(len(line) <= 200 for line in out.splitlines())


def test_cli_precision_table() -> None:
    code, out, err = run("bench", "pafpn", *SMALL_FLAGS, "--warmup", "1", "--repeat", "2",
                         "--precision", "fp32,fp16,int8", "--runtime", "torch",
                         "--runtime", "onnxruntime")
    assert (code, err) == (0, "")
    for header in ("precision", "file MB", "median ms", "p10-p90 ms", "GFLOP/s", "max abs",
                   "SQNR dB"):
        assert header in out
    rows = [line.replace("│", " ").split() for line in out.splitlines()]
    assert [r[0] for r in rows if r and r[0] in ("torch", "fp32", "fp16", "int8")] == \
        ["torch", "fp32", "fp16", "int8"]  # torch's row first, as --runtime asked
    # Every block fits the pipe's width (200), and a caption is never split mid-sentence:
    # it wraps at that width, not at the table's.
    assert all(len(line) <= 200 for line in out.splitlines())


@pytest.mark.parametrize(("args", "needle"), [
    (["--precision", "fp32,fp8"], "--precision"),
    (["--precision", "fp16,"], "--precision"),
    (["--precision", "fp16", "--calibration", "2"], "add int8 to --precision"),
    (["--precision", "int8", "--runtime", "torch"], "add --runtime onnxruntime"),
    (["--repeat", "0"], "--repeat"),
    (["--warmup", "0"], "--warmup"),
    (["--threads", "0"], "--threads"),
    (["--runtime", "tensorrt"], "--runtime"),
    (["--input-size", "16"], "coarsest stride"),
])
def test_cli_bad_flags_exit_2(args: list[str], needle: str) -> None:
    code, out, err = run("bench", "pafpn", *args)
    assert code == 2 and out == ""
    assert err.startswith("necktool: error: ") and needle in err
