"""Nodes of an exported neck map to the stage and level of the module that made them."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from necktool.artifact.stages import module_path, node_parts
from necktool.necks.build import build_neck


@pytest.mark.parametrize(("neck", "path", "expected"), [
    ("scrfd_2.5g", "td_convs.1.conv", ("top-down", 1)),
    ("scrfd_2.5g", "bu_convs.0.conv", ("bottom-up", 1)),
    ("scrfd_2.5g", "bu_fuse.1", ("bottom-up", 2)),
    ("scrfd_2.5g", "bu_out_convs.2.relu", ("output", 2)),
    ("scrfd_2.5g", "", None),
    ("retinaface_mnet", "output1.0", ("lateral", 0)),
    ("retinaface_mnet", "merge2.2", ("merge", 1)),
    ("retinaface_mnet", "fuse1", ("merge", 0)),
    ("mmdet_fpn", "fpn_convs.2.conv", ("fpn", 2)),
    ("mmdet_fpn", "fpn_convs.4.conv", ("extra", 4)),
    ("insightface_scrfd_2.5g", "downsample_convs.0.conv", ("bottom-up", 1)),
    ("insightface_scrfd_2.5g", "pafpn_convs.1.conv", ("pafpn", 2)),
    ("insightface_scrfd_2.5g", "nonexistent.0", None),
])
def test_part_of_names_stage_and_level(neck: str, path: str,
                                       expected: tuple[str, int] | None) -> None:
    assert build_neck(neck).part_of(path) == expected


def test_extra_pools_feed_the_levels_past_the_inputs() -> None:
    model = build_neck("mmdet_fpn", extra_convs="none")
    assert model.part_of("extra_pools.0") == ("extra", 3)
    assert model.part_of("extra_pools.1") == ("extra", 4)


def _node(name: str, scopes: str | None) -> onnx.NodeProto:
    node = onnx.helper.make_node("Relu", ["x"], ["y"], name=name)
    if scopes is not None:
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=scopes)
    return node


def test_node_parts_reads_the_innermost_scope_and_skips_the_rest() -> None:
    model = build_neck("scrfd_2.5g")
    nodes = [_node("a", "['', 'td_convs.1', 'td_convs.1.conv', 'conv2d_4']"),
             _node("b", "['_empty_nn_module_stack_from_metadata_hook', 'sym_size_int_36']"),
             _node("c", None), _node("d", "not a list ["), _node("e", "['', 'relu']")]
    assert module_path(nodes[0]) == "td_convs.1.conv"
    assert node_parts(nodes, model.part_of) == {"a": ("top-down", 1)}


def test_every_conv_of_an_export_has_a_stage(tmp_path) -> None:
    from necktool.deploy.export import export_onnx
    out = tmp_path / "n.onnx"
    export_onnx("scrfd_2.5g", out, verify=False)
    proto = onnx.load(out)
    parts = node_parts(proto.graph.node, build_neck("scrfd_2.5g").part_of)
    convs = Counter(parts[n.name] for n in proto.graph.node if n.op_type == "Conv")
    # 3 laterals, 3 td convs, 2 bottom-up stride-2 convs, 3 output convs
    assert convs == Counter({("lateral", 0): 1, ("lateral", 1): 1, ("lateral", 2): 1,
                             ("top-down", 0): 1, ("top-down", 1): 1, ("top-down", 2): 1,
                             ("bottom-up", 1): 1, ("bottom-up", 2): 1,
                             ("output", 0): 1, ("output", 1): 1, ("output", 2): 1})
