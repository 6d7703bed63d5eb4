"""Take a neck's weights from a detector ONNX file (``--weights DET.onnx``).

Each neck Conv node found by :func:`necktool.detector.neck.find_neck` is followed to the
tensors it reads as weight and bias: never an initializer looked up by name, because
released files deduplicate equal tensors (insightface's SCRFD: ``fpn_convs.1`` reads
``downsample_convs.0``'s bias, and ``neck.fpn_convs.1.conv.bias`` does not exist).

Norms: a BatchNorm folded into the convs loads exactly into a neck with BatchNorm, set to
the identity with the folded bias as its shift (weight 1, bias = the conv's bias, running
mean 0, running variance ``1 - eps``, so that ``var + eps`` is exactly 1); BatchNorm nodes
present in the graph load as they are (a conv bias in front of one moves into its mean);
into a neck without a norm, a present BatchNorm is folded into the conv.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from necktool.detector.graph import Graph, attr, read_graph
from necktool.detector.loading import load_detector
from necktool.detector.neck import ConvNode, DetectorNeck, find_in_graph
from necktool.errors import WeightsError, first_line
from necktool.spec.fields import Norm
from necktool.spec.weights import WeightSource

if TYPE_CHECKING:
    from torch import nn

    from necktool.spec.neck_spec import NeckSpec


def conv_key(spec: NeckSpec, conv: ConvNode) -> tuple[str, str]:
    """``(conv module path, norm module path)`` of ``conv`` in the neck ``spec`` builds."""
    i = conv.level
    if spec.family == "fpn":
        base = f"output{i + 1}" if conv.role == "lateral" else f"merge{i + 1}"
        return f"{base}.0", f"{base}.1"
    if spec.family == "pafpn":
        container = {"lateral": "lateral_convs", "fpn": "td_convs", "downsample": "bu_convs",
                     "pafpn": "bu_out_convs"}[conv.role]
        index = i - 1 if conv.role == "downsample" else i
        gn = spec.norm is Norm.GN
        return (f"{container}.{index}.{'conv' if gn else '0'}",
                f"{container}.{index}.{'gn' if gn else '1'}")
    container, index = {"lateral": ("lateral_convs", i), "fpn": ("fpn_convs", i),
                        "extra": ("fpn_convs", i), "downsample": ("downsample_convs", i - 1),
                        "pafpn": ("pafpn_convs", i - 1)}[conv.role]
    norm = "gn" if spec.norm is Norm.GN else "bn"
    return f"{container}.{index}.conv", f"{container}.{index}.{norm}"


def identity_variance(eps: float) -> np.float32:
    """The float32 running variance ``v`` with ``float32(v + eps) == 1`` exactly."""
    v = np.float32(1.0 - eps)
    for _ in range(64):
        total = np.float32(v + np.float32(eps))
        if total == 1:
            return v
        v = np.nextafter(v, np.float32(-np.inf) if total > 1 else np.float32(np.inf))
    return np.float32(1.0 - eps)


class _BatchNorm(NamedTuple):
    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float


def _group_norm(graph: Graph, conv: ConvNode) -> tuple[np.ndarray, np.ndarray, float]:
    """A present GroupNorm's ``(weight, bias, eps)``: a GroupNormalization node's inputs,
    or the constants of the exporter's decomposition (Reshape -> InstanceNormalization ->
    Reshape -> Mul weight -> Add bias)."""
    node = next(n for n in graph.nodes if n.name == conv.norm)
    eps = float(attr(node, "epsilon", 1e-5))
    if node.op_type == "GroupNormalization":
        w, b = graph.const(node.input[1]), graph.const(node.input[2])
    else:
        w = b = None
        tensor = node.output[0]
        for _ in range(4):
            readers = [r for r in graph.readers(tensor) if r.op_type != "Shape"]
            if len(readers) != 1:
                break
            r = readers[0]
            other = [t for t in r.input if t != tensor]
            if r.op_type == "Mul" and other:
                w = graph.const(other[0])
            elif r.op_type == "Add" and other:
                b = graph.const(other[0])
            tensor = r.output[0]
    if w is None or b is None:
        raise WeightsError(f"{graph.where}: cannot read the GroupNorm after the {conv.role} "
                           f"conv at level {conv.level} (its scale and shift are not "
                           "constants)")
    return np.asarray(w, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1), eps


def _norm_node(graph: Graph, conv: ConvNode) -> _BatchNorm | None:
    """A present BatchNormalization's parameters (``scale, bias, mean, var, eps``)."""
    if conv.norm is None:
        return None
    node = next(n for n in graph.nodes if n.name == conv.norm)
    if node.op_type in ("InstanceNormalization", "GroupNormalization"):
        return None  # a GroupNorm: see _group_norm
    if node.op_type != "BatchNormalization":
        raise WeightsError(f"{graph.where}: the neck's norm is {node.op_type}; necktool takes "
                           "weights from convs with BatchNorm (present or folded) or no norm")
    values = [graph.const(t) for t in node.input[1:5]]
    if any(v is None for v in values):
        raise WeightsError(f"{graph.where}: BatchNormalization {node.name!r} has computed "
                           "parameters, not constants")
    scale, bias, mean, var = (np.asarray(v, dtype=np.float64) for v in values)
    return _BatchNorm(scale, bias, mean, var, float(attr(node, "epsilon", 1e-5)))


def detector_state_dict(graph: Graph, found: DetectorNeck,
                        model: nn.Module) -> dict[str, Any]:
    """A strict state dict for ``model`` (a neck built from a spec like ``found.spec``)
    taken from the detector's Conv (and BatchNorm) nodes.

    Raises:
        WeightsError: the model's tensors do not fit the file's neck (names the first).
    """
    import torch

    spec: NeckSpec = model.spec  # type: ignore[assignment]
    target = model.state_dict()
    state: dict[str, Any] = {}
    for conv in found.convs:
        ckey, nkey = conv_key(spec, conv)
        if f"{ckey}.weight" not in target:
            raise WeightsError(f"{graph.where}: the file's neck ({found.spec.label}, "
                               f"{len(found.convs)} convs) does not fit {spec.label}: no "
                               f"{conv.role} conv at level {conv.level} ({ckey})")
        w = np.asarray(graph.const(conv.weight), dtype=np.float64)
        b = np.asarray(graph.const(conv.bias), dtype=np.float64) if conv.bias \
            else np.zeros(w.shape[0])
        bn = _norm_node(graph, conv)
        has_bn = f"{nkey}.running_var" in target
        file_gn = conv.norm is not None and bn is None
        if f"{nkey}.weight" in target and not has_bn:  # the neck has GroupNorm
            if not file_gn:
                raise WeightsError(f"{graph.where}: {spec.label} has GroupNorm; the file's "
                                   f"neck has {'BatchNorm' if bn else 'no norm'} (build it "
                                   "with --norm bn or none)")
            gw, gb, _ = _group_norm(graph, conv)
            state |= {f"{nkey}.weight": gw, f"{nkey}.bias": gb}
        elif file_gn:
            raise WeightsError(f"{graph.where}: the file's neck has GroupNorm; build "
                               f"{spec.label} with --norm gn")
        if has_bn:
            eps = float(dict(model.named_modules())[nkey].eps)
            if bn is None:  # folded (or none): BatchNorm as the identity plus the bias
                shift, scale = b, np.ones_like(b)
                mean, var = np.zeros_like(b), np.full_like(b, identity_variance(eps))
            else:
                scale, shift, mean = bn.scale, bn.bias, bn.mean - b
                var = bn.var + bn.eps - eps
            state |= {f"{nkey}.weight": scale, f"{nkey}.bias": shift,
                      f"{nkey}.running_mean": mean, f"{nkey}.running_var": var}
            if f"{nkey}.num_batches_tracked" in target:
                state[f"{nkey}.num_batches_tracked"] = target[f"{nkey}.num_batches_tracked"]
        elif bn is not None:  # the file's BatchNorm folded into a norm-free conv
            k = bn.scale / np.sqrt(bn.var + bn.eps)
            w = w * k.reshape(-1, 1, 1, 1)
            b = (b - bn.mean) * k + bn.bias
        state[f"{ckey}.weight"] = w
        if f"{ckey}.bias" in target:
            state[f"{ckey}.bias"] = b
        elif conv.bias and bn is None and np.any(b != 0) and not has_bn:
            raise WeightsError(f"{graph.where}: the {conv.role} conv at level {conv.level} has "
                               f"a bias; {spec.label}'s conv has none and no norm to take it")
    out: dict[str, Any] = {}
    for key, value in state.items():
        want = target.get(key)
        if want is None:
            raise WeightsError(f"{graph.where}: the file's neck does not fit {spec.label}: "
                               f"{key} is not in the neck")
        tensor = value if isinstance(value, torch.Tensor) else \
            torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if tuple(tensor.shape) != tuple(want.shape):
            raise WeightsError(f"{graph.where}: the file's neck does not fit {spec.label}: "
                               f"{key} is {tuple(tensor.shape)} in the file, "
                               f"{tuple(want.shape)} in the neck")
        out[key] = tensor
    missing = [k for k in target if k not in out and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{graph.where}: the file's neck does not fit {spec.label}: "
                           f"nothing in the file for {missing[0]} (and {len(missing) - 1} more)")
    return out


def _sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_detector_weights(model: nn.Module, path: str | os.PathLike[str]) -> WeightSource:
    """Load the neck of detector ``path`` into ``model`` (strict), in place.

    Returns:
        Where the weights came from (path, SHA-256, and whether a norm was folded).

    Raises:
        InputError: an unreadable or hostile file, or no neck in it.
        WeightsError: the file's neck does not fit ``model``.
    """
    where = f"weights file {str(path)!r}"
    graph = read_graph(load_detector(path, "weights file"), where)
    found = find_in_graph(graph)
    state = detector_state_dict(graph, found, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"cannot load {where}: {first_line(exc, typed=False)}") \
            from None
    note = {"folded": "norm folded into the convs; loaded as identity BatchNorm plus the "
                      "conv bias", "present": "norm nodes in the graph", "none": None}
    return WeightSource("file", path=str(pathlib.Path(path).resolve()), sha256=_sha256(path),
                        note=note[found.norm_state])
