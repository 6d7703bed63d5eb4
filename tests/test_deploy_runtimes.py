"""--runtime: ONNX Runtime, OpenVINO (f32 hint and its default) and ncnn on one small neck,
at the export size and the odd, non-square sizes and batch the file serves; the refused
runtimes (MNN, LiteRT) and a missing extra are one-line exit-2 errors."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import necktool.cli
from necktool.artifact.serving import default_cases
from necktool.deploy.export import export_onnx, served_by
from necktool.deploy.runtimes.runners import RuntimesVerification
from necktool.deploy.verify import verify_onnx
from necktool.errors import InputError
from necktool.necks.build import make_inputs
from necktool.necks.weights import seeded_model
from necktool.spec.registry import resolve_spec
from necktool.spec.runtimes import Runtime, parse_runtimes, require_runtime

SMALL = {"in_channels": (8, 16, 32), "out_channels": 8, "input_size": (64, 48)}
FLAGS = ["--in-channels", "8,16,32", "--out-channels", "8", "--input-size", "64x48"]
FP32_ERROR = 1e-4  # the fp32 default atol; the runtimes measure about 2e-6 here
BF16_ERROR = 1e-3  # bf16 keeps 8 bits of mantissa: 3e-2..7e-2 measured here


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(necktool.cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def spec() -> Any:
    return resolve_spec("pafpn", **SMALL)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("rt") / "small.onnx"
    export_onnx("pafpn", path, verify=False, **SMALL)
    return path


def torch_outputs(spec: Any, size: tuple[int, int], batch: int, seed: int
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The seeded inputs and the fp32 PyTorch outputs, computed here, independently."""
    model = seeded_model(spec, seed=0)
    inputs = make_inputs(spec, size, batch, seed=seed)
    with torch.no_grad():
        outs = model(inputs)
    return [t.numpy() for t in inputs], [o.numpy() for o in outs]


# -- names, refusals, extras ------------------------------------------------------------
def test_runtime_lists_parse_in_order_without_repeats() -> None:
    assert parse_runtimes("ort,openvino,ncnn,ort") == [
        Runtime.ORT, Runtime.OPENVINO, Runtime.NCNN]
    assert parse_runtimes("onnxruntime, openvino:bf16") == [Runtime.ORT,
                                                            Runtime.OPENVINO_BF16]
    with pytest.raises(InputError, match="unknown runtime 'tensorrt'; valid: ort"):
        parse_runtimes("ort,tensorrt")
    with pytest.raises(InputError, match="comma-separated"):
        parse_runtimes("ort,")


@pytest.mark.parametrize(("name", "why"), [
    ("mnn", "pip-installs a telemetry package at run time"),
    ("litert", "onnx2tf and TensorFlow"),
])
@pytest.mark.parametrize("command", ["verify", "export", "bench"])
def test_mnn_and_litert_are_one_line_exit_2_saying_why(onnx_file: pathlib.Path, name: str,
                                                       why: str, command: str) -> None:
    target = [str(onnx_file)] if command == "verify" else ["pafpn"]
    code, out, err = invoke(command, *target, "--runtime", f"ort,{name}")
    assert code == 2 and out == ""
    assert err.startswith("necktool: error: ") and why in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_runtime_not_installed_is_exit_2_naming_the_extra(
        onnx_file: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("openvino", "pnnx") else real(name, *a))
    with pytest.raises(InputError, match=r"pip install 'necktool\[ncnn\]'"):
        require_runtime(Runtime.NCNN)
    code, out, err = invoke("verify", str(onnx_file), "--runtime", "ort,openvino")
    assert code == 2 and out == ""
    assert "necktool: error: --runtime openvino needs the Python package(s) openvino" in err
    assert "pip install 'necktool[openvino]'" in err
    code, _, err = invoke("bench", "pafpn", *FLAGS, "--runtime", "ncnn", "--repeat", "1")
    assert code == 2 and "pip install 'necktool[ncnn]'" in err


# -- OpenVINO ----------------------------------------------------------------------------
def test_openvino_f32_hint_is_set_and_read_back_from_the_compiled_model(
        onnx_file: pathlib.Path, spec: Any) -> None:
    pytest.importorskip("openvino")
    from necktool.deploy.runtimes.runners import OpenVinoRunner

    runner = OpenVinoRunner(onnx_file)
    # Read from the compiled model, not from what was asked: on a CPU with AVX512-BF16
    # this is "bf16" unless the hint is really set.
    assert runner.inference_precision == "f32"
    assert "inference precision f32 (hint f32, set explicitly)" in runner.describe()
    inputs, ref = torch_outputs(spec, (65, 91), 2, seed=7)  # odd, non-square, batch 2
    got = runner.run(inputs)
    assert not isinstance(got, str)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        assert float(np.abs(g - r).max()) < FP32_ERROR


def test_openvino_default_hint_is_bf16_here_and_shows_its_error(
        onnx_file: pathlib.Path, spec: Any) -> None:
    pytest.importorskip("openvino")
    from necktool.deploy.runtimes.runners import OpenVinoRunner

    default = OpenVinoRunner(onnx_file, hint=None)
    if default.inference_precision != "bf16":
        pytest.skip(f"this CPU's OpenVINO default inference precision is "
                    f"{default.inference_precision}, not bf16 (no AVX512-BF16/AMX): nothing "
                    "to show")
    inputs, ref = torch_outputs(spec, (64, 48), 1, seed=3)
    got = default.run(inputs)
    assert not isinstance(got, str)
    worst = max(float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True))
    assert worst > BF16_ERROR  # the trap is real here ...
    report = verify_onnx(onnx_file, runtimes=["openvino", "openvino:bf16"])
    assert isinstance(report.verification, RuntimesVerification)
    f32, bf16 = report.verification.results
    assert f32.passed and f32.max_abs < FP32_ERROR  # ... and the f32 hint removes it
    assert not bf16.passed and bf16.max_abs > BF16_ERROR
    assert not report.passed


# -- several runtimes, one table ---------------------------------------------------------
def test_verify_in_every_runtime_at_every_served_case(onnx_file: pathlib.Path,
                                                      spec: Any) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    code, out, err = invoke("verify", str(onnx_file), "--runtime", "ort,openvino,ncnn",
                            "--trials", "1", "--format", "json")
    assert code == 0, err
    verification = json.loads(out)["verification"]
    assert verification["passed"] is True
    runtimes = verification["runtimes"]
    assert [r["runtime"] for r in runtimes] == ["ort", "openvino", "ncnn"]
    want = [(list(c.input_size), c.batch)
            for c in default_cases(spec, spec.input_size, 1, served_by(spec))]
    assert tuple(want[0][0]) == (64, 48) and any(b == 2 for _, b in want)
    assert any(h % 32 and w % 32 and h != w for (h, w), _ in want)  # odd, non-square
    for r in runtimes:
        assert [(c["input_size"], c["batch"]) for c in r["cases"]] == want
        for case in r["cases"]:
            for o in case["outputs"]:
                assert o["passed"] and o["max_abs"] < FP32_ERROR and o["sqnr_db"] > 80
    assert "ncnn" in runtimes[2]["provider"] and "fp32 weights" in runtimes[2]["provider"]
    assert "inference precision f32" in runtimes[1]["provider"]
    # The table: one row per runtime x case x output level.
    code, out, _ = invoke("verify", str(onnx_file), "--runtime", "ort,openvino",
                          "--trials", "1", "--format", "markdown")
    assert code == 0
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "PASS" in ln]
    assert len(rows) == 2 * len(want) * spec.num_levels


def test_export_verifies_in_each_runtime_and_writes_only_if_all_pass(
        onnx_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """One export verified in ORT, OpenVINO and OpenVINO's default hint: where that
    default is bf16 (this CPU), it fails fp32 tolerances, so nothing is written (exit 1)
    though the other two passed; elsewhere all three pass and the file is written."""
    pytest.importorskip("openvino")
    from necktool.deploy.runtimes.runners import OpenVinoRunner

    bf16 = OpenVinoRunner(onnx_file, hint=None).inference_precision == "bf16"
    dest = tmp_path / "n.onnx"
    code, out, err = invoke("export", "pafpn", *FLAGS, "-o", str(dest), "--runtime",
                            "ort,openvino,openvino:bf16", "--trials", "1", "--format", "json")
    data = json.loads(out)
    runs = data["verification"]["runtimes"]
    assert [r["runtime"] for r in runs] == ["ort", "openvino", "openvino:bf16"]
    assert all(r["path"] == str(dest) for r in runs)
    assert runs[0]["passed"] and runs[1]["passed"] and runs[1]["max_abs"] < FP32_ERROR
    if bf16:
        assert code == 1 and not dest.exists() and data["written"] is False
        assert not runs[2]["passed"] and runs[2]["max_abs"] > BF16_ERROR
        assert err.startswith("necktool: error: verification failed")
    else:
        assert code == 0 and dest.is_file() and data["written"] is True


def test_bench_times_openvino_and_ncnn_with_their_error() -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    code, out, err = invoke("bench", "pafpn", *FLAGS, "--runtime", "ort,openvino",
                            "--runtime", "ncnn", "--warmup", "1", "--repeat", "3",
                            "--threads", "1", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)["runtimes"]
    assert [r["runtime"] for r in rows] == ["onnxruntime", "openvino", "ncnn"]
    for r in rows:
        assert r["repeat"] == 3 and all(t > 0 for t in r["times_ms"])
    for r in rows[1:]:
        assert r["max_abs"] < FP32_ERROR and r["sqnr_db"] > 80


# -- one runtime vocabulary ---------------------------------------------------------------
def test_a_runtime_without_a_runner_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime missing from the runner table is refused by name; it never runs on another
    runtime's runner (bench once sent every runtime but ncnn to OpenVINO)."""
    from necktool.deploy.runtimes import runners
    from necktool.errors import InputError
    from necktool.spec.runtimes import Runtime

    monkeypatch.delitem(runners.RUNNERS, Runtime.OPENVINO_BF16)
    with pytest.raises(InputError, match=r"runtime 'openvino:bf16' has no runner"):
        runners.open_runner(Runtime.OPENVINO_BF16, b"", None, None)


def test_an_unregistered_runtime_has_no_label_or_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from necktool.errors import InputError
    from necktool.spec import runtimes

    monkeypatch.delitem(runtimes.RUNTIMES, runtimes.Runtime.NCNN)
    with pytest.raises(InputError, match=r"runtime 'ncnn' is not registered"):
        runtimes.require_runtime(runtimes.Runtime.NCNN)


def test_every_runtime_that_runs_files_has_a_runner_and_the_names_agree() -> None:
    from necktool.deploy.runtimes.runners import RUNNERS
    from necktool.spec.runtimes import RUNTIMES, Runtime, parse_runtime

    assert set(RUNTIMES) == set(Runtime)
    assert set(RUNNERS) == {r for r, info in RUNTIMES.items() if info.runs_files}
    assert parse_runtime("onnxruntime") is parse_runtime(" ORT ") is Runtime.ORT
    assert parse_runtime("torch", torch=True) is Runtime.TORCH
