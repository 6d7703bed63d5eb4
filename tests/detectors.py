"""Small face detectors exported to ONNX the ways released ones were, for the detector tests.

A detector here is a strided-conv backbone (BatchNorm, ReLU; levels at strides 8/16/32), a
neck of one necktool family built with :func:`necktool.necks.weights.seeded_model` (so its
weights are known), and a per-level head (a 3x3 conv, then a score and a box conv). It is
exported with the TorchScript exporter (opset 11, or 9 for ``Upsample``) or the dynamo
exporter, and variants are derived with ``onnx`` the way released files differ:

* names kept, numbered (``onnx::Conv_578``), or all rewritten (hashed);
* BatchNorm folded into the convs (TorchScript's eval export) or kept (``PRESERVE``);
* two equal biases deduplicated into one initializer shared by two Conv nodes, as in the
  insightface SCRFD files (``fpn_convs.1`` takes ``downsample_convs.0``'s bias);
* static ``[1, 3, H, W]`` or dynamic ``[1, 3, ?, ?]`` input (computed-size ``Resize``);
* decoding fused into one output;

plus a classifier (no neck) and hostile files. Nothing here is a test; the fixtures in
``tests/test_detector_*.py`` build these once per session.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import itertools
import pathlib
import warnings
from collections.abc import Sequence

import onnx
import torch
from torch import nn

from necktool.necks.weights import seeded_model
from necktool.spec.fields import Activation, ExtraConvs, Norm
from necktool.spec.neck_spec import NeckSpec

SIZE = (128, 128)  # small, and every level even (8 -> 16x16, 32 -> 4x4)
BACKBONE = (16, 24, 32)  # channels at strides 8, 16, 32


def spec_of(kind: str) -> NeckSpec:
    """The neck spec of each test detector (``kind``)."""
    common = {"input_size": SIZE}
    if kind == "retinaface":  # Pytorch_Retinaface's FPN: BN + LeakyReLU(0.1)
        return NeckSpec("fpn", BACKBONE, 16, Norm.BN, Activation.LEAKY_RELU, leaky_slope=0.1,
                        **common)
    if kind == "scrfd":  # the released SCRFD neck: mmdet PAFPN, no norm, one extra level
        return NeckSpec("mmdet_pafpn", BACKBONE, 16, Norm.NONE, Activation.NONE, num_outs=4,
                        extra_convs=ExtraConvs.ON_OUTPUT, **common)
    if kind == "scrfd3":  # as insightface ships it: num_outs 3
        return NeckSpec("mmdet_pafpn", BACKBONE, 16, Norm.NONE, Activation.NONE, num_outs=3,
                        extra_convs=ExtraConvs.ON_OUTPUT, **common)
    if kind == "retinanet":  # mmdetection FPN, extra levels on the input (P6, P7)
        return NeckSpec("mmdet_fpn", BACKBONE, 16, Norm.NONE, Activation.NONE, num_outs=5,
                        extra_convs=ExtraConvs.ON_INPUT, **common)
    if kind == "seed":  # the SCRFD seed PAFPN, BatchNorm variant (foldable)
        return NeckSpec("pafpn", BACKBONE, 16, Norm.BN, Activation.RELU, **common)
    if kind == "scrfd_2.5g":  # the released SCRFD_2.5G neck, exactly
        from necktool.spec.registry import PRESETS

        return PRESETS["insightface_scrfd_2.5g"].spec.replace(input_size=SIZE)
    if kind == "seed_gn":  # the SCRFD seed PAFPN as designed: GroupNorm (exported decomposed)
        return NeckSpec("pafpn", BACKBONE, 16, Norm.GN, Activation.RELU, **common)
    raise KeyError(kind)


#: every variant of :func:`suite`: name -> (kind, static, norm state)
VARIANTS = {
    "retinaface_ts": ("retinaface", True, "folded"),
    "retinaface_bn_dynamic": ("retinaface", False, "present"),
    "retinaface_opset9": ("retinaface", True, "folded"),
    "retinaface_rewritten": ("retinaface", True, "folded"),
    "retinaface_fused": ("retinaface", True, "folded"),
    "scrfd_dedup": ("scrfd3", True, "none"),
    "scrfd_identity": ("scrfd3", True, "none"),
    "scrfd_numbered": ("scrfd3", True, "none"),
    "scrfd_dynamic": ("scrfd3", False, "none"),
    "scrfd_extra_dynamo": ("scrfd", False, "none"),
    "scrfd_2.5g": ("scrfd_2.5g", True, "none"),
    "retinanet_ts": ("retinanet", True, "none"),
    "seed_numbered": ("seed", True, "folded"),
    "seed_bn": ("seed", True, "present"),
    "seed_gn": ("seed_gn", True, "present"),
}


class Backbone(nn.Module):
    """Stride-2 conv + BN + ReLU blocks; returns the stride 8, 16 and 32 maps."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        widths = [3, 8, 8, *channels]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in itertools.pairwise(widths))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[2:]


class Head(nn.Module):
    """Per level: 3x3 conv + ReLU, then a 2-channel score and a 4-channel box conv."""

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1),
                                                 nn.ReLU()) for _ in range(levels))
        self.scores = nn.ModuleList(nn.Conv2d(channels, 2, 1) for _ in range(levels))
        self.boxes = nn.ModuleList(nn.Conv2d(channels, 4, 1) for _ in range(levels))


class Detector(nn.Module):
    """Backbone, neck, head; outputs per level (score, box), or one decoded tensor."""

    def __init__(self, spec: NeckSpec, *, seed: int = 0, fused: bool = False) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.backbone = Backbone(spec.in_channels)
            self.head = Head(spec.out_channels, spec.num_levels)
            for m in self.modules():  # trained-looking BN statistics, so folding matters
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.data.uniform_(0.5, 1.5)
                    m.bias.data.uniform_(-0.2, 0.2)
        self.neck = seeded_model(spec, seed)
        self.fused = fused
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.neck(self.backbone(x))
        outs: list[torch.Tensor] = []
        for i, f in enumerate(feats):
            h = self.head.convs[i](f)
            outs += [self.head.scores[i](h), self.head.boxes[i](h)]
        if not self.fused:
            return tuple(outs)
        flat = [o.permute(0, 2, 3, 1).reshape(1, -1, o.shape[1]) for o in outs]
        scores = torch.cat(flat[0::2], 1).sigmoid()
        boxes = torch.cat(flat[1::2], 1) * 8.0
        return (torch.cat([scores, boxes], 2),)


def output_names(spec: NeckSpec) -> list[str]:
    strides = [8 * 2 ** i for i in range(spec.num_levels)]
    return [f"{what}_{s}" for s in strides for what in ("score", "bbox")]


def export_torchscript(model: nn.Module, *, opset: int = 11, dynamic: bool = False,
                       fold_bn: bool = True, size: tuple[int, int] = SIZE) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=False)``; ``fold_bn=False`` keeps BatchNormalization nodes
    (``TrainingMode.PRESERVE`` of an eval-mode model skips the exporter's Conv+BN fusion)."""
    x = torch.randn(1, 3, *size)
    fused = getattr(model, "fused", False)
    names = ["output"] if fused else output_names(model.neck.spec)  # type: ignore[union-attr]
    buf = io.BytesIO()
    kwargs = {}
    if dynamic:
        kwargs["dynamic_axes"] = {"input.1": {2: "height", 3: "width"}}
    training = torch.onnx.TrainingMode.EVAL if fold_bn else torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset,
                          input_names=["input.1"], output_names=names, training=training,
                          do_constant_folding=fold_bn, **kwargs)
    return onnx.load_from_string(buf.getvalue())


def export_dynamo(model: nn.Module, *, dynamic: bool = False,
                  size: tuple[int, int] = SIZE, opset: int | None = None) -> onnx.ModelProto:
    """``torch.onnx.export(dynamo=True)``, as a recent PyTorch exports."""
    import logging

    x = torch.randn(1, 3, *size)
    shapes = None
    if dynamic:
        dim = torch.export.Dim.AUTO
        shapes = ({2: dim, 3: dim},)
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), \
                contextlib_redirect():
            warnings.simplefilter("ignore")
            kwargs = {} if opset is None else {"opset_version": opset}
            program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=shapes,
                                        verbose=False, **kwargs)
    finally:
        logging.disable(logging.NOTSET)
    assert program is not None
    return program.model_proto


def contextlib_redirect():  # type: ignore[no-untyped-def]
    import contextlib
    import os

    stack = contextlib.ExitStack()
    devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
    stack.enter_context(contextlib.redirect_stdout(devnull))
    stack.enter_context(contextlib.redirect_stderr(devnull))
    return stack


# -- variants derived with onnx -----------------------------------------------------------
def _rename(model: onnx.ModelProto, mapping: dict[str, str]) -> onnx.ModelProto:
    out = copy.deepcopy(model)
    g = out.graph
    for init in g.initializer:
        init.name = mapping.get(init.name, init.name)
    for vi in [*g.input, *g.output, *g.value_info]:
        vi.name = mapping.get(vi.name, vi.name)
    for node in g.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    return out


def _all_names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    names = [i.name for i in g.initializer]
    for node in g.node:
        names += [n for n in [*node.input, *node.output] if n]
    names += [i.name for i in g.input] + [o.name for o in g.output]
    return list(dict.fromkeys(names))


def numbered(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer ``onnx::Conv_N`` and every other tensor a bare number, nodes
    ``node_Op_N`` (graph inputs and outputs keep their names, as exporters do)."""
    keep = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    inits = {i.name for i in model.graph.initializer}
    mapping = {}
    for n, name in enumerate(_all_names(model)):
        if name in keep:
            continue
        mapping[name] = f"onnx::Conv_{500 + n}" if name in inits else str(500 + n)
    out = _rename(model, mapping)
    for n, node in enumerate(out.graph.node):
        node.name = f"node_{node.op_type}_{n}"
    return out


def rewritten(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every name (inputs and outputs too, nodes too) replaced by a hash of it."""
    mapping = {n: "t" + hashlib.sha256(n.encode()).hexdigest()[:10] for n in _all_names(model)}
    out = _rename(model, mapping)
    for node in out.graph.node:
        node.name = "n" + hashlib.sha256(node.name.encode()).hexdigest()[:10]
        del node.metadata_props[:]
    return out


def conv_by_weight(model: onnx.ModelProto, weight: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] == weight)


def deduplicated(model: onnx.ModelProto, keep_bias_of: str, drop_bias_of: str) -> onnx.ModelProto:
    """The Conv with weight ``drop_bias_of`` reads the bias initializer of the one with
    weight ``keep_bias_of`` directly (the two are equal), and its own bias no longer exists.

    The TorchScript exporter already deduplicates equal initializers, but through an
    ``Identity`` node; this is the form of the released SCRFD files: one tensor, named
    after ``keep_bias_of``'s conv, read by two Conv nodes.
    """
    out = copy.deepcopy(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    aliases = {n.output[0]: n.input[0] for n in g.node
               if n.op_type == "Identity" and n.input[0] in inits}
    keep, drop = conv_by_weight(out, keep_bias_of), conv_by_weight(out, drop_bias_of)
    a = aliases.get(keep.input[2], keep.input[2])
    b = aliases.get(drop.input[2], drop.input[2])
    arrays = [onnx.numpy_helper.to_array(inits[n]) for n in (a, b)]
    assert (arrays[0] == arrays[1]).all(), "only equal biases are deduplicated"
    shared, kept_name = inits[a], keep.input[2]
    identities = (keep.input[2], drop.input[2])
    keep.input[2] = drop.input[2] = kept_name
    kept_nodes = [n for n in g.node if not (n.op_type == "Identity"
                                             and n.output[0] in identities)]
    del g.node[:]
    g.node.extend(kept_nodes)
    old = {a, b}
    rest = [i for i in g.initializer if i.name not in old]
    shared.name = kept_name
    del g.initializer[:]
    g.initializer.extend([*rest, shared])
    return out


def equal_biases(model: Detector, a: str, b: str) -> None:
    """Give neck submodules ``a`` and ``b`` (``fpn_convs.1.conv``) the same bias, as
    training leaves mmdetection PAFPN's ``fpn_convs[i+1]`` and ``downsample_convs[i]``."""
    mods = dict(model.neck.named_modules())
    with torch.no_grad():
        mods[b].bias.copy_(mods[a].bias)


def classifier() -> nn.Module:
    """An image classifier: strided convs, global pooling, a linear layer (no neck)."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                         nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def export_plain(model: nn.Module, size: tuple[int, int] = SIZE) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, *size),), buf, dynamo=False,
                          opset_version=11, input_names=["input"], output_names=["logits"])
    return onnx.load_from_string(buf.getvalue())


@dataclasses.dataclass
class Built:
    """One test detector: the torch model (its neck holds the known weights), the spec, the
    ONNX model, and where it was saved."""

    model: Detector
    spec: NeckSpec
    proto: onnx.ModelProto
    path: pathlib.Path


def save(proto: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    onnx.save(proto, str(path))
    return path


# -- the suite the tests share, built once per process ------------------------------------
@dataclasses.dataclass
class Suite:
    """Every test detector file, by variant name, and the torch models they came from."""

    root: pathlib.Path
    files: dict[str, pathlib.Path]
    models: dict[str, Detector]
    kinds: dict[str, str]  # variant -> kind (spec_of)
    static: dict[str, bool]


_SUITE: Suite | None = None


def suite() -> Suite:
    """Build (once per process) and save every variant under a temporary directory."""
    global _SUITE
    if _SUITE is not None:
        return _SUITE
    import atexit
    import shutil
    import tempfile

    root = pathlib.Path(tempfile.mkdtemp(prefix="necktool-detectors-"))
    atexit.register(shutil.rmtree, root, True)
    files: dict[str, pathlib.Path] = {}
    models: dict[str, Detector] = {}
    kinds: dict[str, str] = {}
    static: dict[str, bool] = {}

    def add(name: str, kind: str, model: Detector, proto: onnx.ModelProto,
            is_static: bool = True) -> None:
        files[name] = save(proto, root / f"{name}.onnx")
        models[name], kinds[name], static[name] = model, kind, is_static

    # RetinaFace: TorchScript opset 11 (BN folded, numbered initializers), BN kept + dynamic,
    # opset-9 Upsample, all names rewritten, decoding fused; the dynamo exporter.
    retina = Detector(spec_of("retinaface"))
    ts = export_torchscript(retina)
    add("retinaface_ts", "retinaface", retina, ts)
    add("retinaface_bn_dynamic", "retinaface", retina,
        export_torchscript(retina, fold_bn=False, dynamic=True), False)
    add("retinaface_opset9", "retinaface", retina, export_torchscript(retina, opset=9))
    add("retinaface_rewritten", "retinaface", retina, rewritten(ts))
    fused = Detector(spec_of("retinaface"), fused=True)
    # decoding fused into one output; opset 17, then converted to 21 with onnx
    from onnx import version_converter

    add("retinaface_fused", "retinaface", fused, version_converter.convert_version(
        export_torchscript(fused, opset=17), 21))
    # SCRFD as insightface ships it: equal fpn_convs.1 / downsample_convs.0 biases
    # deduplicated; numbered; dynamic; and the dynamo exporter with a dynamic input.
    scrfd = Detector(spec_of("scrfd3"))
    equal_biases(scrfd, "downsample_convs.0.conv", "fpn_convs.1.conv")
    sts = export_torchscript(scrfd, opset=12)
    dedup = deduplicated(sts, "neck.downsample_convs.0.conv.weight",
                         "neck.fpn_convs.1.conv.weight")
    add("scrfd_dedup", "scrfd3", scrfd, dedup)
    add("scrfd_identity", "scrfd3", scrfd, sts)  # the exporter's own Identity dedup
    add("scrfd_numbered", "scrfd3", scrfd, numbered(dedup))
    add("scrfd_dynamic", "scrfd3", scrfd, export_torchscript(scrfd, dynamic=True), False)
    extra = Detector(spec_of("scrfd"))
    add("scrfd_extra_dynamo", "scrfd", extra, export_dynamo(extra, dynamic=True), False)
    tier = Detector(spec_of("scrfd_2.5g"))
    add("scrfd_2.5g", "scrfd_2.5g", tier, export_torchscript(tier, dynamic=False))
    # RetinaNet-like mmdetection FPN (P6, P7 on the input) and the SCRFD seed PAFPN (BN).
    net = Detector(spec_of("retinanet"))
    add("retinanet_ts", "retinanet", net, export_torchscript(net))
    seed = Detector(spec_of("seed"))
    add("seed_numbered", "seed", seed, numbered(export_torchscript(seed)))
    add("seed_bn", "seed", seed, export_torchscript(seed, fold_bn=False))
    gn = Detector(spec_of("seed_gn"))
    add("seed_gn", "seed_gn", gn, export_torchscript(gn))
    files["classifier"] = save(export_plain(classifier()), root / "classifier.onnx")
    assert set(VARIANTS) == set(models), set(VARIANTS) ^ set(models)
    _SUITE = Suite(root, files, models, kinds, static)
    return _SUITE
