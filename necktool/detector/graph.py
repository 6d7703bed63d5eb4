"""A detector graph as necktool reads it: who makes and reads each tensor, the constants,
and every feature map's stride relative to the image (torch-free).

Strides are reasoned node by node, so they hold for static and dynamic inputs alike: a
Conv or pool multiplies its input's stride by its own, ``Resize``/``Upsample`` divides it
by a constant scale, or, when the output size is computed (``Shape -> Gather ->
Concat``), takes the stride of the tensor whose shape it was computed from; a strided
``Slice`` on the spatial axes multiplies it; element-wise ops keep it; anything that
flattens the map (pooling to 1x1, ``Flatten``, ``Gemm``) ends it. Names are never read.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from necktool.errors import InputError, first_line

if TYPE_CHECKING:
    import numpy as np
    import onnx

Stride = tuple[Fraction, Fraction]
#: ops that keep a feature map's stride (element-wise, norms, activations, casts)
KEEPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Clip", "Tanh", "Elu", "Selu", "Softplus", "Mish", "Identity", "Cast",
    "BatchNormalization", "InstanceNormalization", "GroupNormalization", "Concat",
    "Dropout", "Pow", "Sqrt", "Neg", "Abs", "Exp", "Max", "Min", "Where", "Softmax",
})
#: single-input ops a conv's output passes through on its way to the next stage
POINTWISE = frozenset({"Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish",
                       "Clip", "Elu", "Selu", "Identity", "BatchNormalization",
                       "GroupNormalization", "InstanceNormalization", "Reshape", "Mish",
                       "Dropout"})
POOLS = frozenset({"Conv", "MaxPool", "AveragePool", "ConvTranspose"})
UPSAMPLES = frozenset({"Resize", "Upsample"})
_SEARCH_LIMIT = 64  # nodes walked up a size computation to find its Shape


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclasses.dataclass
class Graph:
    """A topologically ordered view of an ONNX graph.

    Attributes:
        model: The model.
        nodes: Its nodes in topological order.
        producer: Tensor name -> index in ``nodes`` of the node that makes it.
        consumers: Tensor name -> indices of the nodes that read it.
        image: The image input's name (the first rank-4 graph input).
        image_size: ``(H, W)`` when the image input is static, else ``None``.
        strides: Tensor name -> stride (per axis) for every feature map.
    """

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]
    producer: dict[str, int]
    consumers: dict[str, list[int]]
    image: str
    image_size: tuple[int, int] | None
    strides: dict[str, Stride]
    initializers: dict[str, onnx.TensorProto]
    where: str = "the ONNX file"

    @functools.cached_property
    def _constants(self) -> dict[str, onnx.TensorProto]:
        out = dict(self.initializers)
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                value = attr(node, "value")
                if value is not None:
                    out[node.output[0]] = value
        return out

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (an initializer, a Constant node's value, through
        Identity nodes), or ``None`` when it is computed."""
        from onnx import numpy_helper

        seen = 0
        while name not in self._constants and name in self.producer and seen < 8:
            node = self.nodes[self.producer[name]]
            if node.op_type != "Identity":
                return None
            name, seen = node.input[0], seen + 1
        tensor = self._constants.get(name)
        if tensor is None:
            return None
        try:
            return numpy_helper.to_array(tensor)
        except Exception as exc:
            raise InputError(f"{self.where}: tensor {name[:80]!r} does not hold the data its "
                             f"shape {list(tensor.dims)} needs ({first_line(exc, 100)})") \
                from None

    def is_const(self, name: str) -> bool:
        return self.const_name(name) is not None

    def const_name(self, name: str) -> str | None:
        """The constant ``name`` resolves to through Identity nodes, or ``None``."""
        for _ in range(8):
            if name in self._constants:
                return name
            node = self.nodes[self.producer[name]] if name in self.producer else None
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return None

    def node_of(self, tensor: str) -> onnx.NodeProto | None:
        i = self.producer.get(tensor)
        return None if i is None else self.nodes[i]

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        return [self.nodes[i] for i in self.consumers.get(tensor, [])]

    def features(self, node: onnx.NodeProto) -> list[str]:
        """The inputs of ``node`` that are feature maps (have a stride)."""
        return [t for t in node.input if t in self.strides]

    def stride(self, tensor: str) -> int | None:
        """The (square, whole) stride of a feature map, else ``None``."""
        s = self.strides.get(tensor)
        if s is None or s[0] != s[1] or s[0].denominator != 1:
            return None
        return int(s[0])

    @property
    def convs(self) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if n.op_type == "Conv"]


def _order(model: onnx.ModelProto, where: str) -> list[onnx.NodeProto]:
    """Kahn's topological sort; a cycle or a tensor nothing makes is an InputError."""
    g = model.graph
    known = {i.name for i in g.initializer} | {i.name for i in g.input} | {""}
    made: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for out in node.output:
            if out:
                made[out] = i
    for node in g.node:
        for name in node.input:
            if name not in known and name not in made:
                raise InputError(f"{where}: node {node.name[:60]!r} ({node.op_type}) reads "
                                 f"{name[:80]!r}, which no node, input or initializer "
                                 "provides (a missing initializer?)")
    waiting = [sum(1 for t in set(n.input) if t in made) for n in g.node]
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(g.node):
        for name in set(node.input):
            if name in made:
                readers.setdefault(name, []).append(i)
    ready = deque(i for i, w in enumerate(waiting) if w == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for out in g.node[i].output:
            for j in readers.get(out, []):
                waiting[j] -= 1
                if waiting[j] == 0:
                    ready.append(j)
    if len(order) != len(g.node):
        stuck = next(g.node[i] for i, w in enumerate(waiting) if w > 0)
        raise InputError(f"{where}: the graph has a cycle (node {stuck.name[:60]!r}, "
                         f"{stuck.op_type}, waits on its own output); an ONNX graph must be "
                         "acyclic")
    return [g.node[i] for i in order]


def _image_input(model: onnx.ModelProto, where: str) -> tuple[str, tuple[int, int] | None]:
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) == 4:
            h, w = (d.dim_value if d.HasField("dim_value") else 0 for d in dims[2:])
            return inp.name, ((h, w) if h > 0 and w > 0 else None)
    raise InputError(f"{where}: no image input (a rank-4 [N, C, H, W] graph input); inputs: "
                     f"{', '.join(i.name[:40] for i in model.graph.input[:4]) or 'none'}")


def _shape_source(graph: Graph, tensor: str, skip: str) -> str | None:
    """The feature map whose Shape an output size ``tensor`` is computed from: of the
    Shape nodes the computation reads (never walking past one), the finest map other than
    ``skip`` (the map being resized), within a few dozen nodes."""
    queue, seen, found = deque([tensor]), 0, []
    while queue and seen < _SEARCH_LIMIT:
        node = graph.node_of(queue.popleft())
        seen += 1
        if node is None:
            continue
        if node.op_type == "Shape":
            if node.input[0] in graph.strides and node.input[0] != skip:
                found.append(node.input[0])
            continue
        queue.extend(t for t in node.input if t and t not in graph.strides)
    return min(found, key=lambda t: graph.strides[t][0]) if found else None


def _spatial(values: Any) -> tuple[Fraction, Fraction] | None:
    flat = [float(v) for v in list(values.reshape(-1))] if values is not None else []
    if len(flat) != 4 or min(flat[2:]) <= 0:
        return None
    return Fraction(flat[2]).limit_denominator(64), Fraction(flat[3]).limit_denominator(64)


def _constant_tail(graph: Graph, tensor: str) -> Any:
    """A Resize's ``sizes`` as 4 numbers when its spatial part is constant: a constant, or
    a Concat whose last input is the constant ``[H, W]`` (the batch and channels taken
    from the map's Shape)."""
    import numpy as np

    const = graph.const(tensor)
    if const is not None:
        return const
    node = graph.node_of(tensor)
    if node is not None and node.op_type == "Concat" and node.input:
        tail = graph.const(node.input[-1])
        if tail is not None and tail.size == 2:
            return np.concatenate([[1, 1], tail.reshape(-1)])
    return None


def _resize_stride(graph: Graph, node: onnx.NodeProto, s: Stride) -> Stride | None:
    data = node.input[0]
    if node.op_type == "Upsample":
        scales = node.input[1] if len(node.input) > 1 else ""
        const = graph.const(scales) if scales else None
        if const is None and attr(node, "scales") is not None:  # opset 7
            import numpy as np

            const = np.asarray(attr(node, "scales"))
        sizes = ""
    else:
        scales = node.input[2] if len(node.input) > 2 else ""
        sizes = node.input[3] if len(node.input) > 3 else ""
        const = graph.const(scales) if scales else None
        if const is not None and const.size == 0:
            const = None
    factor = _spatial(const)
    if factor is not None:
        return s[0] / factor[0], s[1] / factor[1]
    size = _spatial(_constant_tail(graph, sizes)) if sizes else None
    if size is not None and graph.image_size is not None:
        h, w = graph.image_size
        return Fraction(h) / size[0], Fraction(w) / size[1]
    ref = _shape_source(graph, sizes or scales, data) if (sizes or scales) else None
    # a size computed from the image's own (an exporter's symbolic arithmetic) is not read
    return graph.strides.get(ref) if ref and ref != graph.image else None


def _slice_stride(graph: Graph, node: onnx.NodeProto, s: Stride) -> Stride:
    axes = graph.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    steps = graph.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if steps is None:
        return s
    axes_list = [int(a) % 4 for a in (axes.reshape(-1) if axes is not None
                                      else range(steps.size))]
    out = list(s)
    for a, step in zip(axes_list, steps.reshape(-1), strict=False):
        if a in (2, 3) and int(step) > 0:
            out[a - 2] = out[a - 2] * int(step)
    return out[0], out[1]


def _out_stride(graph: Graph, node: onnx.NodeProto) -> Stride | None:
    feats = graph.features(node)
    if not feats:
        return None
    s = graph.strides[feats[0]]
    op = node.op_type
    if op in POOLS:
        st = attr(node, "strides") or [1, 1]
        return s[0] * int(st[0]), s[1] * int(st[-1])
    if op in UPSAMPLES:
        return _resize_stride(graph, node, s) if feats[0] == node.input[0] else None
    if op == "Slice":
        return _slice_stride(graph, node, s) if feats[0] == node.input[0] else None
    if op == "Reshape":  # a GroupNorm's group view and its restoring reshape keep it
        readers = graph.readers(node.output[0])
        if feats[0] == node.input[0] and readers and all(
                r.op_type == "InstanceNormalization" for r in readers):
            return s
        ref = _shape_source(graph, node.input[1], "") if len(node.input) > 1 else None
        return graph.strides.get(ref) if ref else None
    if op == "Split":  # on the channel axis (C2f, ShuffleNet units): every part keeps it
        return s if int(attr(node, "axis", 0)) in (1, -3) else None
    if op in KEEPS:  # an add of a map and an upsample to its size is at the map's stride
        plain = [t for t in feats if (graph.node_of(t) is None
                                      or graph.node_of(t).op_type not in UPSAMPLES)]  # type: ignore[union-attr]
        return min((graph.strides[t] for t in plain or feats), key=lambda st: st[0])
    return None


def _reshape_stride(graph: Graph, node: onnx.NodeProto) -> Stride | None:
    """A Reshape back to ``[N, C, H, W]`` from a view of no known stride (a channel
    shuffle's ``view -> transpose -> view``): its constant ``H, W`` against a static image,
    or the map whose Shape its target shape is computed from."""
    shape = graph.const(node.input[1])
    if shape is not None:
        flat = [int(v) for v in shape.reshape(-1)]
        if len(flat) == 4 and min(flat[2:]) > 0 and graph.image_size is not None:
            h, w = graph.image_size
            return Fraction(h, flat[2]), Fraction(w, flat[3])
        return None
    ref = _shape_source(graph, node.input[1], "")
    return graph.strides.get(ref) if ref and ref != graph.image else None


def read_graph(model: onnx.ModelProto, where: str = "the ONNX file") -> Graph:
    """Order the nodes, find the image input and work out every feature map's stride.

    Raises:
        InputError: a cycle, a tensor nothing provides, or no rank-4 image input.
    """
    nodes = _order(model, where)
    image, size = _image_input(model, where)
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = i
        for name in dict.fromkeys(node.input):
            if name:
                consumers.setdefault(name, []).append(i)
    inits = {t.name: t for t in model.graph.initializer}
    graph = Graph(model, nodes, producer, consumers, image, size,
                  {image: (Fraction(1), Fraction(1))}, inits, where)
    if size is not None:  # more static maps (a neck alone): strides relative to the first
        for inp in model.graph.input:
            dims = inp.type.tensor_type.shape.dim
            if inp.name in inits or inp.name == image or len(dims) != 4:
                continue
            h, w = (d.dim_value if d.HasField("dim_value") else 0 for d in dims[2:])
            if h > 0 and w > 0:
                graph.strides[inp.name] = (Fraction(size[0], h), Fraction(size[1], w))
    for node in nodes:
        if node.op_type in ("Shape", "Constant", "Size"):
            continue
        s = _out_stride(graph, node)
        if s is None and node.op_type == "Reshape" and len(node.input) > 1:
            s = _reshape_stride(graph, node)  # a ShuffleNet unit's channel shuffle
        for out in node.output if node.op_type == "Split" else node.output[:1]:
            if s is not None and out:
                graph.strides[out] = s
    return graph
