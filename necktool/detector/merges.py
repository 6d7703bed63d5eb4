"""Find a neck that merges its levels by Concat or Add (YuNet's TFPN, YOLO5Face's C3 PAN,
the YOLOv8 C2f PAN and the yolov8-lite hybrid) inside a detector graph (torch-free).

The evidence, in order:

1. **Cross-scale merges**: a ``Concat`` on the channel axis or an ``Add`` of feature maps
   at one stride, exactly one of whose inputs comes (back through stride-1 convs and
   activations; SiLU is a ``Sigmoid`` and a ``Mul`` on the same input) from a map at
   twice the stride through an upsample (top-down), or at half the stride through a
   stride-2 conv (bottom-up), and every other input from the same scale. Same-scale
   Concats (C3, C2f and its ``Split``, SPP/SPPF, the stem, ShuffleNet units) cross no
   scale, and a ShuffleNet downsampling unit or a strided stem crosses on every input:
   neither is a merge.
2. **Levels**: the top-down merges chain coarse to fine over strides that double level to
   level; the bottom-up merges, when there are any, sit at every level but the finest.
3. **Where the neck ends**: a level's output is what the next level's stride-2 conv reads
   (bottom-up families) or what the next finer level's upsample reads (top-down only);
   the remaining level's output is found by symmetry: after its last merge, the tensor
   as many convs deep as the other levels' block and read by the same prediction branch
   (op, kernel, stride, groups, width) as theirs.
4. **Where it starts**: a top-down merge's same-scale input is a backbone output; the
   coarsest is what the first upsample reads, less the block in front of it (YuNet's
   DPU) or the lateral 1x1 conv (YOLO5Face, yolov8-lite).
5. **The family** from the merges and the block after them: Add top-down and nothing
   bottom-up is YuNet; Concat both ways is YOLO5Face (C3: two 1x1 convs read the merge)
   or YOLOv8 (C2f: a ``Split`` of one 1x1 conv); Concat top-down and Add bottom-up with
   depthwise blocks is yolov8-lite.

Names are never read.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from typing import TYPE_CHECKING, Any

from necktool.detector.graph import POINTWISE, UPSAMPLES, Graph, attr
from necktool.errors import InputError

if TYPE_CHECKING:
    import onnx


_WALK_LIMIT = 64  # nodes walked back from a merge input to the scale it came from
_BLOCK_LIMIT = 4096  # nodes searched forward from a merge for the level's output
_CROSS_CONVS = 1  # convs between a merge and its upsample or stride-2 conv (a DW block's 1x1)
_GATES = frozenset({"Sigmoid", "HardSigmoid", "Tanh"})  # x * gate(x): SiLU, HardSwish...


@dataclasses.dataclass(frozen=True)
class Merge:
    """One cross-scale merge.

    Attributes:
        node: The Concat or Add node.
        stride: The stride it merges at.
        kind: ``td`` (an upsample of the coarser level) or ``bu`` (a stride-2 conv of the
            finer level).
        cross: The merge input that crossed scale.
        partner: The same-scale input.
        via: The upsample or stride-2 conv that crossed.
        source: What ``via`` reads (the other level's tensor).
    """

    node: onnx.NodeProto
    stride: int
    kind: str
    cross: str
    partner: str
    via: onnx.NodeProto
    source: str

    @property
    def op(self) -> str:
        return "concat" if self.node.op_type == "Concat" else "add"

    @property
    def output(self) -> str:
        return self.node.output[0]


@dataclasses.dataclass(frozen=True)
class MergeNeck:
    """What the graph says about a Concat/Add neck (the spec is made from these facts).

    Attributes:
        family: ``yunet``, ``yolo5face``, ``yolov8`` or ``yolov8_lite``.
        inputs, outputs: The backbone tensors entering and the level tensors leaving it,
            finest first.
        strides: The levels' strides, finest first.
        in_channels, out_channels: Channels of each input and output.
        repeats: Bottlenecks per C3/C2f block (1 for the single-unit blocks).
        act: The activation after the convs (``silu``, ``relu``, ``leaky_relu``,
            ``hardswish``, ``none``).
        laterals: Whether the top-down path starts with lateral 1x1 convs.
        merges: The merges, top-down first.
        convs: The neck's Conv nodes, in graph order.
        nodes: Every node of the neck, in graph order.
    """

    family: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    strides: tuple[int, ...]
    in_channels: tuple[int, ...]
    out_channels: tuple[int, ...]
    repeats: int
    act: str
    laterals: bool
    merges: tuple[Merge, ...]
    convs: tuple[onnx.NodeProto, ...]
    nodes: tuple[onnx.NodeProto, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "strides": list(self.strides),
                "in_channels": list(self.in_channels),
                "out_channels": list(self.out_channels), "repeats": self.repeats,
                "act": self.act, "laterals": self.laterals,
                "merges": [{"node": m.node.name, "stride": m.stride, "kind": m.kind,
                            "op": m.op} for m in self.merges]}


def _inferred_channels(graph: Graph) -> dict[str, int]:
    """Channels of the rank-4 tensors ONNX shape inference can tell."""
    from onnx import shape_inference

    try:
        model = shape_inference.infer_shapes(graph.model)
    except Exception:  # a graph the inference cannot follow: propagation alone
        return {}
    found = {}
    g = model.graph
    for vi in [*g.value_info, *g.input, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
            found[vi.name] = int(dims[1].dim_value)
    return found


def channels(graph: Graph) -> dict[str, int]:
    """Tensor -> channels for the feature maps whose channels the graph fixes: convs' weight
    shapes carried through element-wise ops, resizes, pools, Concat (sum) and Split, and
    where that stops (a channel shuffle's reshapes), ONNX shape inference."""
    out: dict[str, int] = {}
    inferred = _inferred_channels(graph)
    for node in graph.nodes:
        for t in node.output:
            if t in inferred:
                out[t] = inferred[t]
        feats = [t for t in node.input if t in graph.strides]
        if not node.output or not node.output[0]:
            continue
        op = node.op_type
        if op in ("Conv", "ConvTranspose") and len(node.input) > 1:
            w = graph.const(node.input[1])
            if w is not None and w.ndim == 4:
                out[node.output[0]] = int(w.shape[0] if op == "Conv" else
                                          w.shape[1] * int(attr(node, "group", 1)))
        elif op == "Concat" and int(attr(node, "axis", 0)) in (1, -3):
            parts = [out.get(t) for t in node.input]
            if parts and all(p is not None for p in parts):
                out[node.output[0]] = sum(parts)  # type: ignore[arg-type]
        elif op == "Split" and feats and int(attr(node, "axis", 0)) in (1, -3):
            for t, size in zip(node.output, _split_sizes(graph, node, out.get(feats[0])),
                               strict=False):
                out[t] = size
        elif op == "Slice" and feats:
            lo, hi = _channel_slice(graph, node, out.get(feats[0]))
            if hi > lo:
                out[node.output[0]] = hi - lo
            elif feats[0] in out:
                out[node.output[0]] = out[feats[0]]
        elif feats and feats[0] in out and node.output[0] in graph.strides:
            out[node.output[0]] = out[feats[0]]
    return out


def _split_sizes(graph: Graph, node: onnx.NodeProto, total: int | None) -> list[int]:
    sizes = attr(node, "split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        const = graph.const(node.input[1])
        sizes = None if const is None else [int(v) for v in const.reshape(-1)]
    if sizes is None and total is not None:
        n = len(node.output)
        sizes = [total // n] * n
    return [int(s) for s in sizes or []]


def _channel_slice(graph: Graph, node: onnx.NodeProto, total: int | None) -> tuple[int, int]:
    """``(start, end)`` of a Slice on the channel axis, else ``(0, 0)``."""
    if len(node.input) < 3:
        return 0, 0
    starts, ends = graph.const(node.input[1]), graph.const(node.input[2])
    axes = graph.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if starts is None or ends is None:
        return 0, 0
    axis_list = [int(a) for a in (axes.reshape(-1) if axes is not None
                                  else range(starts.size))]
    for a, s, e in zip(axis_list, starts.reshape(-1), ends.reshape(-1), strict=False):
        if a in (1, -3):
            end = int(e) if total is None else min(int(e), total)
            return int(s), end
    return 0, 0


class _Scan:
    """Walks over a graph read by :func:`necktool.detector.graph.read_graph`."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.index = {id(n): i for i, n in enumerate(graph.nodes)}
        self.ch = channels(graph)

    def source(self, node: onnx.NodeProto) -> str | None:
        """The one feature map a node computes from, seeing ``x * gate(x)`` as a function
        of ``x``; ``None`` when it reads two different maps."""
        feats = list(dict.fromkeys(t for t in node.input if t in self.g.strides))
        if len(feats) == 1:
            return feats[0]
        if node.op_type == "Mul" and len(feats) == 2:
            for x, gate in (feats, feats[::-1]):
                made = self.g.node_of(gate)
                if made is not None and made.op_type in _GATES and made.input[0] == x:
                    return x
        return None

    def same_scale_step(self, node: onnx.NodeProto) -> bool:
        """A node a level's map passes through unchanged in scale: an activation, a norm,
        an affine by constants, a stride-1 conv."""
        op = node.op_type
        if op == "Conv":
            return list(attr(node, "strides") or [1, 1]) == [1, 1]
        if op == "Mul":
            return self.source(node) is not None
        if op in POINTWISE or op in _GATES or op in ("Add", "Sub", "Div"):
            return len(self.g.features(node)) == 1
        return False

    def crossing(self, tensor: str) -> tuple[onnx.NodeProto, str, int] | None:
        """Back from ``tensor`` through same-scale steps: the node where the scale changes,
        the tensor it reads and the convs passed on the way, or ``None`` when the walk meets
        anything else first (a Concat, a Split, an Add of two maps)."""
        g = self.g
        convs = 0
        for _ in range(_WALK_LIMIT):
            node = g.node_of(tensor)
            if node is None:
                return None
            src = self.source(node)
            if src is None:
                return None
            if g.strides.get(node.output[0]) != g.strides.get(src):
                return node, src, convs
            if not self.same_scale_step(node):
                return None
            convs += node.op_type == "Conv"
            tensor = src
        return None

    def back_pointwise(self, tensor: str) -> onnx.NodeProto | None:
        """The node making ``tensor``, skipping activations and norms."""
        for _ in range(16):
            node = self.g.node_of(tensor)
            if node is None or node.op_type == "Conv" or not self.same_scale_step(node):
                return node
            src = self.source(node)
            if src is None:
                return node
            tensor = src
        return None

    # -- forward from a merge ----------------------------------------------------------
    def block(self, start: str, stride: Any) -> list[onnx.NodeProto]:
        """Nodes reachable forward from ``start`` without changing scale, in graph order."""
        g = self.g
        seen: set[int] = set()
        queue = deque([start])
        found: list[onnx.NodeProto] = []
        while queue and len(found) < _BLOCK_LIMIT:
            t = queue.popleft()
            for r in g.readers(t):
                if id(r) in seen or r.op_type == "Shape" or not r.output:
                    continue
                if g.strides.get(r.output[0]) != stride:
                    continue
                seen.add(id(r))
                found.append(r)
                queue.extend(o for o in r.output if o)
        return sorted(found, key=lambda n: self.index[id(n)])

    def depths(self, start: str, stride: Any) -> dict[str, int]:
        """Tensor -> convs on the longest path from ``start`` to it (same scale)."""
        depth = {start: 0}
        for node in self.block(start, stride):
            before = [depth[t] for t in node.input if t in depth]
            if not before:
                continue
            here = max(before) + (1 if node.op_type == "Conv" else 0)
            for o in node.output:
                if o:
                    depth[o] = here
        return depth

    def conv_depth(self, start: str, end: str) -> int | None:
        return self.depths(start, self.g.strides.get(start)).get(end)

    def signature(self, tensor: str, skip: set[int]) -> tuple[tuple[Any, ...], ...]:
        """What reads ``tensor`` (but the nodes in ``skip``): op, kernel, stride, groups,
        width; the shape of a prediction branch."""
        sig: list[tuple[Any, ...]] = []
        for r in self.g.readers(tensor):
            if id(r) in skip or r.op_type == "Shape":
                continue
            if r.op_type == "Conv":
                w = self.g.const(r.input[1]) if len(r.input) > 1 else None
                shape = (int(w.shape[0]), *map(int, w.shape[2:])) if w is not None else ()
                groups = int(attr(r, "group", 1))  # the width in is the level's own
                sig.append(("Conv", shape, tuple(attr(r, "strides") or [1, 1]),
                            "depthwise" if groups > 1 else groups))
            else:
                sig.append((r.op_type,))
        return tuple(sorted(sig, key=repr))


def _merges(scan: _Scan) -> list[Merge]:
    g = scan.g
    found: list[Merge] = []
    for node in g.nodes:
        if node.op_type == "Concat":
            if int(attr(node, "axis", 0)) not in (1, -3):
                continue
        elif node.op_type != "Add":
            continue
        if len(node.input) != 2 or any(t not in g.strides for t in node.input):
            continue
        s = g.stride(node.input[0])
        if s is None or g.stride(node.input[1]) != s or node.input[0] == node.input[1]:
            continue
        crossings = [scan.crossing(t) for t in node.input]
        near = [c[2] if c is not None else _WALK_LIMIT for c in crossings]
        if min(near) > _CROSS_CONVS or near[0] == near[1]:
            continue  # no scale crossed near, or crossed alike on both sides (a downsampling unit)
        i = 0 if near[0] < near[1] else 1
        via, src, _ = crossings[i]  # type: ignore[misc]
        if _downstream(scan, node.input[i], node.input[1 - i]):
            continue  # a residual add: the other input is computed from this one
        src_stride = g.stride(src)
        if via.op_type in UPSAMPLES and src_stride == 2 * s:
            kind = "td"
        elif via.op_type == "Conv" and src_stride is not None and 2 * src_stride == s:
            kind = "bu"
        else:
            continue
        found.append(Merge(node, s, kind, node.input[i], node.input[1 - i], via, src))
    return found


def no_merge_neck(graph: Graph, why: str) -> InputError:
    convs = graph.convs
    ones = sum(1 for n in convs if (w := graph.const(n.input[1])) is not None
               and w.ndim == 4 and tuple(w.shape[2:]) == (1, 1))
    return InputError(f"{graph.where}: no neck found: {len(convs)} Conv nodes ({ones} of them "
                      f"1x1), {why}")


def _act(scan: _Scan, conv_out: str) -> str:
    """The activation right after the conv that makes a level's output."""
    g = scan.g
    readers = [r for r in g.readers(conv_out) if r.op_type != "Shape"]
    ops = {r.op_type for r in readers}
    for r in readers:
        if r.op_type == "BatchNormalization":
            return _act(scan, r.output[0])
    if "Relu" in ops:
        return "relu"
    if "LeakyRelu" in ops:
        return "leaky_relu"
    if "HardSwish" in ops:
        return "hardswish"
    if "Sigmoid" in ops and "Mul" in ops:
        return "silu"
    if "HardSigmoid" in ops and "Mul" in ops:
        return "hardswish"
    return "none"


def find_merge_neck(graph: Graph) -> MergeNeck:
    """The Concat/Add neck of a detector graph (see the module's docstring).

    Raises:
        InputError: no such neck (the message says what the graph holds).
    """
    scan = _Scan(graph)
    merges = _merges(scan)
    td = {m.stride: m for m in merges if m.kind == "td"}
    if len(td) != sum(m.kind == "td" for m in merges):
        raise no_merge_neck(graph, "more than one top-down merge at one stride")
    if not td:
        raise no_merge_neck(graph, "no top-down merge (a Concat or Add of a map and a "
                            "nearest x2 upsample of a coarser one)")
    strides = sorted(td)
    levels = [*strides, 2 * strides[-1]]
    if any(b != 2 * a for a, b in itertools.pairwise(levels)):
        raise no_merge_neck(graph, f"top-down merges at strides {strides}, which do not "
                            "double level to level")
    for a, b in itertools.pairwise(strides):  # each upsamples the coarser level
        if td[b].node is None or not _downstream(scan, td[b].output, td[a].source):
            raise no_merge_neck(graph, f"top-down merges at strides {a} and {b} that are not "
                                "chained (the finer does not upsample the coarser's result)")
    bu = {m.stride: m for m in merges if m.kind == "bu" and m.stride in levels[1:]
          and _downstream(scan, td[m.stride // 2].output, m.source)}
    n = len(levels)
    if bu and sorted(bu) != levels[1:]:
        raise no_merge_neck(graph, f"a bottom-up path over {len(bu) + 1} of {n} levels")
    outputs: list[str | None] = [None] * n
    if bu:
        for i in range(n - 1):
            outputs[i] = bu[levels[i + 1]].source
        ref, target = n - 2, n - 1
        last = {i: bu.get(levels[i]) or td[levels[i]] for i in range(n)}
    else:
        if n < 3:
            raise no_merge_neck(graph, f"one top-down merge (strides {levels}) and no "
                                "bottom-up path: too little to tell where its levels end")
        for i in range(1, n):
            outputs[i] = td[levels[i - 1]].source
        ref, target = 1, 0
        last = {i: td[levels[i]] for i in range(n - 1)}
    ref_out = outputs[ref]
    assert ref_out is not None
    depth = scan.conv_depth(last[ref].output, ref_out)
    if depth is None:
        raise no_merge_neck(graph, f"level {levels[ref]}'s output is not downstream of its "
                            "merge")
    internal = {id(m.via) for m in merges}
    sig = scan.signature(ref_out, internal)
    outputs[target] = _mirror(scan, last[target].output, depth, sig)
    if outputs[target] is None:
        raise no_merge_neck(graph, f"merges at strides {levels}, but no level-{levels[target]}"
                            f" output read by the same prediction branch as level "
                            f"{levels[ref]}'s")
    outs = [o for o in outputs if o is not None]
    block = _block_kind(scan, last[ref], ref_out)
    family = _family(td[levels[0]], bu, block)
    if family is None:
        raise no_merge_neck(graph, f"merges at strides {levels} ({td[levels[0]].op} top-down, "
                            f"{next(iter(bu.values())).op if bu else 'no'} bottom-up, "
                            f"{block} blocks) in no family necktool knows")
    laterals = family in ("yolo5face", "yolov8_lite")
    inputs = [td[s].partner for s in strides]
    top = td[levels[-2]].source
    if family == "yunet":  # the coarsest level's DPU runs before its upsample
        first = _walk_back_convs(scan, top, depth)
        if first is None:
            raise no_merge_neck(graph, "a top-down Add path whose coarsest level has no "
                                f"{depth}-conv block in front of its upsample")
        inputs.append(first)
    elif laterals:
        conv = scan.back_pointwise(top)
        if conv is None or conv.op_type != "Conv" or _kernel(scan, conv) != (1, 1):
            raise no_merge_neck(graph, "a PAN whose coarsest upsample reads no lateral 1x1 "
                                "conv")
        inputs.append(conv.input[0])
    else:
        inputs.append(top)
    nodes = _between(scan, inputs, outs)
    ch = scan.ch
    missing = [t for t in [*inputs, *outs] if t not in ch]
    if missing:
        raise no_merge_neck(graph, f"a {family} neck whose tensor {missing[0][:60]!r} has no "
                            "channel count the graph fixes")
    conv_out = scan.back_pointwise(outs[0])
    act = _act(scan, conv_out.output[0]) if conv_out is not None and \
        conv_out.op_type == "Conv" else "none"
    return MergeNeck(
        family=family, inputs=tuple(inputs), outputs=tuple(outs), strides=tuple(levels),
        in_channels=tuple(ch[t] for t in inputs), out_channels=tuple(ch[t] for t in outs),
        repeats=max(1, (depth - 2) // 2) if block in ("c3", "c2f") else 1, act=act,
        laterals=laterals, merges=tuple([td[s] for s in strides] +
                                        [bu[s] for s in sorted(bu)]),
        convs=tuple(n for n in nodes if n.op_type == "Conv"), nodes=tuple(nodes))


def _kernel(scan: _Scan, conv: onnx.NodeProto) -> tuple[int, ...]:
    w = scan.g.const(conv.input[1]) if len(conv.input) > 1 else None
    return tuple(int(d) for d in w.shape[2:]) if w is not None and w.ndim == 4 else ()


def _downstream(scan: _Scan, start: str, tensor: str) -> bool:
    """Whether ``tensor`` is ``start`` or computed from it at the same scale."""
    if start == tensor:
        return True
    return tensor in scan.depths(start, scan.g.strides.get(start))


def _mirror(scan: _Scan, start: str, depth: int, sig: tuple[Any, ...]) -> str | None:
    """The first tensor ``depth`` convs after ``start`` whose readers are ``sig``."""
    depths = scan.depths(start, scan.g.strides.get(start))
    for node in scan.block(start, scan.g.strides.get(start)):
        for t in node.output:
            if t and depths.get(t) == depth and scan.signature(t, set()) == sig:
                return t
    return None


def _walk_back_convs(scan: _Scan, tensor: str, convs: int) -> str | None:
    """Back from ``tensor`` along a chain of single-input same-scale steps over ``convs``
    convs: the tensor the first of them reads."""
    seen = 0
    for _ in range(_WALK_LIMIT):
        node = scan.g.node_of(tensor)
        if node is None or not scan.same_scale_step(node):
            return None
        src = scan.source(node)
        if src is None:
            return None
        tensor = src
        if node.op_type == "Conv":
            seen += 1
            if seen == convs:
                return tensor
    return None


def _block_kind(scan: _Scan, merge: Merge, out: str) -> str:
    """The block after a merge: ``c2f`` (a channel Split), ``c3`` (two 1x1 convs read the
    merge), ``dw`` (depthwise-separable units) or ``conv``."""
    g = scan.g
    stride = g.strides.get(merge.output)
    nodes = [n for n in scan.block(merge.output, stride)
             if scan.index[id(n)] <= scan.index[id(g.node_of(out))]]
    if any(n.op_type == "Split" for n in nodes) or any(
            n.op_type == "Slice" and _channel_slice(g, n, None) != (0, 0) for n in nodes):
        return "c2f"
    first = [r for r in g.readers(merge.output) if r.op_type == "Conv"]
    if len(first) == 2 and all(_kernel(scan, c) == (1, 1) for c in first):
        return "c3"
    if any(n.op_type == "Conv" and int(attr(n, "group", 1)) > 1 for n in nodes):
        return "dw"
    return "conv"


def _family(first_td: Merge, bu: dict[int, Merge], block: str) -> str | None:
    bu_op = {m.op for m in bu.values()}
    if first_td.op == "add" and not bu:
        return "yunet"
    if first_td.op == "concat" and bu_op == {"concat"}:
        return {"c3": "yolo5face", "c2f": "yolov8"}.get(block)
    if first_td.op == "concat" and bu_op == {"add"} and block == "dw":
        return "yolov8_lite"
    return None


def _between(scan: _Scan, inputs: list[str], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes on a path from an input to an output, in graph order."""
    g = scan.g
    after: set[str] = set(inputs)
    down: set[int] = set()
    for node in g.nodes:
        if any(t in after for t in node.input if t):
            down.add(id(node))
            after.update(o for o in node.output if o)
    before: set[str] = set(outputs)
    up: set[int] = set()
    for node in reversed(g.nodes):
        if any(o in before for o in node.output if o) and id(node) in down:
            up.add(id(node))
            before.update(t for t in node.input if t and t not in inputs)
    return [n for n in g.nodes if id(n) in up]
