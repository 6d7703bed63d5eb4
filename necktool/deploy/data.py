"""Representative neck inputs from the user's data (torch-free): feature sets from ``.npz``
files, or from images run through a backbone ONNX file in ONNX Runtime; split into a
calibration part and a held-out part.

A *feature set* is one forward's inputs: one float32 array per input level,
``(batch, C_k, H_k, W_k)``. Sets are checked against the neck once, here: the level count,
each level's channels, one batch for all levels, finite values, and for a family whose
levels are tied (:attr:`~necktool.spec.families.LevelRelation.ONE_IMAGE`) sizes that are the
``ceil(H/s_k)`` sizes of one image ``H x W``.

Images are read with Pillow, whose decompression-bomb limit is kept on (a bomb is an
error, not a warning), converted to RGB (or BGR), normalised per family
(:func:`default_preprocess`) and fed to the backbone cut at the neck's inputs with
``onnx.utils.Extractor``.

The split is deterministic: the sets are sorted by name and a ``numpy`` generator seeded
with :data:`SPLIT_SEED` picks ``round(n * holdout)`` of them (at least one when
``holdout > 0``) for verification; calibration never sees them.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import warnings
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from necktool.errors import InputError, SpecError
from necktool.spec.families import LevelRelation, get_family

if TYPE_CHECKING:  # numpy loads with the data, not with the CLI's options
    import numpy as np
    import onnx

    from necktool.spec.neck_spec import NeckSpec

DEFAULT_HOLDOUT = 0.25
SPLIT_SEED = 0
MAX_FEATURE_BYTES = 2 ** 30  # all arrays of one .npz, uncompressed
MAX_SETS = 1000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SYNTHETIC = "synthetic normal inputs"
SYNTHETIC_NOTE = ("int8 was calibrated and verified on synthetic normal inputs; backbone "
                  "features are non-negative, skewed and heavy-tailed, so calibrate int8 on "
                  "real features (--calibration-data or --images with --backbone)")


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """One forward's neck inputs, finest level first, and where they came from."""

    name: str
    arrays: tuple[np.ndarray, ...]

    @property
    def batch(self) -> int:
        return int(self.arrays[0].shape[0])

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(a.shape[2]), int(a.shape[3])) for a in self.arrays)

    def feeds(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        return dict(zip(names, self.arrays, strict=True))


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How an image becomes a backbone input: ``(pixel - mean) / std`` per channel, in RGB
    or BGR order, optionally resized to ``size`` (H, W) first."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool
    size: tuple[int, int] | None = None

    def describe(self) -> str:
        order = "BGR" if self.bgr else "RGB"
        size = f", resized to {self.size[0]}x{self.size[1]}" if self.size else ", own size"
        return (f"{order}, (x - ({', '.join(f'{m:g}' for m in self.mean)})) / "
                f"({', '.join(f'{s:g}' for s in self.std)}){size}")


def default_preprocess(family: str) -> Preprocess:
    """The preprocessing of the detectors a family comes from, as the family declares it
    (:class:`~necktool.spec.families.ImageNorm`): SCRFD RGB ``(x - 127.5) / 128``,
    RetinaFace BGR minus ``(104, 117, 123)``, YuNet raw BGR, the YOLO faces RGB / 255...

    Raises:
        SpecError: the family declares none (it is named).
    """
    norm = get_family(family).image_norm()
    return Preprocess(norm.mean, norm.std, bgr=norm.bgr)


@dataclasses.dataclass(frozen=True)
class Data:
    """Feature sets split into calibration and held-out verification."""

    origin: str  # "images" or "npz"
    calibration: tuple[FeatureSet, ...]
    holdout: tuple[FeatureSet, ...]
    source: str  # the path given
    preprocess: Preprocess | None = None

    @property
    def verification(self) -> tuple[FeatureSet, ...]:
        """What verification runs on: the held-out sets, or (no hold-out) every set."""
        return self.holdout or self.calibration

    def describe(self) -> str:
        """``real features from 12 images, 4 held out`` (what the figures measure)."""
        n = len(self.calibration) + len(self.holdout)
        unit = ("image" if n == 1 else "images") if self.origin == "images" else \
            ("feature set" if n == 1 else "feature sets")
        held = f"{len(self.holdout)} held out" if self.holdout else \
            "none held out: verified on the calibration data"
        return f"real features from {n} {unit} ({self.source}), {held}"

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "source": self.source, "description": self.describe(),
                "calibration": [s.name for s in self.calibration],
                "holdout": [s.name for s in self.holdout],
                "preprocess": self.preprocess.describe() if self.preprocess else None}


def split(sets: Sequence[FeatureSet], holdout: float) -> tuple[tuple[FeatureSet, ...],
                                                                 tuple[FeatureSet, ...]]:
    """``(calibration, held out)``, deterministic (see the module doc)."""
    import numpy as np
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) \
            or not 0 <= holdout < 1:
        raise InputError(f"--holdout must be a fraction from 0 to below 1, got {holdout!r}")
    ordered = sorted(sets, key=lambda s: s.name)
    n = len(ordered)
    k = 0 if holdout == 0 else max(1, round(n * holdout))
    if k >= n:
        raise InputError(f"--holdout {holdout:g} of {n} feature set(s) leaves none for "
                         "calibration; give more data or --holdout 0")
    held = set(np.random.default_rng(SPLIT_SEED).permutation(n)[:k].tolist())
    return (tuple(s for i, s in enumerate(ordered) if i not in held),
            tuple(s for i, s in enumerate(ordered) if i in held))


# -- checks ----------------------------------------------------------------------------
def check_set(spec: NeckSpec, arrays: Sequence[Any], name: str) -> FeatureSet:
    """A validated :class:`FeatureSet` (see the module doc), float32, batch dimension added
    to 3-d arrays."""
    import numpy as np
    if len(arrays) != spec.num_inputs:
        raise InputError(f"{name}: {len(arrays)} array(s); {spec.label} takes "
                         f"{spec.num_inputs} input levels ({', '.join(spec.input_names)})")
    out: list[np.ndarray] = []
    for level, (array, channels, input_name) in enumerate(
            zip(arrays, spec.in_channels, spec.input_names, strict=True)):
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            kind = getattr(array, "dtype", type(array).__name__)
            raise InputError(f"{name}: {input_name} is {kind}, not a float array")
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or min(array.shape) < 1:
            raise InputError(f"{name}: {input_name} has shape {tuple(array.shape)}; expected "
                             f"(batch, {channels}, H, W) or ({channels}, H, W)")
        if array.shape[1] != channels:
            raise InputError(f"{name}: {input_name} has {array.shape[1]} channels; "
                             f"{spec.label}'s level {level} takes {channels}")
        if out and array.shape[0] != out[0].shape[0]:
            raise InputError(f"{name}: the levels' batches differ ({out[0].shape[0]} and "
                             f"{array.shape[0]})")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise InputError(f"{name}: {input_name} holds NaN or Inf values")
        out.append(array)
    sizes = [(int(a.shape[2]), int(a.shape[3])) for a in out]
    if spec.info.levels is not LevelRelation.INDEPENDENT:
        for axis, what in ((0, "heights"), (1, "widths")):
            if image_side([s[axis] for s in sizes], spec.input_strides) is None:
                raise InputError(
                    f"{name}: level {what} {[s[axis] for s in sizes]} are not the "
                    f"ceil(H/s) sizes of one image for strides "
                    f"{', '.join(map(str, spec.input_strides))} ({spec.label}'s levels are "
                    f"tied: e.g. {[math.ceil(100 / s) for s in spec.input_strides]} for 100)")
    sides = [image_side([s[axis] for s in sizes], spec.input_strides) for axis in (0, 1)]
    if sides[0] is not None and sides[1] is not None:
        try:  # the image these levels come from must be one the neck can run at
            spec.check_size((sides[0], sides[1]))
        except SpecError as exc:
            shown = ", ".join(f"{h}x{w}" for h, w in sizes)
            raise InputError(f"{name}: level sizes {shown} are those of a "
                             f"{sides[0]}x{sides[1]} image, and {exc} (larger images, or "
                             "--image-size HxW to resize them)") from None
    return FeatureSet(name, tuple(out))


def image_side(sides: Sequence[int], strides: Sequence[int]) -> int | None:
    """The smallest image side ``H`` with ``ceil(H/s_k) == sides[k]`` for every level, or
    ``None`` when there is none."""
    low = max((n - 1) * s + 1 for n, s in zip(sides, strides, strict=True))
    high = min(n * s for n, s in zip(sides, strides, strict=True))
    return low if low <= high else None


def check_static_fit(data: Data, spec: NeckSpec, batch: int) -> None:
    """Refuse feature sets a static file (``--static``, exported at ``spec.input_size``,
    batch ``batch``) cannot take: each set's level sizes and batch must be the file's.

    Raises:
        InputError: a set of other sizes or batch, naming both and what would match.
    """
    want = [tuple(s) for s in spec.level_sizes(spec.input_size)]
    for found in (*data.calibration, *data.holdout):
        if list(found.sizes) == want and found.batch == batch:
            continue
        # the largest image side these levels come from (a multiple of the coarsest stride
        # when they are the ceil(H/s) sizes of one), when there is one
        sides = [min(n * s for n, s in zip([sz[axis] for sz in found.sizes],
                                           spec.input_strides, strict=True))
                 if image_side([sz[axis] for sz in found.sizes], spec.input_strides)
                 is not None else None for axis in (0, 1)]
        hint = f"--input-size {sides[0]}x{sides[1]}" if None not in sides else \
            "another --input-size"
        shown = ", ".join(f"{h}x{w}" for h, w in found.sizes)
        raise InputError(
            f"{found.name} ({data.source}): level sizes {shown}, batch {found.batch}; the "
            f"static file exported at {spec.input_size[0]}x{spec.input_size[1]}, batch "
            f"{batch}, takes {', '.join(f'{h}x{w}' for h, w in want)}: export at {hint} "
            f"(batch {found.batch}) or leave out --static")


# -- .npz ------------------------------------------------------------------------------
def load_npz(path: pathlib.Path, spec: NeckSpec) -> FeatureSet:
    """One ``.npz``: arrays named like the neck's inputs (``c3, c4, ...``), or exactly one
    array per level in the file's order; loaded with ``allow_pickle=False``."""
    import numpy as np
    try:
        _check_headers(path)
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            wanted = list(spec.input_names)
            if set(wanted) <= set(names):
                arrays = [npz[n] for n in wanted]
            elif len(names) == spec.num_inputs:
                arrays = [npz[n] for n in names]
            else:
                raise InputError(
                    f"{str(path)!r} holds arrays {names[:8]}; expected "
                    f"{', '.join(wanted)} (or {spec.num_inputs} arrays in level order)")
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, RuntimeError,
            NotImplementedError) as exc:
        # ValueError: pickled objects (allow_pickle=False) or a damaged array header;
        # RuntimeError: an encrypted member; NotImplementedError: a compression zipfile
        # cannot read (e.g. deflate64, PPMd)
        raise InputError(f"cannot read {str(path)!r} as .npz feature arrays: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
                         ) from None
    return check_set(spec, arrays, path.name)


def _check_headers(path: pathlib.Path) -> None:
    """Refuse, before numpy allocates anything, arrays whose headers claim more data than
    the file holds (numpy allocates the claimed size first) or more than
    :data:`MAX_FEATURE_BYTES` in all."""
    import numpy as np
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            claimed = math.prod(shape) * dtype.itemsize
            if claimed > info.file_size:
                raise InputError(f"{str(path)!r}: array {info.filename[:-4]!r} claims shape "
                                 f"{shape} ({claimed:,} bytes) but holds {info.file_size:,}")
            total += claimed
    if total > MAX_FEATURE_BYTES:
        raise InputError(f"{str(path)!r} holds {total / 2 ** 30:.1f} GiB of arrays; at most "
                         f"{MAX_FEATURE_BYTES / 2 ** 30:g} GiB per file")


def load_features(path: str | pathlib.Path, spec: NeckSpec) -> list[FeatureSet]:
    """``--calibration-data PATH``: one ``.npz``, or every ``*.npz`` in a directory."""
    where = pathlib.Path(path)
    if where.is_dir():
        files = sorted(p for p in where.iterdir() if p.suffix.lower() == ".npz" and p.is_file())
        if not files:
            raise InputError(f"--calibration-data: directory {str(where)!r} holds no .npz files")
    elif where.is_file():
        files = [where]
    else:
        raise InputError(f"--calibration-data: {str(where)!r} does not exist")
    if len(files) > MAX_SETS:
        raise InputError(f"--calibration-data: {len(files)} files; at most {MAX_SETS}")
    return [load_npz(f, spec) for f in files]


# -- images through a backbone ------------------------------------------------------------
def neck_input_names(model: onnx.ModelProto, spec: NeckSpec) -> list[str]:
    """The tensors of ``model`` the neck reads, finest level first: the inputs of the neck
    found in the detector's graph (:func:`necktool.detector.find_neck`, by structure, never
    by counting outputs: a RetinaFace detector has three head outputs, which are no
    levels), else, for a backbone with no neck inside, its outputs.

    Raises:
        InputError: no neck in the graph, or one with another number of input levels.
    """
    from necktool.detector import find_neck

    try:
        found = find_neck(model)
    except InputError:  # no neck inside: a backbone alone, whose outputs are the levels
        outputs = [o.name for o in model.graph.output]
        if len(outputs) != spec.num_inputs:
            raise InputError(
                f"--backbone: the file holds no neck and has {len(outputs)} output(s); "
                f"{spec.label} takes {spec.num_inputs} levels (a backbone's outputs, or a "
                "detector with a neck inside)") from None
        return outputs
    if len(found.inputs) != spec.num_inputs:
        raise InputError(
            f"--backbone: the neck found in the file reads {len(found.inputs)} level(s) "
            f"({', '.join(found.inputs)}); {spec.label} takes {spec.num_inputs}")
    return list(found.inputs)


def read_image(path: pathlib.Path, pre: Preprocess) -> np.ndarray:
    """``(1, 3, H, W)`` float32, normalised; Pillow's decompression-bomb limit is an error."""
    import numpy as np
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd files (a palette with
            # transparency, a truncated EXIF...) are no error, and no stderr of ours
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                img = opened.convert("RGB")
                if pre.size is not None:
                    img = img.resize((pre.size[1], pre.size[0]), Image.Resampling.BILINEAR)
                pixels: np.ndarray = np.asarray(img, dtype=np.float32)
    except (OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise InputError(f"--images: cannot read {path.name!r} as an image: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
                         ) from None
    if pre.bgr:
        pixels = pixels[..., ::-1]
    pixels = (pixels - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)


def features_from_images(images: str | pathlib.Path, backbone: str | pathlib.Path,
                         spec: NeckSpec, pre: Preprocess | None = None,
                         provider: str = "CPUExecutionProvider") -> list[FeatureSet]:
    """Run ``backbone`` (cut at the neck's inputs) on every PNG/JPEG in ``images``."""
    import numpy as np
    import onnx
    import onnx.utils

    from necktool.quiet import onnxruntime

    pre = pre or default_preprocess(spec.family)
    folder = pathlib.Path(images)
    if not folder.is_dir():
        raise InputError(f"--images: {str(folder)!r} is not a directory")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"--images: {str(folder)!r} holds no PNG or JPEG files")
    if len(files) > MAX_SETS:
        raise InputError(f"--images: {len(files)} images; at most {MAX_SETS}")
    from necktool.detector.loading import load_detector

    # Untrusted: external data checked, sizes counted against the memory limit first.
    model = load_detector(backbone, "--backbone file")
    outputs = neck_input_names(model, spec)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise InputError(f"--backbone: the file has {len(inputs)} inputs; expected one image")
    # The extractor looks the cut tensors up in value_info; shape inference leaves none for
    # tensors whose shapes it cannot follow (a detector's computed-size Resize, say): name
    # them as float tensors of unknown shape, which is all the cut needs.
    known = {v.name for v in (*model.graph.value_info, *model.graph.input,
                              *model.graph.output)}
    model.graph.value_info.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in outputs if name not in known)
    try:
        cut = onnx.utils.Extractor(model).extract_model(inputs, outputs)
        session = onnxruntime().InferenceSession(cut.SerializeToString(),
                                                 providers=[provider])
    except Exception as exc:  # extractor and ORT raise untyped errors
        raise InputError(f"--backbone: cannot run {str(backbone)!r}: "
                         f"{str(exc).strip().splitlines()[0][:160]}") from None
    fixed = _fixed_size(session.get_inputs()[0].shape)
    if pre.size is None and fixed is not None:
        pre = dataclasses.replace(pre, size=fixed)  # a static backbone takes its own size
    sets = []
    for path in files:
        image = read_image(path, pre)
        try:
            levels = session.run(None, {inputs[0]: image})
        except Exception as exc:  # ORT's untyped runtime errors
            raise InputError(f"--backbone: running it on {path.name!r} failed: "
                             f"{str(exc).strip().splitlines()[0][:160]}") from None
        levels = sorted(levels, key=lambda a: -int(np.prod(a.shape[2:])))  # finest first
        sets.append(check_set(spec, levels, path.name))
    return sets


def _fixed_size(shape: Sequence[Any]) -> tuple[int, int] | None:
    if len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
        return int(shape[2]), int(shape[3])
    return None


def load_data(spec: NeckSpec, *, calibration_data: str | pathlib.Path | None = None,
              images: str | pathlib.Path | None = None,
              backbone: str | pathlib.Path | None = None,
              preprocess: Preprocess | None = None,
              holdout: float = DEFAULT_HOLDOUT) -> Data | None:
    """The user's data, split; ``None`` when none was given (synthetic inputs then)."""
    if calibration_data is not None and (images is not None or backbone is not None):
        raise InputError("give either --calibration-data or --images with --backbone, not both")
    if (images is None) != (backbone is None):
        raise InputError("--images and --backbone go together: the backbone turns the "
                         "images into the neck's input features")
    if calibration_data is None and images is None:
        if preprocess is not None:
            raise InputError("--mean, --std, --bgr and --image-size describe --images; "
                             "give --images DIR --backbone FILE.onnx")
        return None
    if calibration_data is not None:
        if preprocess is not None:
            raise InputError("--mean, --std, --bgr and --image-size describe --images, not "
                             "--calibration-data")
        sets = load_features(calibration_data, spec)
        calib, held = split(sets, holdout)
        return Data("npz", calib, held, str(calibration_data))
    assert images is not None and backbone is not None
    pre = preprocess or default_preprocess(spec.family)
    sets = features_from_images(images, backbone, spec, pre)
    calib, held = split(sets, holdout)
    return Data("images", calib, held, str(images), pre)


@dataclasses.dataclass(frozen=True)
class DataRequest:
    """The data flags as given (``--calibration-data``, ``--images``, ``--backbone``,
    ``--mean``, ``--std``, ``--bgr/--rgb``, ``--image-size``, ``--holdout``); loaded
    against a neck by :meth:`load`."""

    calibration_data: pathlib.Path | None = None
    images: pathlib.Path | None = None
    backbone: pathlib.Path | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    bgr: bool | None = None
    image_size: tuple[int, int] | None = None
    holdout: float = DEFAULT_HOLDOUT

    @property
    def given(self) -> bool:
        return self.calibration_data is not None or self.images is not None \
            or self.backbone is not None

    def preprocess(self, family: str) -> Preprocess | None:
        """The family's preprocessing with the overrides; ``None`` when none was given."""
        if self.mean is None and self.std is None and self.bgr is None \
                and self.image_size is None:
            return None
        base = default_preprocess(family)
        return Preprocess(self.mean or base.mean, self.std or base.std,
                          base.bgr if self.bgr is None else self.bgr, self.image_size)

    def load(self, spec: NeckSpec) -> Data | None:
        """The data for ``spec``, split; ``None`` when no data flag was given."""
        if not self.given and self.holdout != DEFAULT_HOLDOUT:
            raise InputError("--holdout splits --calibration-data or --images; give one")
        try:
            return load_data(spec, calibration_data=self.calibration_data, images=self.images,
                             backbone=self.backbone, preprocess=self.preprocess(spec.family),
                             holdout=self.holdout)
        except OSError as exc:  # a name too long, a directory we may not list, a loop...
            name = exc.filename if exc.filename is not None else "the data"
            raise InputError(f"cannot read {str(name)[:200]!r}: "
                             f"{exc.strerror or type(exc).__name__}") from None


def parse_triple(text: str) -> tuple[float, float, float]:
    """``--mean 127.5`` or ``--mean 104,117,123`` (one value per channel, R G B order)."""
    words = [w for w in text.replace(" ", ",").split(",") if w]
    try:
        values = [float(w) for w in words]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
        raise InputError(f"cannot read {text[:40]!r}: expected one number or three "
                         "comma-separated ones, e.g. 127.5 or 104,117,123")
    return (values[0],) * 3 if len(values) == 1 else (values[0], values[1], values[2])
