"""The neck families, each registered once (torch-free).

A family is a name, a builder named by import path (imported only when a neck is built),
the spec fields it accepts, and the key layout of its weights in a checkpoint. The
``Family`` choices, help texts and "valid: ..." lists are all derived from here.

Adding a family: write its module (an ``nn.Module`` built from a
:class:`~necktool.spec.neck_spec.NeckSpec`) and register it below; nothing else in necktool changes.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from necktool.errors import SpecError
from necktool.spec import bounds
from necktool.spec.fields import FIELD, Norm

Shapes = Mapping[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class Inferred:
    """What a state dict's tensor shapes say about a neck of one family.

    Attributes:
        fields: Spec fields (``in_channels``, ``out_channels``, ``norm``, ...). Where the
            weights are silent (an activation, a max-pool level) they hold the origin
            code's default, and ``notes`` says so.
        notes: One line per thing the weights cannot tell, and what was assumed.
    """

    fields: dict[str, Any]
    notes: tuple[str, ...] = ()


def lateral_weights(shapes: Shapes, key: Callable[[int], str]) -> list[tuple[int, ...]] | None:
    """The 1x1 lateral conv weights level by level (``key(i)`` names level ``i``'s), the
    part of a layout every family shares; ``None`` unless there are two or more."""
    laterals: list[tuple[int, ...]] = []
    while key(len(laterals)) in shapes:
        laterals.append(shapes[key(len(laterals))])
    if len(laterals) < 2 or any(len(s) != 4 or s[2:] != (1, 1) for s in laterals):
        return None
    return laterals


def norm_from(shapes: Shapes, bn_key: str, gn_key: str) -> Norm:
    """BatchNorm when its running statistics are there, GroupNorm when only an affine
    weight is, else none."""
    return Norm.BN if bn_key in shapes else Norm.GN if gn_key in shapes else Norm.NONE


@dataclasses.dataclass(frozen=True)
class KeyLayout:
    """How a family's weights are named in a checkpoint.

    Attributes:
        markers: Key suffixes present in every neck of the family (relative to the neck's
            own root), enough to recognise it under any prefix. The first one anchors the
            search: the part of a key before it is the candidate prefix.
        origin: The code whose key names these are, for messages.
        infer: Import path of ``infer(shapes: dict[str, tuple[int, ...]]) -> Inferred |
            None`` reading the spec fields from the tensor shapes of a state dict (keys
            relative to the neck's root); ``None`` when the shapes are not this family's.
        whole_model: The neck's keys sit among the whole detector's (YOLO's ``model.<i>.``,
            the yaml's layer index): ``infer`` reads the whole state dict, and only the
            neck's own keys are compared and loaded.
        pickled: The whole-model pickles the authors release (never unpickled: named in
            a message that says how to reach the neck).
    """

    markers: tuple[str, ...]
    origin: str
    infer: str | None = None
    whole_model: bool = False
    pickled: tuple[PickledModel, ...] = ()


@dataclasses.dataclass(frozen=True)
class PickledModel:
    """A whole model the authors pickle as a checkpoint (``torch.save(model)``), which
    necktool never unpickles: recognised by the class its pickle names, read without
    running it.

    Attributes:
        global_name: The class the pickle would call (``models.yolo.Model``).
        what: What the file is, for the message.
        export: How to get an ONNX file of it with the authors' tool (``{file}``: the path).
    """

    global_name: str
    what: str
    export: str


@dataclasses.dataclass(frozen=True)
class ImageNorm:
    """How the detectors of a family turn an image into the backbone's input:
    ``(pixel - mean) / std`` per channel, in BGR or RGB order."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool
    origin: str  # whose preprocessing this is, for messages and docs


class LevelRelation(enum.StrEnum):
    """How the input levels' sizes relate in a dynamic file."""

    INDEPENDENT = "independent"  # each level's H and W is free
    ONE_IMAGE = "one-image"  # the ceil(H/stride) sizes of one image
    TIED = "tied"  # 2**(n-1-k) * H_div{S}: written into the file's dimensions


@dataclasses.dataclass(frozen=True)
class FamilyInfo:
    """One registered family.

    Attributes:
        name: The family name (``spec.family``).
        description: One line for help texts.
        builder: Import path ``package.module:attr`` of a callable ``attr(spec) -> nn.Module``.
        fields: The spec fields this family accepts; any other is an error when given.
        layout: Its checkpoint key layout, if it has a fixed one. ``whole_model``: the
            neck's keys sit among the whole detector's (YOLO's ``model.<i>.``), so only the
            neck's own are compared and loaded.
        preprocess: The image preprocessing of the detectors it comes from (``--images``).
        param_bound: An upper bound of the neck's parameters from its spec, without
            building it (memory checks before a build), ``param_bound(spec) -> int``.
        check: Rules of the family a spec must follow beyond the fields' own ranges:
            ``check(spec)`` returns what is wrong, or ``None``.
        conv_keys: Import path of ``conv_keys(spec, role, level) -> (conv path, norm
            path)``: the module of the neck a Conv node found in a detector ONNX file
            (:mod:`necktool.detector.neck`, by role and level) loads into.
        needs_factory: The spec names the user's own factory (the ``custom`` family).
        levels: How a dynamic ONNX file's input levels relate (:class:`LevelRelation`):
            ``INDEPENDENT`` when nothing ties their sizes (every image size, and other
            level sizes, run), ``ONE_IMAGE`` when a bottom-up path ties them to one image's
            ``ceil(H/stride)`` sizes; ``None``: unknown, so an export first runs the module
            at an odd image size in PyTorch and serves every size only if that works.
    """

    name: str
    description: str
    builder: str
    fields: tuple[str, ...]
    layout: KeyLayout | None = None
    needs_factory: bool = False
    levels: LevelRelation | None = None
    preprocess: ImageNorm | None = None
    param_bound: Callable[[Any], int] | None = None
    check: Callable[[Any], str | None] | None = None
    conv_keys: str | None = None

    def __post_init__(self) -> None:
        unknown = [f for f in self.fields if f not in FIELD or not FIELD[f].in_spec]
        if unknown:
            raise ValueError(f"family {self.name!r} names unknown spec fields {unknown}")

    def takes(self, field: str) -> bool:
        return field in self.fields

    def load_builder(self) -> Callable[[Any], Any]:
        """Import the builder, ``builder(spec) -> nn.Module`` (where torch gets imported)."""
        return load(self.builder)

    def image_norm(self) -> ImageNorm:
        """The declared preprocessing; a family that declares none is named in the error."""
        if self.preprocess is None:
            raise SpecError(f"family {self.name!r} declares no image preprocessing; give "
                            "--mean, --std and --bgr with --images, or register the family "
                            "with preprocess=ImageNorm(...)")
        return self.preprocess

    def bound_params(self, spec: Any) -> int:
        """The declared parameter bound of ``spec``; a family that declares none is named."""
        if self.param_bound is None:
            raise SpecError(f"family {self.name!r} declares no parameter bound "
                            "(register it with param_bound=...)")
        return self.param_bound(spec)

    def load_conv_keys(self) -> Callable[[Any, str, int], tuple[str, str]]:
        """The declared detector-conv key mapping; a family that declares none is named."""
        if self.conv_keys is None:
            raise SpecError(f"family {self.name!r} declares no module layout for a detector "
                            "file's neck convs (register it with conv_keys=...)")
        return load(self.conv_keys)


FAMILIES: dict[str, FamilyInfo] = {}


def register_family(info: FamilyInfo) -> FamilyInfo:
    """Add a family; registering a name twice is an error, never a silent overwrite."""
    if info.name in FAMILIES:
        raise ValueError(f"family {info.name!r} is already registered")
    FAMILIES[info.name] = info
    return info


def pickled_model(globals_called: list[str]) -> PickledModel | None:
    """The registered whole model a pickle's globals name, if any."""
    for info in FAMILIES.values():
        for model in info.layout.pickled if info.layout else ():
            if model.global_name in globals_called:
                return model
    return None


def get_family(name: str) -> FamilyInfo:
    try:
        return FAMILIES[str(name)]
    except KeyError:
        raise SpecError(f"unknown family {str(name)!r}; valid: {', '.join(FAMILIES)}") from None


def families_taking(field: str) -> list[str]:
    """The families that accept spec field ``field``, in registration order."""
    return [f.name for f in FAMILIES.values() if f.takes(field)]


def load(path: str) -> Any:
    """Import ``package.module:attr`` (a builder or a layout's ``infer``)."""
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# -- the built-in families -------------------------------------------------------------
# The preprocessing of the detectors each family comes from.
SCRFD_PIXELS = ImageNorm((127.5, 127.5, 127.5), (128.0, 128.0, 128.0), bgr=False,
                         origin="SCRFD (insightface)")
RETINAFACE_PIXELS = ImageNorm((104.0, 117.0, 123.0), (1.0, 1.0, 1.0), bgr=True,
                              origin="RetinaFace (Pytorch_Retinaface)")
IMAGENET_PIXELS = ImageNorm((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), bgr=False,
                            origin="mmdetection's ImageNet mean and std")
YUNET_PIXELS = ImageNorm((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), bgr=True,
                         origin="YuNet (libfacedetection, OpenCV FaceDetectorYN): raw BGR 0-255")
YOLO_PIXELS = ImageNorm((0.0, 0.0, 0.0), (255.0, 255.0, 255.0), bgr=False,
                        origin="YOLO5Face / ultralytics: RGB / 255")


def _bn_or_none(spec: Any) -> str | None:
    if spec.norm not in (Norm.BN, Norm.NONE):
        return (f"--norm {spec.norm} is not an option here; the authors' blocks have "
                "BatchNorm (bn), or none (the convs then carry a bias, as after fusing)")
    return None


def _tfpn_check(spec: Any) -> str | None:
    # Each level is added to the upsampled unit output of the next before its own unit runs,
    # so every input level but the coarsest must already have out_channels channels.
    wrong = [c for c in spec.in_channels[:-1] if c != spec.out_channels]
    if wrong:
        return (f"in_channels {list(spec.in_channels)}: every level but the coarsest is "
                f"added to a {spec.out_channels}-channel map, so it needs "
                f"{spec.out_channels} channels (--out-channels); got {wrong[0]}")
    return _bn_or_none(spec)


_SEED_FIELDS = ("in_channels", "out_channels", "norm", "gn_groups", "act", "leaky_slope",
                "input_size")

register_family(FamilyInfo(
    name="fpn",
    description="RetinaFace's FPN (Pytorch_Retinaface models/net.py)",
    builder="necktool.necks.retinaface:RetinaFaceFPN",
    fields=_SEED_FIELDS,
    layout=KeyLayout(markers=("output1.0.weight", "output2.0.weight", "merge1.0.weight"),
                     origin="Pytorch_Retinaface models/net.py FPN",
                     infer="necktool.necks.retinaface:infer"),
    levels=LevelRelation.INDEPENDENT,  # levels meet only through interpolate(size=finer level)
    preprocess=RETINAFACE_PIXELS,
    param_bound=bounds.conv_stack,
    conv_keys="necktool.necks.retinaface:conv_keys",
))
register_family(FamilyInfo(
    name="pafpn",
    description="SCRFD's path-aggregation FPN (the seed's GroupNorm design)",
    builder="necktool.necks.pafpn:PAFPN",
    fields=_SEED_FIELDS,
    layout=KeyLayout(markers=("lateral_convs.0.", "td_convs.0.", "bu_convs.0.",
                              "bu_out_convs.0."),
                     origin="the SCRFD seed's PAFPN",
                     infer="necktool.necks.pafpn:infer"),
    levels=LevelRelation.ONE_IMAGE,  # bottom-up stride-2 convs are added to the next level
    preprocess=SCRFD_PIXELS,
    param_bound=bounds.conv_stack,
    conv_keys="necktool.necks.pafpn:conv_keys",
))
_MMDET_FIELDS = (*_SEED_FIELDS[:-1], "num_outs", "extra_convs", "relu_before_extra_convs",
                 "input_size")
register_family(FamilyInfo(
    name="mmdet_fpn",
    description="mmdetection's FPN (RetinaNet, TinaFace), with extra levels",
    builder="necktool.necks.mmdet:MMDetFPN",
    fields=_MMDET_FIELDS,
    layout=KeyLayout(markers=("lateral_convs.0.conv.weight", "fpn_convs.0.conv.weight"),
                     origin="mmdetection mmdet/models/necks/fpn.py",
                     infer="necktool.necks.mmdet:infer_fpn"),
    levels=LevelRelation.INDEPENDENT,  # interpolate(size=finer level); extras from the coarsest
    preprocess=IMAGENET_PIXELS,
    param_bound=bounds.conv_stack,
    conv_keys="necktool.necks.mmdet:conv_keys",
))
register_family(FamilyInfo(
    name="mmdet_pafpn",
    description="mmdetection's PAFPN, as in the released SCRFD detectors",
    builder="necktool.necks.mmdet:MMDetPAFPN",
    fields=_MMDET_FIELDS,
    layout=KeyLayout(markers=("lateral_convs.0.conv.weight", "fpn_convs.0.conv.weight",
                              "downsample_convs.0.conv.weight", "pafpn_convs.0.conv.weight"),
                     origin="mmdetection mmdet/models/necks/pafpn.py",
                     infer="necktool.necks.mmdet:infer_pafpn"),
    levels=LevelRelation.ONE_IMAGE,  # bottom-up stride-2 convs are added to the next level
    preprocess=SCRFD_PIXELS,
    param_bound=bounds.conv_stack,
    conv_keys="necktool.necks.mmdet:conv_keys",
))
register_family(FamilyInfo(
    name="custom",
    description="your own module, named by an import path package.module:factory",
    builder="necktool.necks.custom:build_custom",
    fields=("in_channels", "out_channels", "input_size"),
    needs_factory=True,
    preprocess=IMAGENET_PIXELS,
    param_bound=bounds.conv_stack,
))
register_family(FamilyInfo(
    name="yunet",
    description="YuNet's top-down TFPN (libfacedetection.train): depthwise-separable units, "
                "Add merges",
    builder="necktool.necks.yunet:TFPN",
    fields=("in_channels", "out_channels", "norm", "act", "input_size"),
    layout=KeyLayout(markers=("lateral_convs.0.conv1.weight", "lateral_convs.0.conv2.weight"),
                     origin="libfacedetection.train mmdet/models/necks/tfpn.py",
                     infer="necktool.necks.yunet:infer"),
    levels=LevelRelation.INDEPENDENT,  # levels meet only through interpolate(size=finer level)
    preprocess=YUNET_PIXELS,
    param_bound=bounds.dpu_stack,
    check=_tfpn_check,
))
_YOLO_FIELDS = ("in_channels", "out_channels", "widths", "repeats", "norm", "act",
                "first_layer", "input_size")
register_family(FamilyInfo(
    name="yolo5face",
    description="YOLO5Face's C3 PAN (deepcam-cn/yolov5-face): lateral 1x1s, Concat merges",
    builder="necktool.necks.yolo:C3PAN",
    fields=_YOLO_FIELDS,
    layout=KeyLayout(markers=("model.",), origin="deepcam-cn/yolov5-face models/yolo.py "
                     "(model.<i>. state dicts)", infer="necktool.necks.yolo:infer_c3",
                     whole_model=True, pickled=(PickledModel(
                         "models.yolo.Model", "a pickled YOLO5Face whole model "
                         "(deepcam-cn/yolov5-face models.yolo.Model)",
                         "python export.py --weights {file} (yolov5-face), then necktool "
                         "inspect the .onnx it writes"),)),
    levels=LevelRelation.ONE_IMAGE,  # bottom-up stride-2 convs are concatenated
    preprocess=YOLO_PIXELS,
    param_bound=bounds.csp_pan,
    check=_bn_or_none,
))
register_family(FamilyInfo(
    name="yolov8",
    description="the YOLOv8 C2f PAN (ultralytics, yolov8-face): no laterals, Concat merges",
    builder="necktool.necks.yolo:C2fPAN",
    fields=_YOLO_FIELDS,
    layout=KeyLayout(markers=("model.",), origin="ultralytics nn/tasks.py "
                     "(model.<i>. state dicts)", infer="necktool.necks.yolo:infer_c2f",
                     whole_model=True, pickled=tuple(PickledModel(
                         f"ultralytics.nn.tasks.{cls}", f"a pickled ultralytics whole model "
                         f"(ultralytics.nn.tasks.{cls}; YOLOv8 / yolov8-face)",
                         "yolo export model={file} format=onnx (ultralytics, or the "
                         "yolov8-face repo's copy), then necktool inspect the .onnx it writes")
                         for cls in ("DetectionModel", "PoseModel"))),
    levels=LevelRelation.ONE_IMAGE,
    preprocess=YOLO_PIXELS,
    param_bound=bounds.csp_pan,
    check=_bn_or_none,
))
register_family(FamilyInfo(
    name="yolov8_lite",
    description="yolov8-lite (derronqi/yolov8-face): Concat top-down, Add bottom-up, "
                "depthwise-separable blocks",
    builder="necktool.necks.yolo:LitePAN",
    fields=("in_channels", "out_channels", "norm", "act", "first_layer", "input_size"),
    layout=KeyLayout(markers=("model.",), origin="derronqi/yolov8-face yolov8-lite "
                     "(model.<i>. state dicts)", infer="necktool.necks.yolo:infer_lite",
                     whole_model=True),
    levels=LevelRelation.ONE_IMAGE,
    preprocess=YOLO_PIXELS,
    param_bound=bounds.dw_pan,
    check=_bn_or_none,
))

#: The registered families as an enum (``Family("pafpn")``), derived from the registry.
Family = enum.StrEnum("Family", {name.upper(): name for name in FAMILIES})  # type: ignore[misc]
