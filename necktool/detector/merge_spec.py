"""A Concat/Add neck found in a detector graph (:mod:`necktool.detector.merges`) as necktool
describes it: the spec of its own neck (the preset, where one matches), the neck's Conv
nodes and what was assumed (torch-free)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from necktool.detector.graph import Graph, attr
from necktool.detector.merges import MergeNeck, _Scan, no_merge_neck
from necktool.errors import NecktoolError

if TYPE_CHECKING:
    from necktool.spec.neck_spec import NeckSpec

_ACTS = ("relu", "silu", "leaky_relu", "none")
_LAYER_NAME = re.compile(r"(?:^|[/.])model\.(\d+)[/.]")


def _first_layer(merge: MergeNeck) -> int | None:
    """The yaml index of the neck's first layer, from node names when the exporter kept the
    module scopes (``/model.9/conv/Conv``); ``None`` when they are gone."""
    found = [int(m.group(1)) for n in merge.convs if (m := _LAYER_NAME.search(n.name))]
    if not found or len(found) != len(merge.convs):
        return None
    # the first layer is the lateral Conv; without laterals, the Upsample and Concat come
    # before the first block's convs (ultralytics: 10 Upsample, 11 Concat, 12 C2f)
    return min(found) - (0 if merge.laterals else 2)


def merge_spec(graph: Graph, merge: MergeNeck, size: tuple[int, int]
               ) -> tuple[NeckSpec, list[str]]:
    """The spec of necktool's neck for ``merge`` at ``size``, and what was assumed."""
    from necktool.spec.fields import Activation, Norm
    from necktool.spec.neck_spec import NeckSpec
    from necktool.spec.registry import PRESETS

    notes: list[str] = []
    if merge.act not in _ACTS:
        raise no_merge_neck(graph, f"a {merge.family} neck with {merge.act} activations, which "
                            f"necktool's necks do not build ({', '.join(_ACTS)})")
    fields: dict[str, Any] = {"in_channels": merge.in_channels,
                              "out_channels": merge.out_channels[0], "norm": Norm.BN,
                              "act": Activation(merge.act), "input_size": size}
    if merge.family in ("yolo5face", "yolov8"):
        fields["widths"] = merge.out_channels if len(set(merge.out_channels)) > 1 else None
        fields["repeats"] = merge.repeats
    elif len(set(merge.out_channels)) > 1:
        raise no_merge_neck(graph, f"a {merge.family} neck whose levels differ in width "
                            f"{list(merge.out_channels)}; necktool's is one width throughout")
    if merge.family != "yunet":
        layer = _first_layer(merge)
        if layer is None:
            same = [p.spec for p in PRESETS.values() if p.spec.family == merge.family and all(
                getattr(p.spec, k) == v for k, v in fields.items() if k != "input_size")]
            default = next((p.spec.first_layer for p in PRESETS.values()
                            if p.spec.family == merge.family), 0)
            layer = same[0].first_layer if same else default
            notes.append(f"first_layer {layer}: the file's node names do not say where the "
                         "neck starts in the authors' yaml (it only names the modules)")
        fields["first_layer"] = layer
    try:
        spec = NeckSpec(merge.family, **fields)
    except NecktoolError as exc:
        raise no_merge_neck(graph, f"a {merge.family} neck necktool cannot build: {exc}") \
            from None
    if graph.image_size is None:
        notes.append(f"the image input is dynamic; figures are at {size[0]}x{size[1]}")
    return spec, notes


def conv_rows(graph: Graph, merge: MergeNeck) -> list[dict[str, Any]]:
    """Per neck Conv node: its level, name, weight and bias tensors, the tensor after its
    norm and activation, its BatchNormalization node (if present), shape and stride."""
    scan = _Scan(graph)
    levels = {s: i for i, s in enumerate(merge.strides)}
    rows = []
    for conv in merge.convs:
        w = graph.const(conv.input[1])
        assert w is not None
        out = conv.output[0]
        norm = next((r for r in graph.readers(out) if r.op_type == "BatchNormalization"), None)
        while (nxt := [r for r in graph.readers(out) if r.op_type != "Shape"]) and \
                len(nxt) <= 2 and all(scan.same_scale_step(r) and r.op_type != "Conv"
                                      for r in nxt):
            out = nxt[-1].output[0]  # through the norm and the activation (SiLU: Mul last)
        rows.append({"level": levels.get(graph.stride(conv.output[0]) or 0, 0),
                     "node": conv.name, "weight": conv.input[1],
                     "bias": conv.input[2] if len(conv.input) > 2 and conv.input[2] else None,
                     "output": out, "norm": norm.name if norm is not None else None,
                     "shape": tuple(int(d) for d in w.shape),
                     "stride": int((attr(conv, "strides") or [1])[0])})
    return rows
