"""Find the neck inside a detector graph by its structure (torch-free).

The evidence, in order:

1. **Top-down upsample-adds**: ``Add`` nodes one of whose inputs is a nearest
   ``Resize``/``Upsample`` of a map at twice the other input's stride.
2. **Laterals**: each such add's other input comes (through activations or a norm) from a
   1x1 stride-1 Conv; the adds chain coarse to fine (each upsamples the previous add, or
   a 3x3 conv of it: RetinaFace's merge), and the coarsest upsample starts at a 1x1 conv
   too. These N 1x1 convs, their inputs at strides that double level to level, are the
   laterals; their inputs are the backbone tensors entering the neck.
3. **The family**: RetinaFace's FPN upsamples the merged (3x3) map; the others upsample
   the add itself and put a 3x3 conv on every level. A stride-2 3x3 conv from a level into
   an add with the next level is a bottom-up path (PAFPN): the SCRFD seed puts an output
   conv on every level, mmdetection on every level but the finest (told apart by how many
   convs lie between each level and the graph's outputs: the head is the same on every
   level). Stride-2 convs (or strided slices) past the coarsest level are extra levels.

Initializer and node names are only hints (whether a norm was folded into a conv bias
cannot be seen in the arithmetic); the structure decides.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from typing import TYPE_CHECKING, Any

from necktool.detector.graph import POINTWISE, UPSAMPLES, Graph, attr, read_graph
from necktool.errors import InputError, NecktoolError
from necktool.spec.fields import BASE_STRIDE, Activation, ExtraConvs, Norm
from necktool.spec.neck_spec import NeckSpec, seed_gn_groups
from necktool.spec.registry import PRESETS

if TYPE_CHECKING:
    import onnx

    from necktool.detector.merges import MergeNeck

DEFAULT_SIZE = (640, 640)  # the size a dynamic detector is described at
NORM_STATES = ("none", "folded", "present")
_FOLDED_NAME = re.compile(r"(weight_bias|_fused|bn)", re.IGNORECASE)
_NUMBERED = re.compile(r"^(onnx::\w+_)?\d+$")


@dataclasses.dataclass(frozen=True)
class ConvNode:
    """One Conv node of the neck: its role, level, and the tensors it reads and makes.

    Attributes:
        role: ``lateral``, ``fpn`` (the 3x3 conv after the top-down add; RetinaFace's
            merge), ``downsample`` (bottom-up stride-2), ``pafpn`` (after the bottom-up
            add; the seed's output conv), or ``extra``.
        level: The output level it serves (0: the finest).
        node: The Conv node's name.
        weight, bias: The tensors the node reads as weight and bias (``None``: no bias).
        output: The tensor after its activation/norm (what the next stage reads).
        norm: The BatchNormalization/GroupNormalization node after it, if any.
        shape: The weight's shape ``(out, in, kh, kw)``.
        stride: The conv's own stride.
    """

    role: str
    level: int
    node: str
    weight: str
    bias: str | None
    output: str
    norm: str | None
    shape: tuple[int, ...]
    stride: int

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "level": self.level, "node": self.node,
                "weight": self.weight, "bias": self.bias, "norm": self.norm,
                "shape": list(self.shape), "stride": self.stride}


@dataclasses.dataclass(frozen=True)
class DetectorNeck:
    """The neck found in a detector graph.

    Attributes:
        inputs: ONNX tensors entering the neck (the laterals' inputs), finest first.
        outputs: ONNX tensors leaving it (one per output level), finest first.
        spec: The family and fields that reproduce it (``input_size``: the graph's static
            size, else :data:`DEFAULT_SIZE`).
        norm_state: ``none`` (convs with a bias, no norm), ``folded`` (a norm folded into
            the convs' weights and biases) or ``present`` (norm nodes in the graph).
        convs: The neck's Conv nodes by role and level, in the built neck's order.
        strides: The stride of each output level, finest first.
        input_strides: The stride of each input.
        image: The graph's image input; ``image_size`` its static ``(H, W)`` or ``None``.
        notes: What was assumed where the graph is silent.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    spec: NeckSpec
    norm_state: str
    convs: tuple[ConvNode, ...]
    strides: tuple[int, ...]
    input_strides: tuple[int, ...]
    image: str
    image_size: tuple[int, int] | None
    notes: tuple[str, ...] = ()
    merge: MergeNeck | None = None  # a Concat/Add neck (YuNet, the YOLO necks)

    @property
    def presets(self) -> tuple[str, ...]:
        """Presets whose spec is this one (the size aside)."""
        return matching_presets(self.spec)

    def by_role(self, role: str) -> tuple[ConvNode, ...]:
        return tuple(c for c in self.convs if c.role == role)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs),
                "family": self.spec.family, "config": self.spec.to_dict(),
                "norm_state": self.norm_state, "strides": list(self.strides),
                "input_strides": list(self.input_strides),
                "convs": [c.to_dict() for c in self.convs], "notes": list(self.notes),
                **({"merges": self.merge.to_dict()["merges"]} if self.merge else {})}


def _plain(spec: NeckSpec) -> dict[str, Any]:
    skip = {"input_size"}
    if spec.num_extra_levels == 0:  # how extra levels would be made does not matter
        skip |= {"extra_convs", "relu_before_extra_convs"}
    return {k: v for k, v in spec.to_dict().items() if k not in skip}


def matching_presets(spec: NeckSpec) -> tuple[str, ...]:
    """Presets whose spec equals ``spec`` in every field but the input size (and, with no
    extra levels, how extra levels would be made)."""
    plain = _plain(spec)
    return tuple(n for n, p in PRESETS.items() if _plain(p.spec) == plain)


# -- walking the graph --------------------------------------------------------------------
class _Walk:
    def __init__(self, graph: Graph) -> None:
        self.g = graph

    def forward(self, tensor: str) -> tuple[str, list[onnx.NodeProto]]:
        """Follow ``tensor`` through single-reader pointwise nodes (activation, norm)."""
        chain: list[onnx.NodeProto] = []
        while True:  # a Shape reading the map (a GroupNorm's restoring reshape) is no reader
            readers = [r for r in self.g.readers(tensor) if r.op_type != "Shape"]
            if len(readers) != 1 or not self._pointwise(readers[0]):
                return tensor, chain
            chain.append(readers[0])
            tensor = readers[0].output[0]

    def _pointwise(self, node: onnx.NodeProto) -> bool:
        if node.op_type in POINTWISE:
            return len(self.g.features(node)) == 1
        if node.op_type in ("Mul", "Add") and len(self.g.features(node)) == 1:
            # a scale or shift by a constant (a decomposed norm's affine)
            return all(t in self.g.strides or self.g.is_const(t) for t in node.input)
        return False

    def back(self, tensor: str) -> onnx.NodeProto | None:
        """The node that makes ``tensor``, skipping pointwise nodes."""
        for _ in range(16):
            node = self.g.node_of(tensor)
            if node is None or not self._pointwise(node):
                return node
            tensor = self.g.features(node)[0]
        return None

    def conv(self, node: onnx.NodeProto | None, kernel: int, stride: int = 1) -> bool:
        if node is None or node.op_type != "Conv" or len(node.input) < 2:
            return False
        w = self.g.const(node.input[1])
        if w is None or w.ndim != 4 or tuple(w.shape[2:]) != (kernel, kernel):
            return False
        strides = attr(node, "strides") or [1, 1]
        return int(attr(node, "group", 1)) == 1 and list(strides) == [stride, stride]

    def conv_readers(self, tensor: str, kernel: int, stride: int) -> list[onnx.NodeProto]:
        return [n for n in self.g.readers(tensor) if self.conv(n, kernel, stride)]

    @functools.cached_property
    def _depths(self) -> dict[str, int]:
        """Tensor -> convs on the longest path from it to a graph output (one reverse
        topological pass, so no recursion however deep the graph)."""
        depth: dict[str, int] = {}
        for node in reversed(self.g.nodes):
            below = max((depth.get(o, 0) for o in node.output if o), default=0)
            here = below + (1 if node.op_type == "Conv" else 0)
            for t in node.input:
                if t:
                    depth[t] = max(depth.get(t, 0), here)
        return depth

    def depth(self, tensor: str) -> int:
        """Convs on the longest path from ``tensor`` to a graph output."""
        return self._depths.get(tensor, 0)


def _upsample_adds(graph: Graph) -> list[tuple[onnx.NodeProto, str, onnx.NodeProto]]:
    """``(add, fine input, resize)`` for every add of a map and a 2x upsample of another."""
    found = []
    for node in graph.nodes:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for fine, up in (node.input, node.input[::-1]):
            resize = graph.node_of(up)
            if resize is None or resize.op_type not in UPSAMPLES or fine not in graph.strides:
                continue
            coarse = graph.strides.get(resize.input[0])
            if coarse is not None and coarse == tuple(2 * s for s in graph.strides[fine]):
                found.append((node, fine, resize))
                break
    return found


def _no_neck(graph: Graph, why: str) -> InputError:
    convs = graph.convs
    ones = sum(1 for n in convs if _Walk(graph).conv(n, 1))
    return InputError(f"{graph.where}: no neck found: {len(convs)} Conv nodes ({ones} of them "
                      f"1x1), {why}")


@dataclasses.dataclass
class _Levels:
    laterals: list[onnx.NodeProto]
    adds: list[onnx.NodeProto | None]  # per level; None at the coarsest
    merges: list[onnx.NodeProto | None]  # RetinaFace: the 3x3 conv after each add


def _chain(graph: Graph, walk: _Walk) -> _Levels:
    adds = _upsample_adds(graph)
    if not adds:
        raise _no_neck(graph, "no top-down upsample-and-add (a nearest Resize/Upsample of "
                       "one map added to a map at half its stride), so no lateral 1x1 convs "
                       "over 2+ levels")
    by_add = {id(a): (a, fine, resize) for a, fine, resize in adds}
    # link each add to the next coarser one: its upsample reads that add (or its merge)
    coarser: dict[int, tuple[onnx.NodeProto | None, onnx.NodeProto | None,
                             onnx.NodeProto | None]] = {}
    for add, _fine, resize in adds:
        src = walk.back(resize.input[0])
        merge = None
        if walk.conv(src, 3) and src is not None:
            merge, src = src, walk.back(src.input[0])
        if src is not None and id(src) in by_add:
            coarser[id(add)] = (src, merge, None)
        elif merge is None and walk.conv(src, 1):
            coarser[id(add)] = (None, None, src)  # the coarsest lateral
    best: _Levels | None = None
    finer_of = {id(v[0]): k for k, v in coarser.items() if v[0] is not None}
    for add, fine, _resize in adds:
        if id(add) in finer_of:  # not the finest add of a chain
            continue
        lat = walk.back(fine)
        if not walk.conv(lat, 1) or lat is None:
            continue
        laterals: list[onnx.NodeProto] = [lat]
        level_adds: list[onnx.NodeProto | None] = [add]
        merges: list[onnx.NodeProto | None] = []
        cur: onnx.NodeProto = add
        ok = True
        while True:
            link = coarser.get(id(cur))
            if link is None:
                ok = False
                break
            nxt, merge, top = link
            merges.append(merge)
            if top is not None:
                laterals.append(top)
                level_adds.append(None)
                break
            assert nxt is not None
            lat_next = walk.back(by_add[id(nxt)][1])
            if not walk.conv(lat_next, 1) or lat_next is None:
                ok = False
                break
            laterals.append(lat_next)
            level_adds.append(nxt)
            cur = nxt
        if ok and (best is None or len(laterals) > len(best.laterals)):
            merges.append(None)
            best = _Levels(laterals, level_adds, merges)
    if best is None:
        raise _no_neck(graph, f"{len(adds)} upsample-add(s), but none fed by lateral 1x1 "
                       "convs over 2+ levels")
    strides = [graph.strides.get(n.input[0]) for n in best.laterals]
    if any(s is None for s in strides) or any(
            b != (2 * a[0], 2 * a[1]) for a, b in itertools.pairwise(strides)  # type: ignore[index]
    ):
        raise _no_neck(graph, "lateral 1x1 convs whose inputs' strides do not double level "
                       "to level")
    return best


def find_neck(model: onnx.ModelProto, where: str = "the ONNX file") -> DetectorNeck:
    """The neck of a detector graph, found by structure (see the module's docstring).

    Args:
        model: The detector (load an untrusted file with
            :func:`necktool.detector.loading.load_detector`).
        where: How messages name the file.

    Raises:
        InputError: no recognisable neck (the message says what the graph holds), or a
            damaged graph (a cycle, a missing tensor).

    Example:
        >>> found = find_neck(load_detector("det_2.5g.onnx"))  # doctest: +SKIP
        >>> found.spec.family, found.presets  # doctest: +SKIP
        ('mmdet_pafpn', ('insightface_scrfd_2.5g',))
    """
    return find_in_graph(read_graph(model, where))


def find_in_graph(graph: Graph) -> DetectorNeck:
    """:func:`find_neck` for a graph already read: a lateral FPN/PAFPN, else a neck whose
    levels merge by Concat or Add (:mod:`necktool.detector.merges`)."""
    try:
        return _Finder(graph).find()
    except InputError as exc:
        return _merge_neck(graph, exc)


def _merge_neck(graph: Graph, first: InputError) -> DetectorNeck:
    """The Concat/Add neck, after the lateral finder failed with ``first`` (whose message
    stands when no top-down merge is there either)."""
    from necktool.detector.merge_spec import conv_rows, merge_spec
    from necktool.detector.merges import find_merge_neck

    try:
        merge = find_merge_neck(graph)
    except InputError as exc:
        if "no top-down merge" in str(exc):
            raise first from None
        raise
    spec, notes = merge_spec(graph, merge, graph.image_size or DEFAULT_SIZE)
    convs = tuple(ConvNode("block", **row) for row in conv_rows(graph, merge))
    state = "present" if any(c.norm for c in convs) else "folded"
    if state == "folded":
        notes.insert(0, "norm: BatchNorm folded into the convs (the authors' blocks all "
                     "normalise); loaded as identity BatchNorm plus the conv bias")
    return DetectorNeck(merge.inputs, merge.outputs, spec, state, convs, merge.strides,
                        tuple(graph.stride(t) or 0 for t in merge.inputs), graph.image,
                        graph.image_size, tuple(notes), merge)


class _Finder:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.walk = _Walk(graph)
        self.notes: list[str] = []

    def node(self, role: str, level: int, conv: onnx.NodeProto) -> ConvNode:
        out, chain = self.walk.forward(conv.output[0])
        w = self.g.const(conv.input[1])
        assert w is not None
        norms = [n for n in chain if n.op_type in ("BatchNormalization", "GroupNormalization",
                                                    "InstanceNormalization")]
        if any(n.op_type == "Reshape" for n in chain) and not norms:
            chain = []  # a reshape that is no GroupNorm: not part of the conv's block
        bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        stride = int((attr(conv, "strides") or [1])[0])
        return ConvNode(role, level, conv.name, conv.input[1], bias, out,
                        norms[0].name if norms else None, tuple(int(d) for d in w.shape), stride)

    def out(self, conv: onnx.NodeProto) -> str:
        return self.walk.forward(conv.output[0])[0]

    def only_conv(self, tensor: str, kernel: int, stride: int, what: str) -> onnx.NodeProto:
        found = self.walk.conv_readers(tensor, kernel, stride)
        if len(found) != 1:
            raise _no_neck(self.g, f"a top-down path over lateral 1x1 convs, but {what} is "
                           f"read by {len(found)} {kernel}x{kernel} stride-{stride} convs "
                           "(expected 1)")
        return found[0]

    def find(self) -> DetectorNeck:
        levels = _chain(self.g, self.walk)
        len(levels.laterals)
        lat_out = [self.out(c) for c in levels.laterals]
        td = [self.walk.forward(a.output[0])[0] if a is not None else lat_out[i]
              for i, a in enumerate(levels.adds)]
        convs = [self.node("lateral", i, c) for i, c in enumerate(levels.laterals)]
        extra: list[ConvNode] = []
        if any(m is not None for m in levels.merges):  # RetinaFace: merge, then upsample
            family = "fpn"
            merges = [self.only_conv(t, 3, 1, f"level {i}'s top-down sum")
                      for i, t in enumerate(td[:-1])]
            convs += [self.node("fpn", i, m) for i, m in enumerate(merges)]
            outputs = [self.out(m) for m in merges] + [lat_out[-1]]
        else:
            fpn = [self.only_conv(t, 3, 1, f"level {i}'s top-down sum") for i, t in
                   enumerate(td)]
            inter = [self.out(c) for c in fpn]
            convs += [self.node("fpn", i, c) for i, c in enumerate(fpn)]
            family, outputs, more = self.bottom_up(inter)
            convs += more
            if family != "pafpn":
                outputs, extra = self.extras(outputs, levels, lat_out)
                convs += extra
        return self.result(family, levels, convs, outputs, extra)

    def bottom_up(self, inter: list[str]) -> tuple[str, list[str], list[ConvNode]]:
        """PAFPN's bottom-up path if there is one: ``(family, outputs, convs)``."""
        n = len(inter)
        downs: list[onnx.NodeProto] = []
        sums: list[str] = [inter[0]]
        for i in range(n - 1):
            found = None
            for conv in self.walk.conv_readers(sums[-1], 3, 2):
                for add in self.g.readers(self.out(conv)):
                    if add.op_type == "Add" and inter[i + 1] in add.input:
                        found = (conv, add)
            if found is None:
                break
            downs.append(found[0])
            sums.append(self.walk.forward(found[1].output[0])[0])
        if not downs:
            return "mmdet_fpn", inter, []
        if len(downs) != n - 1:
            raise _no_neck(self.g, f"a bottom-up path over {len(downs) + 1} of {n} levels")
        convs = [self.node("downsample", i + 1, c) for i, c in enumerate(downs)]
        outs = [self.only_conv(sums[i], 3, 1, f"level {i}'s bottom-up sum")
                for i in range(1, n)]
        depth = self.walk.depth
        d_fine = max((depth(o) + 1 for o in (c.output[0] for c in
                                              self.walk.conv_readers(sums[0], 3, 1))),
                     default=0)
        others = [r for r in self.g.readers(sums[0]) if r is not downs[0]]
        d_fine = max([d_fine] + [(1 if r.op_type == "Conv" else 0) + depth(r.output[0])
                                 for r in others])
        d_next = 1 + depth(outs[0].output[0])
        first = self.walk.conv_readers(sums[0], 3, 1)
        if len(first) == 1 and d_fine == d_next:  # the seed: an output conv on every level
            outs.insert(0, first[0])
            convs += [self.node("pafpn", i, c) for i, c in enumerate(outs)]
            return "pafpn", [self.out(c) for c in outs], convs
        convs += [self.node("pafpn", i + 1, c) for i, c in enumerate(outs)]
        return "mmdet_pafpn", [sums[0]] + [self.out(c) for c in outs], convs

    def extras(self, outputs: list[str], levels: _Levels,
               lat_out: list[str]) -> tuple[list[str], list[ConvNode]]:
        """mmdetection's extra levels past the coarsest output."""
        n = len(outputs)
        sources = ((ExtraConvs.ON_OUTPUT, outputs[-1]),
                   (ExtraConvs.ON_LATERAL, lat_out[-1]),
                   (ExtraConvs.ON_INPUT, levels.laterals[-1].input[0]))
        channels = self.g.const(levels.laterals[0].input[1]).shape[0]  # type: ignore[union-attr]
        first = None
        for mode, tensor in sources:
            found = [c for c in self.walk.conv_readers(tensor, 3, 2)
                     if self.g.const(c.input[1]).shape[0] == channels]  # type: ignore[union-attr]
            if found:
                first = (mode, found[0])
                break
        outs, convs = list(outputs), list[ConvNode]()
        self.mode = ExtraConvs.NONE
        self.relu_before = False
        if first is None:
            tensor = outputs[-1]
            while True:
                picks = [r for r in self.g.readers(tensor) if r.op_type in ("Slice", "MaxPool")
                         and self.g.stride(r.output[0]) == 2 * (self.g.stride(tensor) or 0)]
                if len(picks) != 1:
                    break
                tensor = picks[0].output[0]
                outs.append(tensor)
            return outs, convs
        self.mode = first[0]
        conv: onnx.NodeProto | None = first[1]
        while conv is not None:
            convs.append(self.node("extra", n + len(convs), conv))
            outs.append(self.out(conv))
            nxt = self.walk.conv_readers(outs[-1], 3, 2)
            relu = [r for r in self.g.readers(outs[-1]) if r.op_type == "Relu"]
            if not nxt and len(relu) == 1:
                nxt = self.walk.conv_readers(relu[0].output[0], 3, 2)
                self.relu_before = bool(nxt)
            conv = nxt[0] if len(nxt) == 1 else None
        return outs, convs

    def norm_and_act(self, convs: list[ConvNode], family: str) -> tuple[str, Norm, dict]:
        conv = self.g.node_of(convs[0].output)
        chain: list[onnx.NodeProto] = []
        while conv is not None and conv.op_type != "Conv":  # back from the output to the conv
            chain.insert(0, conv)
            conv = self.g.node_of(self.g.features(conv)[0])
        ops = [n.op_type for n in chain]
        fields: dict[str, Any] = {"act": Activation.NONE}
        acts = [n for n in chain if n.op_type in ("Relu", "LeakyRelu")]
        if acts and acts[-1].op_type == "LeakyRelu":
            fields["act"] = Activation.LEAKY_RELU
            fields["leaky_slope"] = round(float(attr(acts[-1], "alpha", 0.01)), 6)
        elif acts:
            fields["act"] = Activation.RELU
        if "BatchNormalization" in ops:
            return "present", Norm.BN, fields
        if "GroupNormalization" in ops or "InstanceNormalization" in ops:
            gn = next(n for n in chain if n.op_type == "GroupNormalization") \
                if "GroupNormalization" in ops else None
            if gn is not None:
                fields["gn_groups"] = int(attr(gn, "num_groups"))
            else:  # Reshape [N, groups, -1] -> InstanceNormalization -> Reshape back
                view = next(n for n in chain if n.op_type == "Reshape")
                shape = self.g.const(view.input[1])
                if shape is not None and shape.size == 3 and int(shape[1]) > 0:
                    fields["gn_groups"] = int(shape[1])
            return "present", Norm.GN, fields
        return self.folded_or_none(convs, family), Norm.NONE, fields

    def folded_or_none(self, convs: list[ConvNode], family: str) -> str:
        """Whether a norm was folded into the convs: the arithmetic cannot tell, so names
        are the hint, and the family's design (RetinaFace and the seed always normalise)
        the fallback."""
        biases = [c.bias or "" for c in convs]
        weights = [c.weight for c in convs]
        others = [t for t in self.g.initializers if t not in weights and t not in biases]
        if any(_FOLDED_NAME.search(b) for b in biases if b):
            self.notes.append("norm: folded into the convs (the bias names say so)")
            return "folded"
        if all(_NUMBERED.match(w) for w in weights) and any(
                "." in t and not _NUMBERED.match(t) for t in others):
            self.notes.append("norm: folded into the convs (their weights were renamed by the "
                              "exporter's Conv+BatchNorm fusion, other tensors kept names)")
            return "folded"
        if all(w.endswith(".weight") for w in weights) and all(
                b.endswith(".bias") for b in biases):
            return "none"
        if family in ("fpn", "pafpn"):
            self.notes.append(f"norm: none in the graph; the {family} design normalises "
                              "every conv, so BatchNorm folded into the convs is assumed "
                              "(outputs are the same either way)")
            return "folded"
        return "none"

    def result(self, family: str, levels: _Levels, convs: list[ConvNode],
               outputs: list[str], extra: list[ConvNode]) -> DetectorNeck:
        g = self.g
        laterals = [c for c in convs if c.role == "lateral"]
        channels = {c.shape[0] for c in convs}
        if len(channels) != 1:
            raise _no_neck(g, f"a neck-like graph whose convs have different widths "
                           f"{sorted(channels)}")
        state, norm, fields = self.norm_and_act(convs, family)
        if state == "folded":
            norm = Norm.BN
            if any(c.bias is None for c in convs):
                self.notes.append("some neck convs have no bias: their folded shift is 0")
        input_strides = tuple(g.stride(n.input[0]) or 0 for n in levels.laterals)
        size = g.image_size or DEFAULT_SIZE
        if input_strides[0] == 1:  # the graph is a neck alone: its inputs are the levels
            input_strides = tuple(BASE_STRIDE * s for s in input_strides)
            if g.image_size is not None:
                size = (size[0] * BASE_STRIDE, size[1] * BASE_STRIDE)
            self.notes.append(f"the graph is a neck alone; its finest input is taken as "
                              f"stride {BASE_STRIDE}")
        strides = tuple(input_strides[0] * 2 ** i for i in range(len(outputs)))
        out_channels = channels.pop()
        if fields.get("gn_groups") == seed_gn_groups(out_channels):
            fields["gn_groups"] = None  # the seed's rule gives it: say so as the presets do
        fields |= {"in_channels": tuple(c.shape[1] for c in laterals),
                   "out_channels": out_channels, "norm": norm,
                   "input_size": size}
        if family.startswith("mmdet"):
            mode = getattr(self, "mode", ExtraConvs.NONE)
            if len(outputs) == len(laterals) and family in PRESETS:
                mode = PRESETS[family].spec.extra_convs  # no extra level: it does not matter
            fields |= {"num_outs": len(outputs), "extra_convs": mode,
                       "relu_before_extra_convs": getattr(self, "relu_before", False)}
        if g.image_size is None:
            self.notes.append(f"the image input is dynamic; figures are at "
                              f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}")
        try:
            spec = NeckSpec(family, **fields)
        except NecktoolError as exc:
            raise _no_neck(g, f"a {family} neck necktool cannot build: {exc}") from None
        return DetectorNeck(
            inputs=tuple(n.input[0] for n in levels.laterals), outputs=tuple(outputs),
            spec=spec, norm_state=state, convs=tuple(convs), strides=strides,
            input_strides=input_strides, image=g.image, image_size=g.image_size,
            notes=tuple(self.notes))
