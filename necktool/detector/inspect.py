"""``necktool inspect DET.onnx``: the neck inside a detector file, what it costs and what
share of the detector that is (torch-free).

Costs are conv multiply-adds (MACs; fvcore's convention counts one as one flop) at the
graph's static image size, else at :data:`~necktool.detector.neck.DEFAULT_SIZE`: each
Conv contributes ``Cout * ceil(H/s) * ceil(W/s) * (Cin / groups) * kh * kw`` for its
output stride ``s`` (the ``ceil`` is exact for the ``k // 2``-padded convs detectors use).
Parameters are the elements of the tensors the convs read (a tensor two convs share, as in
a deduplicated file, counted once).

The detector is also counted by part: the backbone (the convs the neck's inputs are
computed from), the neck, and the head (every other conv), at ``--input-size`` when given
(the graph's static size otherwise), so that each family's published figure can be
reproduced: multiply-adds at the authors' size, or twice that (ultralytics' "FLOPs").
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import TYPE_CHECKING, Any

from necktool.detector.graph import Graph, read_graph
from necktool.detector.loading import load_detector
from necktool.detector.neck import DEFAULT_SIZE, DetectorNeck, find_in_graph
from necktool.errors import InputError
from necktool.report import Block, Note, channels_text, share, size_text, table
from necktool.spec.registry import reproduce_command
from necktool.units import GFLOPS, UNIT_SHORT

if TYPE_CHECKING:
    import onnx


@dataclasses.dataclass(frozen=True)
class Costs:
    """Conv MACs and parameters of a set of Conv nodes."""

    macs: int
    params: int
    convs: int

    def to_dict(self) -> dict[str, int]:
        return {"conv_macs": self.macs, "params": self.params, "convs": self.convs}


def conv_costs(graph: Graph, size: tuple[int, int],
               names: set[str] | None = None, nodes: set[int] | None = None) -> Costs:
    """MACs and parameters of the graph's Conv nodes (only those named in ``names``, or
    whose ``id`` is in ``nodes``)."""
    macs, count = 0, 0
    seen: set[str] = set()
    for node in graph.convs:
        if names is not None and node.name not in names:
            continue
        if nodes is not None and id(node) not in nodes:
            continue
        w = graph.const(node.input[1]) if len(node.input) > 1 else None
        s = graph.strides.get(node.output[0])
        if w is None or w.ndim != 4:
            continue
        count += 1
        if s is not None:
            h = math.ceil(size[0] / s[0])
            wd = math.ceil(size[1] / s[1])
            macs += int(w.shape[0]) * h * wd * int(w.shape[1]) * int(w.shape[2] * w.shape[3])
        for t in node.input[1:3]:
            if t:
                seen.add(graph.const_name(t) or t)
    arrays = [graph.const(t) for t in seen]
    params = sum(int(a.size) for a in arrays if a is not None)
    return Costs(macs, params, count)


def detector_parts(graph: Graph, neck: DetectorNeck) -> dict[str, set[int]]:
    """The graph's Conv nodes (by ``id``) split into ``backbone`` (what the neck's inputs
    are computed from), ``neck`` and ``head`` (every other conv: what reads the levels)."""
    neck_ids = {id(n) for n in graph.convs if n.name in {c.node for c in neck.convs}}
    if neck.merge is not None:
        neck_ids = {id(n) for n in neck.merge.convs}
    seen: set[int] = set()
    stack = list(neck.inputs)
    while stack:
        node = graph.node_of(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(t for t in node.input if t)
    backbone = {id(n) for n in graph.convs if id(n) in seen and id(n) not in neck_ids}
    head = {id(n) for n in graph.convs} - backbone - neck_ids
    return {"backbone": backbone, "neck": neck_ids, "head": head}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectorInspect:
    """The neck of a detector file: what it is, where it sits, what it costs."""

    path: str
    neck: DetectorNeck  # its spec holds the size the figures are at
    static: bool
    opset: int | None
    neck_costs: Costs
    graph_costs: Costs
    command: str
    parts: dict[str, Costs] = dataclasses.field(default_factory=dict)
    given_size: bool = False  # --input-size chose the size

    @property
    def presets(self) -> tuple[str, ...]:
        return self.neck.presets

    def to_dict(self) -> dict[str, Any]:
        n, spec = self.neck, self.neck.spec
        extra = spec.level_names[spec.num_inputs:]
        return {
            "path": self.path,
            "kind": "detector",
            "family": spec.family,
            "in_channels": list(spec.in_channels),
            "out_channels": spec.out_channels,
            "level_channels": list(spec.level_channels),
            "num_outs": spec.num_levels,
            "levels": spec.level_names,
            "strides": list(n.strides),
            "extra_levels": {"levels": extra,
                             "extra_convs": str(spec.extra_convs) if extra else None},
            "norm": str(spec.norm),
            "norm_state": n.norm_state,
            "presets": list(self.presets),
            "inputs": list(n.inputs),
            "outputs": list(n.outputs),
            "opset": self.opset,
            "input_size": list(self.neck.spec.input_size),
            "static": self.static,
            "unit": "conv multiply-adds (MACs); " + UNIT_SHORT,
            "neck": self.neck_costs.to_dict(),
            "graph": self.graph_costs.to_dict(),
            "neck_share": {"conv_macs": _ratio(self.neck_costs.macs, self.graph_costs.macs),
                           "params": _ratio(self.neck_costs.params, self.graph_costs.params)},
            "parts": {k: c.to_dict() for k, c in self.parts.items()},
            "command": self.command,
            "export_command": f"necktool export --weights {self.path} --onnx",
            "verify_command": f"necktool verify --weights {self.path}",
            "config": spec.to_dict(),
            "convs": [c.to_dict() for c in n.convs],
            "notes": list(n.notes),
        }

    def blocks(self) -> list[Block]:
        n, spec = self.neck, self.neck.spec
        levels = ", ".join(f"{name} (/{s})" for name, s in zip(spec.level_names, n.strides,
                                                                strict=True))
        if spec.num_extra_levels:
            levels += f"; {spec.num_extra_levels} extra ({spec.extra_convs})"
        state = {"none": "none (convs with bias)", "folded": f"{spec.norm} folded into the "
                 "convs", "present": f"{spec.norm} (norm nodes in the graph)"}[n.norm_state]
        nc, gc = self.neck_costs, self.graph_costs
        how = "--input-size" if self.given_size else "static" if self.static else \
            "dynamic input: default"
        size = f"{size_text(self.neck.spec.input_size)} ({how})"
        rows = [
            ("family", f"{spec.family}: {spec.info.description}"),
            ("in_channels", ",".join(map(str, spec.in_channels))),
            ("out_channels", channels_text(spec.level_channels)),
            ("levels", levels),
            ("norm", state),
            ("act", str(spec.act) + (f" ({spec.leaky_slope:g})" if str(spec.act) ==
                                     "leaky_relu" else "")),
            ("presets", ", ".join(self.presets) or "(none matches exactly)"),
            ("enters", ", ".join(n.inputs)),
            ("leaves", ", ".join(n.outputs)),
            ("size", size),
            ("neck MACs", f"{nc.macs / GFLOPS:.4f} G of {gc.macs / GFLOPS:.4f} G "
             f"({share(nc.macs, gc.macs)}), {nc.convs} of {gc.convs} convs"),
            ("neck params", f"{nc.params:,} of {gc.params:,} ({share(nc.params, gc.params)})"),
            *((f"{part} MACs, params", f"{c.macs / GFLOPS:.4f} G ({share(c.macs, gc.macs)}), "
               f"{c.params:,} ({share(c.params, gc.params)}), {c.convs} convs")
              for part, c in self.parts.items() if part != "neck"),
            ("reproduce", self.command),
            ("export", f"necktool export --weights {self.path} --onnx"),
            ("verify", f"necktool verify --weights {self.path}"),
        ]
        out: list[Block] = [table(f"{self.path} (detector, opset {self.opset})",
                                  ["field", "value"], rows, show_header=False)]
        out.extend(Note(x) for x in n.notes)
        out.append(Note("MACs: conv multiply-adds (" + UNIT_SHORT + ")"))
        return out


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def has_necktool_metadata(model: onnx.ModelProto) -> bool:
    from necktool.artifact.metadata import META

    return any(p.key.startswith(META) for p in model.metadata_props)


def inspect_model(model: onnx.ModelProto, path: str,
                  input_size: tuple[int, int] | None = None) -> DetectorInspect:
    """Find the neck of ``model`` and cost it (see the module docstring), at
    ``input_size`` when given, else at the graph's static size or the default."""
    where = f"{path!r}"
    graph = read_graph(model, where)
    try:
        neck = find_in_graph(graph)
    except InputError as exc:  # say first that necktool did not write it
        text = str(exc)
        if not text.startswith(f"{where}: no neck found: "):
            raise
        raise InputError(f"{where} carries no necktool metadata (not written by 'necktool "
                         "export'), and no neck was found in its graph: "
                         + text.removeprefix(f"{where}: no neck found: ")) from None
    size = input_size or graph.image_size or DEFAULT_SIZE
    if input_size is not None:
        neck.spec.check_size(input_size)
        neck = dataclasses.replace(neck, spec=neck.spec.replace(input_size=input_size),
                                   notes=tuple(n for n in neck.notes
                                               if not n.startswith("the image input is dyn")))
    names = {c.node for c in neck.convs}
    parts = {k: conv_costs(graph, size, nodes=v) for k, v in
             detector_parts(graph, neck).items()}
    base = neck.presets[0] if neck.presets else None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    command = reproduce_command(neck.spec, base, with_size=True)
    return DetectorInspect(path=path, neck=neck, static=graph.image_size is not None, opset=opset,
                           neck_costs=parts["neck"] if neck.merge is not None else
                           conv_costs(graph, size, names),
                           graph_costs=conv_costs(graph, size), command=command, parts=parts,
                           given_size=input_size is not None)


def inspect_detector(path: str | os.PathLike[str],
                     input_size: tuple[int, int] | None = None) -> DetectorInspect | None:
    """The neck of a detector ONNX file, or ``None`` when necktool wrote the file (its
    metadata answers instead: :func:`necktool.detector.identify.inspect_file`).

    Raises:
        InputError: unreadable or hostile file, or no recognisable neck (one line saying
            what the graph holds).
    """
    model = load_detector(path)
    if has_necktool_metadata(model):
        return None
    return inspect_model(model, str(pathlib.Path(path)), input_size)
