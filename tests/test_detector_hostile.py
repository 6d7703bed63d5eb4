"""An ONNX file necktool did not write is untrusted data: every kind of damage or hostility
is one line on stderr and exit 2, and external data outside the model's directory is
refused before anything is read."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest
from detectors import suite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper
from typer.testing import CliRunner

from necktool.cli import app

runner = CliRunner()


def _inspect(path: pathlib.Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(app, [*extra, "inspect", str(path)])
    return result.exit_code, result.stderr


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("necktool: error: "), stderr
    return lines[0]


def _base() -> onnx.ModelProto:
    return onnx.load(str(suite().files["scrfd_dedup"]))


def _external(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    init = model.graph.initializer[0]
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    del init.external_data[:]
    init.external_data.add(key="location", value=location)
    return model


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_the_directory_is_refused_before_reading(
        tmp_path: pathlib.Path, location: str) -> None:
    path = tmp_path / "det.onnx"
    onnx.save(_external(_base(), location), str(path))
    code, err = _inspect(path)
    assert code == 2
    assert "outside the model's directory; refused" in _one_line(err)


def test_external_data_inside_the_directory_is_read(tmp_path: pathlib.Path) -> None:
    model = _base()
    onnx.save(model, str(tmp_path / "det.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="det.bin", size_threshold=0)
    result = runner.invoke(app, ["inspect", str(tmp_path / "det.onnx")])
    assert result.exit_code == 0, result.output
    assert "mmdet_pafpn" in result.stdout


def test_declared_sizes_count_against_the_memory_limit_before_allocation(
        tmp_path: pathlib.Path) -> None:
    model = _base()
    big = onnx.TensorProto(name="big", data_type=onnx.TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    big.data_location = onnx.TensorProto.EXTERNAL
    big.external_data.add(key="location", value="big.bin")  # never created: never read
    model.graph.initializer.append(big)
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    code, err = _inspect(path, "--max-memory", "1G")
    assert code == 2
    line = _one_line(err)
    assert "needs about 4.0 TB of memory" in line and "1G" in line


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_malformed_protobuf_is_one_line(tmp_path: pathlib.Path, damage: str) -> None:
    data = suite().files["scrfd_dedup"].read_bytes()
    path = tmp_path / "det.onnx"
    path.write_bytes({"truncated": data[: len(data) // 3], "garbage": b"\x8f\xff" * 500,
                      "empty": b""}[damage])
    code, err = _inspect(path)
    assert code == 2
    line = _one_line(err)
    assert "not an ONNX model" in line or "holds no graph" in line


def test_a_cyclic_graph_is_one_line(tmp_path: pathlib.Path) -> None:
    model = _base()
    add = next(n for n in model.graph.node if n.op_type == "Add")
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and add.output[0]
                not in n.input and n.input[0] != model.graph.input[0].name)
    conv.input[0] = add.output[0]  # ...and the add reads (through the graph) the conv
    first = model.graph.node[0]
    first.input[0] = model.graph.node[-1].output[0]
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    code, err = _inspect(path)
    assert code == 2 and "the graph has a cycle" in _one_line(err)


def test_a_missing_initializer_is_one_line(tmp_path: pathlib.Path) -> None:
    model = _base()
    kept = [i for i in model.graph.initializer if i.name != "neck.lateral_convs.1.conv.weight"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    code, err = _inspect(path)
    assert code == 2
    assert "'neck.lateral_convs.1.conv.weight', which no node, input or initializer " \
        "provides" in _one_line(err)


@pytest.mark.parametrize("dims", [[16, 16, -3, 3], [16, 16, 3, 3]])
def test_tensors_whose_data_cannot_fill_their_shape_are_one_line(
        tmp_path: pathlib.Path, dims: list[int]) -> None:
    model = _base()
    init = next(i for i in model.graph.initializer if i.name == "neck.fpn_convs.0.conv.weight")
    init.CopyFrom(numpy_helper.from_array(np.zeros(10, np.float32), init.name))
    del init.dims[:]
    init.dims.extend(dims)
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    code, err = _inspect(path)
    assert code == 2
    line = _one_line(err)
    assert "impossible shape" in line or "does not hold the data its shape" in line


def test_inspecting_a_detector_never_imports_torch() -> None:
    code = ("import sys\nfrom necktool.cli import app\n"
            f"try:\n    app(['inspect', {str(suite().files['scrfd_2.5g'])!r}])\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO-TORCH")
    assert "insightface_scrfd_2.5g" in proc.stdout


def test_inspect_shows_the_neck_and_its_share(tmp_path: pathlib.Path) -> None:
    result = runner.invoke(app, ["inspect", str(suite().files["scrfd_2.5g"]), "--format",
                                 "json"])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(result.stdout)
    assert data["kind"] == "detector" and data["family"] == "mmdet_pafpn"
    assert data["presets"] == ["insightface_scrfd_2.5g"]
    assert data["in_channels"] == [48, 48, 80] and data["out_channels"] == 24
    assert data["norm_state"] == "none" and data["strides"] == [8, 16, 32]
    assert len(data["inputs"]) == 3 and len(data["outputs"]) == 3
    assert 0 < data["neck_share"]["conv_macs"] < 1
    assert data["neck"]["convs"] == 10
    no_neck = runner.invoke(app, ["inspect", str(suite().files["classifier"])])
    assert no_neck.exit_code == 2
    assert "carries no necktool metadata (not written by 'necktool export'), and no neck " \
        "was found in its graph: 4 Conv nodes (1 of them 1x1)" in _one_line(no_neck.stderr)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                     max_size=8))
def test_damaged_bytes_never_crash(tmp_path: pathlib.Path,
                                   cuts: list[tuple[int, int]]) -> None:
    """Any byte changes: a neck found (exit 0) or one line, exit 2; never a traceback."""
    data = bytearray(suite().files["scrfd_dedup"].read_bytes())
    for at, value in cuts:
        data[at % len(data)] = value
    path = tmp_path / "det.onnx"
    path.write_bytes(bytes(data))
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        _one_line(result.stderr)
