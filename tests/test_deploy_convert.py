"""fp16 and int8 exports: the file says its precision, keeps float32 inputs and outputs,
verifies against fp32 PyTorch with the precision's tolerances, fails when damaged, and
nothing the converters say reaches the user."""

from __future__ import annotations

import json
import logging
import pathlib
import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import necktool.cli
from necktool.artifact.metadata import graph_precision, read_metadata
from necktool.deploy.export import export_onnx
from necktool.deploy.precision.convert import unshare_initializers
from necktool.deploy.tolerance import PRECISION_DEFAULTS, VerifyOptions
from necktool.errors import InputError
from necktool.spec.precision import Precision

NECK = "scrfd_0.5g"  # GroupNorm (the shared InstanceNormalization constants) and small
SIZE = "64x96"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(necktool.cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


def scratch() -> set[str]:
    """What the converters could leave in the temporary directory (the test's own: another
    process converting at the same time, a parallel test worker say, has its own)."""
    return {p.name for p in pathlib.Path(tempfile.gettempdir()).iterdir()
            if p.name.startswith(("ort.quant", "necktool-convert"))}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("precision")
    private = root / "tmp"
    private.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(private))
        return _export_each(root)


def _export_each(root: pathlib.Path) -> dict[str, pathlib.Path]:
    before, handlers = scratch(), list(logging.getLogger().handlers)
    out = {}
    for precision in ("fp16", "int8"):
        path = root / f"{precision}.onnx"
        code, stdout, stderr = invoke("export", NECK, "--onnx", "--input-size", SIZE,
                                      "--precision", precision, "-o", str(path), "--trials",
                                      "1", "--json")
        assert code == 0, stderr
        # no quantization or conversion chatter, no handler left on the root logger,
        # nothing left in the temporary directory
        assert stderr == ""
        assert logging.getLogger().handlers == handlers and scratch() == before
        data = json.loads(stdout)
        assert data["precision"] == precision and data["verification"]["precision"] == precision
        out[precision] = path
        (root / f"{precision}.json").write_text(stdout)
    return out


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_file_carries_its_precision_and_float32_io(files: dict[str, pathlib.Path],
                                                       precision: str) -> None:
    path = files[precision]
    meta = read_metadata(path)
    assert meta is not None and meta.precision == precision
    model = onnx.load(str(path))
    assert graph_precision(model) == precision
    onnx.checker.check_model(model, full_check=True)
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
    data = json.loads((path.parent / f"{precision}.json").read_text())
    assert [t["dtype"] for t in data["inputs"] + data["outputs"]] == ["float"] * 6
    ver = data["verification"]
    atol, rtol = PRECISION_DEFAULTS[Precision(precision)]
    assert ver["passed"] and (ver["atol"], ver["rtol"]) == (atol, rtol)
    for case in ver["cases"]:
        for o in case["outputs"]:
            # real reduced-precision error: above fp32 noise, within the defaults
            assert 1e-5 < o["max_abs"] < atol and o["min_atol"] <= o["max_abs"]
            assert o["sqnr_db"] > (50 if precision == "fp16" else 15)
            assert 0.99 < o["cosine"] <= 1.0 + 1e-9
    if precision == "int8":
        assert data["calibration"]["batches"] == 8 and data["calibration"]["method"] == "MinMax"
        assert data["calibration"]["reduce_range"] is True
        # weights in a 7-bit range: every int8 conv filter within ORT's reduced [-64, 64]
        weights = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        filters = [numpy_helper.to_array(i) for i in model.graph.initializer
                   if i.name in weights and i.data_type == TensorProto.INT8 and len(i.dims) == 4]
        assert filters and all(np.abs(w.astype(np.int32)).max() <= 64 for w in filters)
        assert max(np.abs(w.astype(np.int32)).max() for w in filters) == 64  # symmetric
        # calibrated where verification draws its extra cases: odd sizes, batch 1
        assert data["calibration"]["shapes"] == [{"input_size": [65, 91], "batch": 1},
                                                 {"input_size": [93, 71], "batch": 1}]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_verify_reads_the_precision_from_the_file(files: dict[str, pathlib.Path],
                                                  precision: str) -> None:
    code, stdout, stderr = invoke("verify", str(files[precision]), "--trials", "1", "--json")
    assert code == 0, stderr
    assert stderr == ""
    data = json.loads(stdout)
    assert data["precision"] == precision
    assert (data["verification"]["atol"], data["verification"]["rtol"]) == \
        PRECISION_DEFAULTS[Precision(precision)]
    # a tolerance the user gives wins over the precision's default
    code, stdout, _ = invoke("verify", str(files[precision]), "--trials", "1", "--atol",
                             "1e-4", "--rtol", "1e-4", "--json")
    assert code == 1
    summary = json.loads(stdout)["verification"]["summary"]
    assert summary.startswith(f"FAIL ({precision} file)") and "SQNR" in summary


def test_a_damaged_fp16_weight_fails_verify(files: dict[str, pathlib.Path],
                                            tmp_path: pathlib.Path) -> None:
    model = onnx.load(str(files["fp16"]))
    convs = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    init = next(i for i in model.graph.initializer
                if i.name in convs and i.data_type == TensorProto.FLOAT16)
    values = numpy_helper.to_array(init).copy()
    values[0] = -values[0]  # one output channel's filter negated (a norm cannot undo it)
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    code, stdout, stderr = invoke("verify", str(damaged), "--trials", "1", "--json")
    assert code == 1
    data = json.loads(stdout)["verification"]
    assert data["passed"] is False and data["precision"] == "fp16"
    assert "verification of" in stderr and "FAIL (fp16 file)" in stderr
    # the failure line carries the figures: max abs and rel error, the smallest passing
    # atol, SQNR and cosine similarity
    for figure in ("max |ort - torch|", "max rel", "smallest passing atol", "SQNR", "cosine"):
        assert figure in stderr


def test_a_failing_precision_is_exit_1_and_keeps_the_file(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "keep.onnx"
    dest.write_bytes(b"previous export")
    code, stdout, stderr = invoke("export", NECK, "--input-size", SIZE, "--precision", "int8",
                                  "--calibration", "2", "--atol", "1e-3", "--rtol", "0",
                                  "--trials", "1", "-o", str(dest))
    assert code == 1
    assert "FAIL (int8 file)" in stdout and "SQNR" in stdout
    assert "verification failed" in stderr and "left untouched" in stderr
    assert dest.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.onnx"]


def test_precision_flags_are_checked_before_any_work(tmp_path: pathlib.Path) -> None:
    out = str(tmp_path / "a.onnx")
    code, _, stderr = invoke("export", NECK, "--precision", "fp8", "-o", out)
    assert code == 2 and "--precision" in stderr
    code, _, stderr = invoke("export", NECK, "--calibration", "4", "-o", out)
    assert code == 2 and "add --precision int8" in stderr
    code, _, stderr = invoke("export", NECK, "--precision", "int8", "--calibration", "0",
                             "-o", out)
    assert code == 2 and "--calibration" in stderr
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="not one of fp32, fp16, int8"):
        export_onnx(NECK, tmp_path / "b.onnx", precision="bf16")


def test_int8_of_a_static_export_calibrates_at_its_size(tmp_path: pathlib.Path) -> None:
    result = export_onnx(NECK, tmp_path / "s.onnx", dynamic=False, input_size=(64, 64),
                         batch=2, precision="int8", calibration=3,
                         options=VerifyOptions(trials=1))
    assert result and result.metadata.precision == "int8"
    calib = result.to_dict()["calibration"]
    assert calib["batches"] == 3 and calib["shapes"] == [{"input_size": [64, 64], "batch": 2}]


def test_shared_initializers_get_one_uniquely_named_copy_each() -> None:
    # Two InstanceNormalizations share scale and bias, as the dynamo optimiser leaves them;
    # 'val_290' is taken, so ORT's own renaming (name + index) would collide with it.
    scale = numpy_helper.from_array(np.ones(4, np.float32), "val_29")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "val_2")
    nodes = [helper.make_node("InstanceNormalization", ["x", "val_29", "val_2"], ["val_290"]),
             helper.make_node("InstanceNormalization", ["val_290", "val_29", "val_2"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
        [scale, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert unshare_initializers(model) == 2
    names = [i.name for i in model.graph.initializer]
    assert len(names) == len(set(names)) == 4
    assert model.graph.node[0].input[1:] != model.graph.node[1].input[1:]
    produced = {o for n in model.graph.node for o in n.output}
    assert not produced & set(names)
    onnx.checker.check_model(model, full_check=True)


def test_int8_fused_kernels_equal_the_reference_qdq_graph(tmp_path: pathlib.Path) -> None:
    """ONNX Runtime fuses DequantizeLinear -> Conv -> QuantizeLinear into int8 kernels; on
    x86-64 without VNNI they multiply u8 by s8 in 16-bit sums that saturate with full-range
    weights (this neck's p5 then lost 18 dB of SQNR). With 7-bit weights the fused file
    computes exactly what its unfused QDQ graph does, on any CPU."""
    import onnxruntime as ort

    from necktool.necks.build import make_inputs
    from necktool.spec.registry import resolve_spec

    path = tmp_path / "q.onnx"
    export_onnx("insightface_scrfd_500m", path, input_size=(64, 96), precision="int8",
                verify=False)
    spec = resolve_spec("insightface_scrfd_500m")
    feeds = {n: t.numpy() for n, t in zip(spec.input_names,
                                           make_inputs(spec, (93, 71), 2, seed=3), strict=True)}
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outs.append(session.run(None, feeds))
    for reference, fused in zip(*outs, strict=True):
        np.testing.assert_allclose(fused, reference, atol=1e-6, rtol=0)
