"""necktool verify: dynamic sizes in ONNX Runtime, tampered and foreign files, statistics."""

from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import necktool.cli
from necktool.deploy.runtimes.runners import open_session
from necktool.deploy.tolerance import VerifyOptions
from necktool.deploy.verify import compare_arrays, reference_threads, verify_onnx
from necktool.necks.weights import seeded_model
from necktool.spec.registry import get_spec

NECK = "scrfd_0.5g"  # GroupNorm, the smallest tier: fast to export


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(necktool.cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("onnx") / f"{NECK}.onnx"
    code, _, stderr = invoke("export", NECK, "--input-size", "64x96", "-o", str(path),
                             "--trials", "1")
    assert code == 0, stderr
    return path


def test_dynamic_file_runs_at_many_sizes(exported: pathlib.Path) -> None:
    spec = get_spec(NECK)
    model = seeded_model(spec, seed=0)  # what the file's metadata says made it
    session = open_session(exported, "CPUExecutionProvider")
    for (h, w), batch in (((64, 96), 1), ((160, 96), 2), ((32, 224), 3), ((333, 517), 1),
                          ((97, 33), 2)):
        gen = torch.Generator().manual_seed(h * w + batch)
        sizes = [(-(-h // s), -(-w // s)) for s in spec.strides]  # ceil(H / stride)
        x = [torch.randn(batch, c, *hw, generator=gen)
             for c, hw in zip(spec.in_channels, sizes, strict=True)]
        got = session.run(None, {n: t.numpy() for n, t in zip(spec.input_names, x, strict=True)})
        with torch.no_grad():
            want = model(x)
        for g, t, hw in zip(got, want, sizes, strict=True):
            assert g.shape == (batch, spec.out_channels, *hw)
            np.testing.assert_allclose(g, t.numpy(), atol=1e-4, rtol=1e-4)


def test_verify_passes_with_statistics(exported: pathlib.Path) -> None:
    code, stdout, stderr = invoke("verify", str(exported), "--json", "--trials", "2")
    assert code == 0, stderr
    assert stderr == ""
    top = json.loads(stdout)
    assert top["opset"] == 18 and top["dynamic"] is True
    assert [t["name"] for t in top["inputs"]] == ["c3", "c4", "c5"]
    assert [t["name"] for t in top["outputs"]] == ["p3", "p4", "p5"]
    data = top["verification"]
    assert data["passed"] is True and data["dynamic"] is True and data["neck"] == NECK
    assert data["weights"].startswith("seed 0")
    # the export size, then two odd sizes that are no multiples of 32 (one in batch 2)
    assert [(c["input_size"], c["batch"]) for c in data["cases"]] == [
        ([64, 96], 1), ([65, 91], 1), ([93, 71], 2)]
    assert top["precision"] == data["precision"] == "fp32"
    assert top["serves"].startswith("every image H x W from 32x32 up, any batch")
    for case in data["cases"]:
        assert [o["name"] for o in case["outputs"]] == ["p3", "p4", "p5"]
        for o in case["outputs"]:
            assert 0 < o["max_abs"] < 1e-4 and 0 < o["mean_abs"] <= o["max_abs"]
            assert o["nonfinite_ort"] == 0 and o["failed_elements"] == 0
            assert o["sqnr_db"] > 100 and o["cosine"] > 0.999999
    result = verify_onnx(exported, options=VerifyOptions(trials=1))
    assert result and result.verification.max_abs < 1e-4


def test_verify_tables(exported: pathlib.Path) -> None:
    code, stdout, _ = invoke("verify", str(exported), "--trials", "1")
    assert code == 0
    assert stdout.count("PASS") >= 9 and "64x96 b1" in stdout and "93x71 b2" in stdout
    assert "serves every image H x W from 32x32 up" in stdout


def test_perturbed_weight_fails_verify(exported: pathlib.Path, tmp_path: pathlib.Path) -> None:
    model = onnx.load(str(exported))
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    init = next(i for i in model.graph.initializer if i.name in conv_weights)
    values = numpy_helper.to_array(init).copy()
    values.flat[0] += 0.5  # one weight of one conv
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    code, stdout, stderr = invoke("verify", str(tampered), "--json", "--trials", "1")
    assert code == 1
    data = json.loads(stdout)["verification"]
    assert data["passed"] is False
    worst = max(o["max_abs"] for c in data["cases"] for o in c["outputs"])
    assert worst > 1e-3
    assert "verification of" in stderr and "FAIL" in stderr


def test_foreign_file_needs_neck(tmp_path: pathlib.Path) -> None:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                ir_version=10), str(path))
    code, stdout, stderr = invoke("verify", str(path))
    assert code == 2 and stdout == ""
    assert "no necktool metadata" in stderr and "--neck" in stderr
    code, _, stderr = invoke("verify", str(path), "--neck", "fpn")
    assert code == 2 and "takes 1 level(s)" in stderr


def test_not_onnx_and_missing(tmp_path: pathlib.Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    code, _, stderr = invoke("verify", str(junk))
    assert code == 2 and "not an ONNX model" in stderr
    code, _, stderr = invoke("verify", str(tmp_path / "none.onnx"))
    assert code == 2 and "does not exist" in stderr


def test_metadata_stripped_file_verifies_with_neck(exported: pathlib.Path,
                                                   tmp_path: pathlib.Path) -> None:
    model = onnx.load(str(exported))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    code, _, stderr = invoke("verify", str(bare), "--neck", NECK, "--input-size", "64x96",
                             "--trials", "1")
    assert code == 0, stderr
    # The wrong seed is a different network: verification must notice.
    code, _, _ = invoke("verify", str(bare), "--neck", NECK, "--input-size", "64x96",
                        "--seed", "1", "--trials", "1")
    assert code == 1


def test_an_older_file_is_fp32_and_serves_multiples(exported: pathlib.Path,
                                                     tmp_path: pathlib.Path) -> None:
    # necktool before 'serves' and 'precision': verified where it served, at multiples
    model = onnx.load(str(exported))
    keep = [p for p in model.metadata_props
            if p.key not in ("necktool.serves", "necktool.serves_note", "necktool.precision")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    code, stdout, stderr = invoke("verify", str(old), "--trials", "1", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["precision"] == "fp32" and "multiples of 32" in data["serves"]
    assert [c["input_size"] for c in data["verification"]["cases"]] == [
        [64, 96], [96, 128], [128, 96]]


@pytest.mark.parametrize(("key", "value", "says"), [
    ("precision", "fp8", "necktool.precision is damaged: 'fp8' is not one of fp32"),
    ("serves", '{"images": "all", "levels": "tied"}', "necktool.serves is damaged"),
    ("serves", '{"images": "static", "levels": "tied"}', "says static for a dynamic file"),
    ("calibration", "0", "necktool.calibration is damaged"),
])
def test_damaged_precision_or_served_sizes_are_exit_2(exported: pathlib.Path,
                                                      tmp_path: pathlib.Path, key: str,
                                                      value: str, says: str) -> None:
    model = onnx.load(str(exported))
    props = {p.key: p for p in model.metadata_props}
    if f"necktool.{key}" in props:
        props[f"necktool.{key}"].value = value
    else:
        model.metadata_props.add(key=f"necktool.{key}", value=value)
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    code, stdout, stderr = invoke("verify", str(bad))
    assert code == 2 and stdout == "" and says in stderr


def test_compare_arrays_numbers() -> None:
    ref = np.array([1.0, 2.0, 0.0, -4.0], np.float32)
    got = np.array([1.1, 2.0, 0.001, -4.0], np.float32)
    cmp = compare_arrays("p3", got, ref, atol=0.01, rtol=0.05)
    # |d| = .1, 0, .001, 0; allowed = .06, .11, .01, .21 -> only the first fails
    assert cmp.failed_elements == 1 and not cmp.passed
    assert cmp.max_abs == pytest.approx(0.1, rel=1e-5)
    assert cmp.mean_abs == pytest.approx(0.101 / 4, rel=1e-4)
    assert cmp.max_rel == pytest.approx(0.1, rel=1e-5)  # the zero reference is left out
    assert cmp.min_atol == pytest.approx(0.1 - 0.05 * 1.0, rel=1e-4)
    assert compare_arrays("p3", got, ref, atol=cmp.min_atol + 1e-6, rtol=0.05).passed
    nan = compare_arrays("p3", np.array([math.nan, 1.0], np.float32),
                         np.array([1.0, 1.0], np.float32), atol=1.0, rtol=1.0)
    assert not nan.passed and nan.nonfinite_ort == 1 and nan.failed_elements == 1
    assert math.isinf(nan.min_atol) and nan.to_dict()["min_atol"] is None
    shape = compare_arrays("p3", np.zeros((2, 2)), np.zeros((2, 3)), atol=1, rtol=1)
    assert not shape.passed and "shape" in shape.note


def test_reference_threads_fit_the_free_cores_and_are_restored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))  # a busy machine
    with reference_threads() as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # only this process
    with reference_threads() as n:
        assert n == min(before, os.cpu_count() or 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user decides
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    with reference_threads() as n:
        assert n == before


def test_sqnr_and_cosine_by_hand() -> None:
    ref = np.array([3.0, -4.0], np.float32)  # sum ref^2 = 25
    got = np.array([3.0, -3.0], np.float32)  # error (0, 1): sum err^2 = 1
    cmp = compare_arrays("p3", got, ref, atol=2, rtol=0)
    assert cmp.sqnr_db == pytest.approx(10 * math.log10(25))
    assert cmp.cosine == pytest.approx(21 / (5 * math.sqrt(18)))
    both = cmp.merge(compare_arrays("p3", ref, ref, atol=2, rtol=0))  # no error at all
    assert both.sqnr_db == pytest.approx(10 * math.log10(50))
    exact = compare_arrays("p3", ref, ref, atol=0, rtol=0)
    assert exact.sqnr_db == math.inf and exact.to_dict()["sqnr_db"] is None
