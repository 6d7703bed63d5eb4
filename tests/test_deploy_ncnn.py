"""export --to ncnn: the .param/.bin pair pnnx converts from the PyTorch module, with fp32
weights (counted by hand), an upsample that follows the finer level at every size, input
Mats kept alive, verification at every served case, and nothing written or left behind
when verification fails."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import necktool.cli

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from necktool.artifact.serving import default_cases
from necktool.deploy.runtimes.ncnn_export import export_ncnn, ncnn_paths
from necktool.deploy.runtimes.ncnn_pair import NcnnPair
from necktool.deploy.runtimes.runners import NcnnRunner
from necktool.deploy.tolerance import VerifyOptions
from necktool.necks.build import make_inputs
from necktool.necks.weights import seeded_model
from necktool.spec.registry import resolve_spec

SMALL = {"in_channels": (8, 16, 32), "out_channels": 8, "input_size": (64, 48)}
FLAGS = ["--in-channels", "8,16,32", "--out-channels", "8", "--input-size", "64x48"]
FP32_ERROR = 1e-4


@pytest.fixture(scope="module")
def spec() -> Any:
    return resolve_spec("pafpn", **SMALL)


@pytest.fixture(scope="module")
def model(spec: Any) -> nn.Module:
    return seeded_model(spec, seed=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, pathlib.Path]:
    """One fp32 export through the library, into a directory of its own."""
    folder = tmp_path_factory.mktemp("ncnn")
    result = export_ncnn("pafpn", folder / "small.param", batch=1,
                         options=VerifyOptions(trials=1), **SMALL)
    return result, folder


@pytest.fixture(scope="module")
def pair(exported: tuple[Any, pathlib.Path]) -> NcnnPair:
    result, _ = exported
    return NcnnPair(result.param_path.read_bytes(), result.bin_path.read_bytes(),
                    tuple(b.blob for b in result.inputs), tuple(b.blob for b in result.outputs))


def fp32_bin_bytes(model: nn.Module, fp16: bool = False) -> int:
    """ncnn's .bin by hand: per conv a 4-byte storage tag and its weights (float32, or
    float16 padded to 4 bytes), a float32 bias if any; per GroupNorm float32 gamma and
    beta."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.weight.numel()
            total += 4 + ((2 * n + 3) // 4 * 4 if fp16 else 4 * n)
            total += 4 * m.bias.numel() if m.bias is not None else 0
        elif isinstance(m, nn.GroupNorm) and m.affine:
            total += 8 * m.num_channels
    return total


def test_the_pair_alone_is_written_with_fp32_weights(exported: tuple[Any, pathlib.Path],
                                                     model: nn.Module) -> None:
    result, folder = exported
    assert result.written and result.passed
    assert sorted(p.name for p in folder.iterdir()) == ["small.bin", "small.param"]
    data = result.bin_path.read_bytes()
    assert len(data) == fp32_bin_bytes(model) == result.bin_bytes  # pnnx's fp16=0 honoured
    assert data[:4] == b"\0\0\0\0"  # the float32 storage tag (fp16 is 0x01306B47)
    assert result.param_path.read_bytes().startswith(b"7767517\n")


def test_the_report_names_the_blobs_a_cpp_caller_needs(exported: tuple[Any, pathlib.Path],
                                                        spec: Any) -> None:
    result, _ = exported
    data = result.to_dict()
    assert data["format"] == "ncnn" and data["precision"] == "fp32"
    assert data["inputs"] == [
        {"blob": "in0", "name": "c3", "shape": [8, 8, 6]},
        {"blob": "in1", "name": "c4", "shape": [16, 4, 3]},
        {"blob": "in2", "name": "c5", "shape": [32, 2, 2]}]  # ceil(64/s) x ceil(48/s)
    assert [o["blob"] for o in data["outputs"]] == ["out0", "out1", "out2"]
    assert [o["shape"] for o in data["outputs"]] == [[8, 8, 6], [8, 4, 3], [8, 2, 2]]
    param = result.param_path.read_text()
    for blob in ("in0", "in1", "in2", "out0", "out1", "out2"):
        assert f" {blob}" in param


def test_the_upsample_takes_its_size_from_the_finer_level(pair: NcnnPair) -> None:
    """Traced at one size, pnnx writes Interp with a fixed output size (3=H 4=W), which
    runs at that size only; traced at two, each Interp reads a reference blob."""
    interps = [ln.split() for ln in pair.param.decode().splitlines()
               if ln.startswith("Interp")]
    assert len(interps) == 2  # PAFPN's two top-down upsamples
    for layer in interps:
        assert layer[2] == "2"  # two inputs: the coarse map and the finer reference
        assert not any(p.startswith(("3=", "4=")) for p in layer[6:])


def test_verification_ran_at_every_served_case(exported: tuple[Any, pathlib.Path],
                                               spec: Any) -> None:
    result, _ = exported
    v = result.verification
    assert v.runtime == "ncnn" and v.passed and v.max_abs < FP32_ERROR
    want = default_cases(spec, spec.input_size, 1, result.served)
    assert [c.case for c in v.cases] == want
    assert any(c.batch == 2 for c in want) and any(
        c.input_size[0] % 32 and c.input_size[1] % 32 for c in want)


def test_ncnn_matches_pytorch_at_an_odd_size_in_batch_2(pair: NcnnPair, spec: Any,
                                                         model: nn.Module) -> None:
    runner = NcnnRunner(pair, spec.input_names, spec.output_names)
    for switch in ("use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        assert getattr(runner.net.opt, switch) is False
    inputs = make_inputs(spec, (77, 101), 2, seed=5)
    with torch.no_grad():
        ref = [o.numpy() for o in model(inputs)]
    got = runner.run([t.numpy() for t in inputs])
    assert not isinstance(got, str)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        assert float(np.abs(g - r).max()) < FP32_ERROR


def test_input_mats_keep_their_memory_alive(pair: NcnnPair, spec: Any) -> None:
    """ncnn.Mat(array) borrows the array's memory. float64 input forces a float32 copy;
    were that copy not held, the junk allocated next would take its memory and the Mat
    would read 7.0 (it does, with ncnn 1.0.20261020)."""
    runner = NcnnRunner(pair, spec.input_names, spec.output_names)
    sample = [np.full((8, 40, 30), 1.5), np.full((16, 20, 15), -2.5)]
    held = runner.input_mats(sample)
    junk = [np.full(a.shape, 7.0, dtype=np.float32) for a in sample for _ in range(4)]
    for (mat, _), want in zip(held, sample, strict=True):
        assert np.array_equal(np.array(mat), want.astype(np.float32))
    assert junk


def test_a_broken_pair_fails_verification_and_writes_nothing(
        pair: NcnnPair, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = bytearray(pair.weights)
    weights[4:8] = np.float32(10.0).tobytes()  # the first conv's first weight
    broken = dataclasses.replace(pair, weights=bytes(weights))
    import necktool.deploy.runtimes.pnnx

    monkeypatch.setattr(necktool.deploy.runtimes.pnnx, "neck_to_ncnn", lambda *a, **k: broken)
    (tmp_path / "x.bin").write_bytes(b"old")
    failed = export_ncnn("pafpn", tmp_path / "x", options=VerifyOptions(trials=1), **SMALL)
    assert not failed and not failed.written  # falsy, no exception
    assert failed.verification is not None and failed.verification.max_abs > 1e-2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]  # nothing new, no temps
    assert (tmp_path / "x.bin").read_bytes() == b"old"
    result = CliRunner().invoke(necktool.cli.app, [
        "export", "pafpn", *FLAGS, "--to", "ncnn", "-o", str(tmp_path / "x"), "--trials", "1"])
    assert result.exit_code == 1 and "FAIL" in result.stdout
    assert result.stderr.startswith("necktool: error: verification in ncnn failed")
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_output_paths() -> None:
    assert ncnn_paths("a/n.param", "x") == (pathlib.Path("a/n.param"), pathlib.Path("a/n.bin"))
    assert ncnn_paths("n.bin", "x") == (pathlib.Path("n.param"), pathlib.Path("n.bin"))
    assert ncnn_paths("n", "x") == (pathlib.Path("n.param"), pathlib.Path("n.bin"))
    assert ncnn_paths(None, "pafpn") == (pathlib.Path("pafpn.ncnn.param"),
                                         pathlib.Path("pafpn.ncnn.bin"))


def test_cli_fp16_pair_leaks_no_pnnx_chatter(tmp_path: pathlib.Path, model: nn.Module,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    """pnnx's converter binary writes to the process's file descriptors: capfd sees what
    would reach the terminal, CliRunner what the command printed."""
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    result = CliRunner().invoke(necktool.cli.app, [
        "export", "pafpn", *FLAGS, "--to", "ncnn", "--precision", "fp16", "--trials", "1",
        "--format", "json"])
    leaked = capfd.readouterr()
    assert result.exit_code == 0, result.stderr
    assert "pnnx" not in leaked.out + leaked.err and "pass_level" not in leaked.err
    assert "pnnx" not in result.stderr
    data = json.loads(result.stdout)  # stdout is the JSON alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pafpn.ncnn.bin", "pafpn.ncnn.param"]
    assert data["precision"] == "fp16" and data["bytes"]["bin"] == fp32_bin_bytes(model, True)
    v = data["verification"]
    assert v["passed"] and v["atol"] == 1e-2  # fp16's default tolerances
    assert 1e-5 < v["max_abs"] < 1e-2  # fp16 weights: visibly worse than fp32's ~2e-6


@pytest.mark.parametrize(("args", "says"), [
    (["--to", "ncnn", "--static"], "--static apply to ONNX files"),
    (["--to", "ncnn", "--opset", "19"], "--opset apply to ONNX files"),
    (["--to", "ncnn", "--precision", "int8"], "not available for ncnn"),
    (["--to", "ncnn", "--runtime", "openvino"], "--runtime apply to ONNX files"),
    (["--to", "tflite"], "--to"),
])
def test_cli_refusals_are_exit_2(args: list[str], says: str) -> None:
    result = CliRunner().invoke(necktool.cli.app, ["export", "pafpn", *FLAGS, *args])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("necktool: error: ") and says in result.stderr
