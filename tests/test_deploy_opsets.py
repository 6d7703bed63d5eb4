"""``--opset 18`` to ``24`` on a GroupNorm neck: from opset 21 the exporter writes GroupNorm
as one ``GroupNormalization`` node, which onnx's shape inference cannot see through; the
conv-count check and ONNX Runtime verification must still hold at every opset."""

from __future__ import annotations

import pathlib

import onnx
import pytest
from _analytic import pafpn_conv_macs
from onnx import TensorProto, helper
from typer.testing import CliRunner

import necktool.cli
from necktool.artifact.metadata import conv_macs, static_shapes
from necktool.deploy.export import ExportResult, export_onnx
from necktool.deploy.tolerance import VerifyOptions
from necktool.errors import InputError
from necktool.spec.graph_form import MAX_OPSET, MIN_OPSET

# SCRFD's PAFPN with GroupNorm (4 groups of 2 channels), small enough for seconds a file.
NECK = {"in_channels": (8, 16, 32), "out_channels": 8, "norm": "gn", "gn_groups": 4}
SIZE = (61, 47)  # levels 8x6, 4x3, 2x2
OPSETS = range(MIN_OPSET, MAX_OPSET + 1)


def _export(folder: pathlib.Path, opset: int, *, dynamic: bool) -> ExportResult:
    return export_onnx("pafpn", folder / f"opset{opset}.onnx", input_size=SIZE, opset=opset,
                       dynamic=dynamic, options=VerifyOptions(trials=1), **NECK)


def _norm_ops(path: pathlib.Path) -> dict[str, int]:
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    return {op: ops.count(op) for op in ("GroupNormalization", "InstanceNormalization")}


def test_the_documented_range_is_18_to_24() -> None:
    assert (MIN_OPSET, MAX_OPSET) == (18, 24)


@pytest.mark.parametrize("opset", OPSETS)
def test_every_opset_exports_counts_and_verifies_a_groupnorm_neck(
        opset: int, tmp_path: pathlib.Path) -> None:
    """Static (one case: cheap); the dynamic file at the reported opset is the next test."""
    result = _export(tmp_path, opset, dynamic=False)
    assert result.written and result.passed and result.metadata.opset == opset
    model = onnx.load(str(result.path))
    assert next(o.version for o in model.opset_import if o.domain == "") == opset
    hand = sum(pafpn_conv_macs([8, 16, 32], 8, *SIZE))
    assert result.cross_check.onnx_conv_macs == result.cross_check.fvcore_conv_macs == hand \
        == 88_576
    # One GroupNorm per conv: 3 laterals, 3 top-down, 2 bottom-up, 3 output convs.
    ops = _norm_ops(result.path)
    if opset >= 21:
        assert ops == {"GroupNormalization": 11, "InstanceNormalization": 0}
    else:
        assert ops["GroupNormalization"] == 0 and ops["InstanceNormalization"] == 11
    assert result.verification is not None
    assert result.verification.max_abs < 1e-4


def test_opset_21_dynamic_export_verifies_at_odd_sizes(tmp_path: pathlib.Path) -> None:
    """The reported failure: 'export scrfd_2.5g --opset 21' (dynamic) stopped in the conv
    count. Now it counts and verifies at the export size and two odd sizes, one in batch 2."""
    result = _export(tmp_path, 21, dynamic=True)
    assert result.passed and result.metadata.dynamic
    assert result.cross_check.agree and result.cross_check.onnx_conv_macs == 88_576
    assert result.verification is not None
    cases = [(c.case.input_size, c.case.batch) for c in result.verification.cases]
    assert cases == [((61, 47), 1), ((65, 91), 1), ((93, 71), 2)]
    # The count at a size other than the traced one, from the same dynamic graph.
    model = onnx.load(str(result.path))
    shapes = {"c3": [2, 8, 12, 12], "c4": [2, 16, 6, 6], "c5": [2, 32, 3, 3]}
    assert conv_macs(model, shapes) == sum(pafpn_conv_macs([8, 16, 32], 8, 96, 96, batch=2))


def _graph(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"]),
                     helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h2",
                                                                            "w2"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _const(name: str, values: list[float] | list[int], dtype: int = TensorProto.FLOAT
           ) -> onnx.TensorProto:
    return helper.make_tensor(name, dtype, [len(values)], values)


def test_shapes_behind_a_groupnormalization_are_inferred() -> None:
    """x -> GroupNormalization -> Conv 3x3 (4 -> 6): the conv's output shape, hence its
    MACs, are known only if the GN's output shape is (= its input's)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [6, 4, 3, 3], [0.0] * 216)
    model = _graph([
        helper.make_node("GroupNormalization", ["x", "s", "b"], ["g"], num_groups=2),
        helper.make_node("Conv", ["g", "w"], ["out"], pads=[1, 1, 1, 1]),
    ], [_const("s", [1.0] * 4), _const("b", [0.0] * 4), weight])
    shapes = static_shapes(model, {"x": [2, 4, 5, 7], "y": [2, 4, 3, 4]})
    assert shapes["g"] == [2, 4, 5, 7] and shapes["out"] == [2, 6, 5, 7]
    assert conv_macs(model, {"x": [2, 4, 5, 7], "y": [2, 4, 3, 4]}) == 2 * 6 * 5 * 7 * 4 * 9
    assert [n.op_type for n in model.graph.node] == ["GroupNormalization", "Conv"]  # a copy


def test_a_slice_whose_ends_come_from_a_shape_is_inferred() -> None:
    """scale2's crop: Resize(y, x2) then Slice to Shape(x)[2:4], then a 1x1 Conv."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 4, 1, 1], [0.0] * 12)
    model = _graph([
        helper.make_node("Resize", ["y", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Shape", ["x"], ["hw"], start=2, end=4),
        helper.make_node("Slice", ["up", "zeros", "hw", "axes"], ["crop"]),
        helper.make_node("Conv", ["crop", "w"], ["out"]),
    ], [_const("scales", [1.0, 1.0, 2.0, 2.0]), _const("zeros", [0, 0], TensorProto.INT64),
        _const("axes", [2, 3], TensorProto.INT64), weight])
    shapes = static_shapes(model, {"x": [1, 4, 5, 7], "y": [1, 4, 3, 4]})
    assert shapes["up"] == [1, 4, 6, 8] and shapes["crop"] == [1, 4, 5, 7]
    assert conv_macs(model, {"x": [1, 4, 5, 7], "y": [1, 4, 3, 4]}) == 3 * 5 * 7 * 4


@pytest.mark.parametrize(("opset", "says"), [("17", "at least 18"), ("25", "up to 24"),
                                             ("21.5", "an integer")])
def test_opsets_outside_the_range_are_exit_2(opset: str, says: str) -> None:
    result = CliRunner().invoke(necktool.cli.app, ["export", "scrfd_2.5g", "--opset", opset])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("necktool: error: ") and says in result.stderr
    assert result.stderr.count("\n") == 1
    with pytest.raises(InputError, match="use 18 to 24"):
        export_onnx("pafpn", "/nonexistent/x.onnx", opset=25, **NECK)
