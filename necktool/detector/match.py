"""Load a Concat/Add neck's weights from a detector graph by matching graphs.

necktool's neck for the found spec is exported to ONNX (TorchScript, BatchNorm kept, the
parameters' names kept), and its graph is matched to the detector's neck node for node:
both are reduced to the nodes that carry structure (convs with their weight shape, stride
and groups; Concat in input order; Add; upsample; channel parts of a Split or Slice;
pools), activations, norms and affines by constants folded into the node before them, and
the detector's node for each of necktool's is the one with the same label reading the
matched inputs, from the neck's inputs to its outputs (a choice between equal candidates,
such as a C3's two 1x1 convs on one input, is settled by what follows: the search backs
up when a later node finds no partner). The module path of each matched conv (and its
BatchNorm) comes from the initializer names of necktool's own export.

Weights then load as for the other families: a BatchNorm folded into the detector's conv
loads as the conv's weight and bias with the module's BatchNorm set to the identity (a
conv without a bias takes the shift in the BatchNorm instead); a BatchNormalization node
present in the detector is folded into the conv first.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from necktool.detector.graph import UPSAMPLES, Graph, attr, read_graph
from necktool.detector.merges import MergeNeck, _channel_slice, _Scan, channels
from necktool.errors import WeightsError

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from necktool.detector.neck import DetectorNeck
    from necktool.spec.neck_spec import NeckSpec

_COLLAPSE = frozenset({"Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish",
                       "Clip", "Elu", "Selu", "Identity", "Cast", "BatchNormalization",
                       "Mish", "Dropout", "Tanh"})


@dataclasses.dataclass
class _Node:
    """A node that carries structure: its label, the abstract nodes it reads, and for a
    conv, the Conv node and the BatchNormalization after it (if any)."""

    label: tuple[Any, ...]
    inputs: list[int]
    ordered: bool
    conv: onnx.NodeProto | None = None
    norm: onnx.NodeProto | None = None


class _Abstract:
    """A graph reduced to :class:`_Node` s between given inputs and outputs."""

    def __init__(self, graph: Graph, inputs: list[str], nodes: list[onnx.NodeProto]) -> None:
        self.g = graph
        self.scan = _Scan(graph)
        self.ch = channels(graph)
        self.nodes: list[_Node] = [_Node(("input", i), [], True) for i in range(len(inputs))]
        self.of: dict[str, int] = {t: i for i, t in enumerate(inputs)}
        for node in nodes:
            self._add(node)

    def _add(self, node: onnx.NodeProto) -> None:
        g, op = self.g, node.op_type
        feats = [t for t in node.input if t in self.of]
        if not feats or not node.output or op in ("Shape", "Size"):
            return  # a size computation reads a map's shape, not its values
        consts = [t for t in node.input if t and t not in self.of and g.is_const(t)]
        gate = op == "Mul" and self.scan.source(node) is not None and len(feats) == 2
        if op in _COLLAPSE or gate or (op in ("Mul", "Add", "Sub", "Div") and len(feats) == 1
                                       and len(consts) == len(node.input) - 1):
            src = self.scan.source(node) if gate else feats[0]
            if src in self.of:
                i = self.of[src]
                if op == "BatchNormalization" and self.nodes[i].conv is not None \
                        and self.nodes[i].norm is None:
                    self.nodes[i].norm = node
                self.of[node.output[0]] = i
            return
        if op == "Conv":
            w = g.const(node.input[1])
            if w is None:
                return
            label: tuple[Any, ...] = ("Conv", tuple(int(d) for d in w.shape),
                                      tuple(attr(node, "strides") or [1, 1]),
                                      int(attr(node, "group", 1)),
                                      tuple(attr(node, "dilations") or [1, 1]))
            self._new(label, [feats[0]], node.output[0], conv=node)
        elif op == "Concat":
            self._new(("Concat", len(node.input)), list(node.input), node.output[0])
        elif op in ("Add", "Sum") and len(feats) == len(node.input):
            self._new(("Add", len(feats)), feats, node.output[0], ordered=False)
        elif op in UPSAMPLES:
            self._new(("Up",), [node.input[0]], node.output[0])
        elif op == "Split":
            offset = 0
            sizes = [self.ch.get(t, 0) for t in node.output]
            for out, size in zip(node.output, sizes, strict=True):
                self._new(("Part", offset, size), [node.input[0]], out)
                offset += size
        elif op == "Slice":
            lo, hi = _channel_slice(g, node, self.ch.get(node.input[0]))
            self._new(("Part", lo, hi - lo), [node.input[0]], node.output[0])
        elif op in ("MaxPool", "AveragePool"):
            self._new((op, tuple(attr(node, "kernel_shape") or []),
                       tuple(attr(node, "strides") or [1, 1])), [node.input[0]], node.output[0])
        else:
            self._new(("Other", op), feats, node.output[0])

    def _new(self, label: tuple[Any, ...], inputs: list[str], out: str, *, ordered: bool = True,
             conv: onnx.NodeProto | None = None) -> None:
        if any(t not in self.of for t in inputs):
            return
        self.nodes.append(_Node(label, [self.of[t] for t in inputs], ordered, conv))
        self.of[out] = len(self.nodes) - 1


def identity_variance(eps: float) -> np.float32:
    """The float32 running variance ``v`` with ``float32(v + eps) == 1`` exactly."""
    v = np.float32(1.0 - eps)
    for _ in range(64):
        total = np.float32(v + np.float32(eps))
        if total == 1:
            return v
        v = np.nextafter(v, np.float32(-np.inf) if total > 1 else np.float32(np.inf))
    return np.float32(1.0 - eps)


def _key(node: _Node, ids: list[int]) -> tuple[Any, ...]:
    return (node.label, tuple(ids) if node.ordered else tuple(sorted(ids)))


def match_convs(mine: _Abstract, theirs: _Abstract, mine_out: list[str],
                theirs_out: list[str]) -> dict[int, int]:
    """Abstract node of ``mine`` -> the node of ``theirs`` it matches (see the module
    docstring); raises :class:`WeightsError` when the graphs differ."""
    index: dict[tuple[Any, ...], list[int]] = {}
    for j, node in enumerate(theirs.nodes):
        index.setdefault(_key(node, node.inputs), []).append(j)
    want_out = [(mine.of.get(a), theirs.of.get(b)) for a, b in zip(mine_out, theirs_out,
                                                                   strict=True)]
    order = list(range(len(mine.nodes)))
    mapping: dict[int, int] = {}
    used: set[int] = set()
    limit = max(sys.getrecursionlimit(), 4 * len(order) + 100)
    sys.setrecursionlimit(limit)

    def solve(k: int) -> bool:
        if k == len(order):
            return all(a is not None and mapping.get(a) == b for a, b in want_out)
        node = mine.nodes[order[k]]
        if node.label[0] == "input":
            cands = [node.label[1]] if node.label[1] < len(theirs.nodes) else []
        else:
            cands = index.get(_key(node, [mapping[i] for i in node.inputs]), [])
        for c in cands:
            if c in used:
                continue
            mapping[order[k]] = c
            used.add(c)
            if solve(k + 1):
                return True
            used.discard(c)
            del mapping[order[k]]
        return False

    if not solve(0):
        first = _first_mismatch(mine, index, theirs)
        raise WeightsError(f"{theirs.g.where}: the neck in the file is not built like "
                           f"necktool's ({first})")
    return mapping


def _first_mismatch(mine: _Abstract, index: dict[tuple[Any, ...], list[int]],
                    theirs: _Abstract) -> str:
    labels = {k[0] for k in index}
    for node in mine.nodes:
        if node.label[0] != "input" and node.label not in labels:
            what = node.conv.name if node.conv is not None else node.label[0]
            return f"nothing like its {node.label[0]} {what!r} {list(node.label[1:])}"
    return "the same nodes, connected differently"


def export_neck(model: nn.Module, chans: list[int], sizes: list[tuple[int, int]]
                ) -> onnx.ModelProto:
    """``model`` (a neck) exported with its BatchNorms and parameter names kept."""
    import onnx
    import torch

    from necktool.quiet import quiet

    feats = tuple(torch.zeros(1, c, h, w) for c, (h, w) in zip(chans, sizes, strict=True))
    buf = io.BytesIO()
    was = model.training
    model.eval()
    try:
        with quiet(), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (list(feats),), buf,  # type: ignore[arg-type]
                              dynamo=False, opset_version=17,
                              input_names=[f"c{i}" for i in range(len(feats))],
                              training=torch.onnx.TrainingMode.PRESERVE,
                              do_constant_folding=False)
    finally:
        model.train(was)
    return onnx.load_from_string(buf.getvalue())


def merge_state_dict(graph: Graph, found: DetectorNeck, model: nn.Module) -> dict[str, Any]:
    """A strict state dict for ``model`` (built from ``found.spec``) from the detector's
    Concat/Add neck."""
    assert found.merge is not None
    spec: NeckSpec = model.spec  # type: ignore[assignment]
    sizes = spec.input_sizes(found.spec.input_size)
    return neck_state_dict(graph, found.merge, model, list(spec.in_channels), sizes,
                           spec.label)


def neck_state_dict(graph: Graph, merge: MergeNeck, model: nn.Module, chans: list[int],
                    sizes: list[tuple[int, int]], label: str) -> dict[str, Any]:
    """:func:`merge_state_dict` for any neck module taking ``chans`` maps of ``sizes``."""
    import torch

    mine_graph = read_graph(export_neck(model, chans, sizes), "necktool's neck")
    mine_inputs = [i.name for i in mine_graph.model.graph.input
                   if i.name not in mine_graph.initializers]
    mine_outputs = [o.name for o in mine_graph.model.graph.output]
    mine = _Abstract(mine_graph, mine_inputs, mine_graph.nodes)
    theirs = _Abstract(graph, list(merge.inputs), list(merge.nodes))
    mapping = match_convs(mine, theirs, mine_outputs, list(merge.outputs))
    target = model.state_dict()
    params = set(target)
    state: dict[str, Any] = {}
    for i, j in mapping.items():
        a, b = mine.nodes[i], theirs.nodes[j]
        if a.conv is None or b.conv is None:
            continue
        path = _param_path(mine_graph, a.conv.input[1], params, "weight")
        w = np.asarray(graph.const(b.conv.input[1]), dtype=np.float64)
        bias = np.asarray(graph.const(b.conv.input[2]), dtype=np.float64) \
            if len(b.conv.input) > 2 and b.conv.input[2] else np.zeros(w.shape[0])
        if b.norm is not None:  # a BatchNormalization present in the detector: fold it
            scale, beta, mean, var = (np.asarray(graph.const(t), dtype=np.float64)
                                      for t in b.norm.input[1:5])
            k = scale / np.sqrt(var + float(attr(b.norm, "epsilon", 1e-5)))
            w, bias = w * k.reshape(-1, 1, 1, 1), (bias - mean) * k + beta
        state[f"{path}.weight"] = w
        norm = _param_path(mine_graph, a.norm.input[1], params, "weight") \
            if a.norm is not None else None
        has_bias = f"{path}.bias" in params
        if has_bias:
            state[f"{path}.bias"] = bias
        if norm is not None:
            eps = float(attr(a.norm, "epsilon", 1e-5))  # type: ignore[arg-type]
            ones = np.ones_like(bias)
            state |= {f"{norm}.weight": ones,
                      f"{norm}.bias": np.zeros_like(bias) if has_bias else bias,
                      f"{norm}.running_mean": np.zeros_like(bias),
                      f"{norm}.running_var": np.full_like(bias, identity_variance(eps))}
        elif not has_bias and np.any(bias != 0):
            raise WeightsError(f"{graph.where}: conv {b.conv.name!r} has a bias; necktool's "
                               f"{path} has none and no norm to take it")
    out: dict[str, Any] = {}
    for key, value in state.items():
        want = target[key]
        tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if tuple(tensor.shape) != tuple(want.shape):
            raise WeightsError(f"{graph.where}: the file's neck does not fit {label}: "
                               f"{key} is {tuple(tensor.shape)} in the file, "
                               f"{tuple(want.shape)} in the neck")
        out[key] = tensor
    for key in target:
        if key.endswith("num_batches_tracked"):
            out[key] = target[key]
    missing = [k for k in target if k not in out]
    if missing:
        raise WeightsError(f"{graph.where}: the file's neck does not fit {label}: "
                           f"nothing in the file for {missing[0]} (and {len(missing) - 1} more)")
    return out


def _param_path(graph: Graph, tensor: str, params: set[str], leaf: str) -> str:
    """The module path of a parameter of necktool's own export (``a.b.weight`` -> ``a.b``)."""
    # the name the node reads first: the exporter may alias equal parameters (a fresh
    # neck's BatchNorms) to one initializer through Identity nodes named after each
    name = tensor if tensor in params else graph.const_name(tensor) or tensor
    if name not in params or not name.endswith(f".{leaf}"):
        raise WeightsError(f"necktool's neck exported a parameter as {name!r}, not by its "
                           "state-dict name; cannot place the file's weights")
    return name[: -len(leaf) - 1]
