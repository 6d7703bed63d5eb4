"""Where precision is lost: per-stage SQNR from one run with the stage outputs exposed,
``--keep-fp32`` changing the graph only in the named stages, and the measured suggestion
for ``--min-sqnr``."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from necktool.artifact.serving import Served, calibration_shapes
from necktool.artifact.stages import node_parts
from necktool.cli import app
from necktool.deploy.precision.convert import to_fp16, to_int8
from necktool.deploy.precision.loss import Reference, stage_nodes, stage_outputs, suggest_keep_fp32
from necktool.deploy.precision.reduce import synthetic_feeds
from necktool.errors import InputError
from necktool.spec.registry import resolve_spec

NECK = "scrfd_2.5g"
SIZE = (64, 64)


@pytest.fixture(scope="module")
def neck():
    from necktool.deploy.export import export_model
    from necktool.necks.build import make_inputs
    from necktool.necks.weights import seeded_model

    spec = resolve_spec(NECK, input_size=SIZE)
    model = seeded_model(spec, seed=0)
    proto = export_model(model, spec, make_inputs(spec, SIZE, 1, seed=0), dynamic=True, opset=18)
    shapes = calibration_shapes(spec, SIZE, 1, Served.legacy(True))
    return spec, model, proto, shapes


@pytest.fixture(scope="module")
def reference(neck):
    spec, model, proto, shapes = neck
    return Reference(proto, synthetic_feeds(spec, shapes, 2), model.part_of)


def test_stage_outputs_are_the_tensors_leaving_each_stage(neck) -> None:
    spec, model, proto, _ = neck
    leaving = stage_outputs(proto, model.part_of)
    # 3 lateral, 3 top-down, 2 bottom-up (levels 1, 2), 3 output: 11 parts
    assert len(leaving) == 11
    assert [leaving[("output", i)] for i in range(3)] == spec.output_names
    parts = node_parts(proto.graph.node, model.part_of)
    readers = {i: n for n in proto.graph.node for i in n.input}
    for (stage, level), tensor in leaving.items():
        if tensor in spec.output_names:
            continue
        reader = readers[tensor]  # someone outside the stage reads it
        assert parts.get(reader.name, ("?", -1))[0] != stage or \
            parts[reader.name][1] != level


def test_stage_sqnr_matches_a_hand_computed_sqnr(neck, reference) -> None:
    """The reported SQNR of a stage tensor equals 10 log10(sum ref^2 / sum err^2) computed
    here from two separate ORT runs on the same inputs."""
    import onnxruntime as ort

    spec, model, proto, shapes = neck
    int8 = to_int8(proto, spec, shapes, 4)
    rows = {(r.stage, r.level): r for r in reference.stage_sqnr(int8)}
    assert set(rows) == set(stage_outputs(proto, model.part_of))
    tensor = rows[("top-down", 1)].tensor
    from necktool.deploy.precision.loss import _as_read, expose

    read = _as_read(int8, tensor)
    assert read is not None and read != tensor  # after the int8 graph's Q/DQ pair
    ref_sess = ort.InferenceSession(expose(proto, [tensor]).SerializeToString())
    got_sess = ort.InferenceSession(expose(int8, [read]).SerializeToString())
    signal = noise = 0.0
    for feeds in reference.feeds:
        r = ref_sess.run([tensor], feeds)[0].astype(np.float64)
        g = got_sess.run([read], feeds)[0].astype(np.float64)
        signal += float((r ** 2).sum())
        noise += float(((g - r) ** 2).sum())
    assert rows[("top-down", 1)].sqnr_db == pytest.approx(10 * math.log10(signal / noise),
                                                          abs=1e-6)
    assert all(15 < r.sqnr_db < 60 for r in rows.values())
    fp16 = {(r.stage, r.level): r.sqnr_db for r in reference.stage_sqnr(to_fp16(proto))}
    assert min(fp16.values()) > max(r.sqnr_db for r in rows.values()) + 20


def _quantized_inputs(proto: onnx.ModelProto) -> dict[str, bool]:
    """Per node (not Q/DQ): whether any input comes from a DequantizeLinear."""
    dq = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: any(i in dq for i in n.input) for n in proto.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear")}


def _int8_weights(proto: onnx.ModelProto) -> set[str]:
    """The nodes that read a weight through a DequantizeLinear of an int8 initializer."""
    inits = {i.name for i in proto.graph.initializer}
    dq = {n.output[0] for n in proto.graph.node
          if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    return {n.name for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in dq}


def test_keep_fp32_changes_the_int8_graph_only_in_the_named_stages(neck) -> None:
    spec, model, proto, shapes = neck
    keep = stage_nodes(proto, model.part_of, ["bottom-up"])
    assert keep and {node_parts(proto.graph.node, model.part_of)[n][0] for n in keep} == \
        {"bottom-up"}
    full_graph = to_int8(proto, spec, shapes, 2)
    mixed_graph = to_int8(proto, spec, shapes, 2, keep_fp32=keep)
    full, mixed = _quantized_inputs(full_graph), _quantized_inputs(mixed_graph)
    # the quantizer folds a Relu into the quantized conv before it: only in the kept stage
    # may the compute nodes differ
    assert set(full) ^ set(mixed) <= set(keep)
    changed = {n for n in set(full) & set(mixed) if full[n] != mixed[n]}
    assert changed <= set(keep)  # outside the stage every node reads what it read before
    convs = {n.name for n in proto.graph.node if n.op_type == "Conv"}
    stage_convs = set(keep) & convs
    assert len(stage_convs) == 2  # the two stride-2 convs of the bottom-up path
    # int8 weights: every conv's in the full graph, all but the stage's in the mixed one
    assert _int8_weights(full_graph) == convs
    assert _int8_weights(mixed_graph) == convs - stage_convs


def test_keep_fp32_changes_the_fp16_graph_only_in_the_named_stages(neck) -> None:
    _, model, proto, _ = neck
    keep = set(stage_nodes(proto, model.part_of, ["lateral"]))
    half = to_fp16(proto, sorted(keep))
    inits = {i.name: i.data_type for i in half.graph.initializer}
    kept = {n.name for n in proto.graph.node if n.name in keep}
    assert len([n for n in kept if n.startswith("node_Conv")]) == 3
    checked = 0
    for node in half.graph.node:
        if node.op_type == "Cast":  # the converter's casts around the kept nodes
            continue
        for name in node.input:
            checked += 1
            if name in inits and inits[name] in (onnx.TensorProto.FLOAT,
                                                 onnx.TensorProto.FLOAT16):
                want = onnx.TensorProto.FLOAT if node.name in keep \
                    else onnx.TensorProto.FLOAT16
                assert inits[name] == want, (node.name, name)
    assert checked > 100


def test_suggestion_is_measured_and_meets_the_floor(neck, reference) -> None:
    spec, model, proto, shapes = neck

    def make(stages):
        return to_int8(proto, spec, shapes, 2,
                       keep_fp32=stage_nodes(proto, model.part_of, stages))

    plain = min(reference.output_sqnr(make(())).values())
    floor = plain + 2
    got = suggest_keep_fp32(reference, ["lateral", "top-down", "bottom-up", "output"], floor,
                            make)
    assert got.keep_fp32 is not None and got.worst_db >= floor
    # the figure is a measurement: converting again with the suggested stages gives it
    assert min(reference.output_sqnr(make(got.keep_fp32)).values()) == \
        pytest.approx(got.worst_db, abs=1e-6)
    # the smallest such set: no smaller set that was tried meets the floor
    assert all(db < floor for keep, db in got.tried if len(keep) < len(got.keep_fp32))
    impossible = suggest_keep_fp32(reference, ["lateral"], 200.0, make)
    assert impossible.keep_fp32 is None and "no set" in impossible.text()


def test_unknown_stage_is_an_input_error(neck) -> None:
    _, model, proto, _ = neck
    with pytest.raises(InputError, match="its stages: lateral, top-down"):
        stage_nodes(proto, model.part_of, ["pafpn"])


def test_cli_min_sqnr_fails_with_a_measured_suggestion(tmp_path) -> None:
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(app, [
        "export", NECK, "--input-size", "64", "-o", str(out), "--precision", "fp16",
        "--trials", "1", "--stages", "--min-sqnr", "150", "--format", "json"])
    assert result.exit_code == 1, result.output
    assert not out.exists()
    got = json.loads(result.stdout)["reduced_precision"]
    assert not got["passed"] and 50 < got["worst_sqnr_db"] < 150
    assert {s["stage"] for s in got["stages"]} == {"lateral", "top-down", "bottom-up", "output"}
    suggestion = got["suggestion"]
    # fp16 keeps ~70 dB; 150 dB needs every stage in fp32 and even then the fp16 rounding
    # of the inputs stays: all 15 sets of the 4 stages are tried, none meets it
    assert suggestion["min_sqnr_db"] == 150 and suggestion["keep_fp32"] is None
    assert len(suggestion["tried"]) == 15
    assert "necktool: error:" in result.stderr and "--min-sqnr 150" in result.stderr
