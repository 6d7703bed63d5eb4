"""Prove the match: run a detector in ONNX Runtime with its neck's input and output tensors
exposed, feed the same inputs to necktool's neck (PyTorch, and an exported neck file when
given) and compare level by level (``necktool verify --against DET.onnx``).

The image fed to the detector is a seeded random image at the graph's size (its static
size, else :data:`~necktool.detector.neck.DEFAULT_SIZE`), or each PNG/JPEG of a directory
(``--images``), read with Pillow with its decompression-bomb limit on (an image over
``Image.MAX_IMAGE_PIXELS`` is refused), resized to that size, and scaled as SCRFD and
RetinaFace preprocess: ``(pixel - 127.5) / 128``, RGB.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from necktool.deploy.comparison import OutputComparison
from necktool.deploy.tolerance import VerifyOptions
from necktool.detector.graph import read_graph
from necktool.detector.loading import load_detector
from necktool.detector.neck import DEFAULT_SIZE, DetectorNeck, find_in_graph
from necktool.detector.weights import detector_state_dict
from necktool.errors import InputError, first_line
from necktool.report import Block, Note, Verdict, num, table
from necktool.spec.precision import Precision

if TYPE_CHECKING:
    import onnx

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_IMAGES = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgainstReport(Verdict):
    """Per level and per runtime (``pytorch``, ``onnx``): the neck vs the detector's own."""

    detector: str
    neck_file: str | None
    found: DetectorNeck
    images: tuple[str, ...]  # empty: one seeded random image
    size: tuple[int, int]
    rows: tuple[tuple[str, str, OutputComparison], ...]  # (runtime, tensor, comparison)

    @property
    def passed(self) -> bool:
        return all(c.passed for _, _, c in self.rows)

    @property
    def failed_levels(self) -> list[str]:
        return [f"{c.name} ({runtime})" for runtime, _, c in self.rows if not c.passed]

    def failure(self) -> str | None:
        """The one-line error for a mismatch: which levels, how far off."""
        if self.passed:
            return None
        worst = max((c for _, _, c in self.rows if not c.passed), key=lambda c: c.max_abs)
        return (f"the neck does not match the one inside {self.detector}: "
                f"{', '.join(self.failed_levels)} over tolerance (max abs error "
                f"{worst.max_abs:.3g} at {worst.name})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "neck_file": self.neck_file,
            "passed": self.passed,
            "family": self.found.spec.family,
            "config": self.found.spec.to_dict(),
            "norm_state": self.found.norm_state,
            "input_size": list(self.size),
            "images": list(self.images) or "seeded random image",
            "levels": [{"runtime": r, "tensor": t, **c.to_dict()} for r, t, c in self.rows],
        }

    def blocks(self) -> list[Block]:
        rows = [(c.name, runtime, t, "x".join(map(str, c.shape)), f"{c.max_abs:.3g}",
                 f"{c.sqnr_db:.1f}", f"{c.atol:g}/{c.rtol:g}", "PASS" if c.passed else "FAIL")
                for runtime, t, c in self.rows]
        what = "necktool's neck" + (f" and {self.neck_file}" if self.neck_file else "")
        title = f"{what} vs the neck inside {self.detector}"
        out: list[Block] = [table(title, ["level", "runtime", "detector tensor", "shape",
                                          num("max abs"), num("SQNR dB"), "atol/rtol",
                                          "result"], rows)]
        fed = f"{len(self.images)} image(s)" if self.images else "a seeded random image"
        out.append(Note(f"fed {fed} at {self.size[0]}x{self.size[1]}; norm "
                        f"{self.found.norm_state}; "
                        + ("PASS" if self.passed else "FAIL: " + ", ".join(self.failed_levels))))
        return out


def read_images(directory: str | os.PathLike[str], size: tuple[int, int]) -> list[np.ndarray]:
    """Each PNG/JPEG of ``directory`` as a ``[1, 3, H, W]`` float32 array (module docstring).

    Raises:
        InputError: no such directory, no images, or an image Pillow refuses (a
            decompression bomb, a damaged file).
    """
    from PIL import Image

    folder = pathlib.Path(directory)
    if not folder.is_dir():
        raise InputError(f"--images {str(folder)!r} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"--images {str(folder)!r} holds no .png/.jpg/.jpeg file")
    out = []
    for file in files[:MAX_IMAGES]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's notes on odd files: not ours
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file) as img:
                    rgb = img.convert("RGB").resize((size[1], size[0]))
        except Exception as exc:
            raise InputError(f"cannot read image {str(file)!r}: {first_line(exc, 160)}") \
                from None
        arr = (np.asarray(rgb, dtype=np.float32) - 127.5) / 128.0
        out.append(arr.transpose(2, 0, 1)[None].copy())
    return out


def _exposed(model: onnx.ModelProto, names: Sequence[str]) -> bytes:
    """The detector with ``names`` added to its graph outputs."""
    import onnx
    from onnx import helper

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    for name in names:
        if name not in have:
            copy.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                   None))
    return copy.SerializeToString()


def _session(data: bytes | str, provider: str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, opts, providers=[provider])
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot load the model: {first_line(exc, 200)}") \
            from None


def _dims(value_infos: Sequence[Any]) -> list[Any]:
    """Each tensor's channel dimension (an int, or ``None`` when symbolic or absent)."""
    out = []
    for info in value_infos:
        shape = list(getattr(info, "shape", None) or [])
        out.append(shape[1] if len(shape) == 4 and isinstance(shape[1], int) else None)
    return out


def _levels_text(channels: Sequence[Any]) -> str:
    return f"{len(channels)} level(s) of {','.join('?' if c is None else str(c) for c in channels)}"


def check_neck_file(session: Any, neck_file: str, found: DetectorNeck, where: str) -> None:
    """Refuse, in one line, a neck file that cannot be the detector's neck: another number
    of input or output levels, or other channels, naming what each side holds.

    Raises:
        InputError: the file's inputs or outputs do not fit the detector's neck.
    """
    spec = found.spec
    ins, outs = _dims(session.get_inputs()), _dims(session.get_outputs())
    want_in = list(spec.in_channels)
    want_out = list(spec.level_channels)
    fits = len(ins) == len(want_in) and len(outs) == len(want_out) and all(
        c is None or c == w for c, w in zip([*ins, *outs], [*want_in, *want_out], strict=True))
    if not fits:
        raise InputError(
            f"{neck_file!r} holds another neck than {where}: it takes {_levels_text(ins)} "
            f"channels and gives {_levels_text(outs)}; the detector's neck "
            f"({spec.family}) takes {_levels_text(want_in)} and gives "
            f"{_levels_text(want_out)}; compare a file exported from it "
            f"('necktool export --weights {where.strip(chr(39))}')")


def verify_against(detector: str | os.PathLike[str], *, neck_file: str | os.PathLike[str]
                   | None = None, images: str | os.PathLike[str] | None = None,
                   options: VerifyOptions | None = None, seed: int = 0) -> AgainstReport:
    """Compare necktool's neck, with the detector's own weights, against the detector.

    Args:
        detector: The detector ONNX file.
        neck_file: An exported neck to compare as well (its inputs fed in order).
        images: A directory of PNG/JPEG images; default one seeded random image.
        options: Tolerances (the fp32 defaults unless given) and provider.

    Returns:
        The report; ``bool(report)`` is whether every level of every runtime passed.

    Raises:
        InputError: unreadable/hostile files, no neck, bad images.
        WeightsError: the neck's weights cannot be taken from the file.
    """
    import torch

    from necktool.deploy.verify import compare_arrays
    from necktool.necks.build import build_neck

    options = (options or VerifyOptions()).resolved(Precision.FP32)
    where = f"{str(detector)!r}"
    proto = load_detector(detector)
    graph = read_graph(proto, where)
    found = find_in_graph(graph)
    size = graph.image_size or DEFAULT_SIZE
    spec = found.spec.replace(input_size=size)
    model = build_neck(spec)
    model.load_state_dict(detector_state_dict(graph, found, model), strict=True)
    det = _session(_exposed(proto, [*found.inputs, *found.outputs]), options.provider)
    names = [o.name for o in det.get_outputs()]
    neck_sess = None
    if neck_file is not None:
        neck_sess = _session(str(neck_file), options.provider)
        check_neck_file(neck_sess, str(neck_file), found, where)
    batches = read_images(images, size) if images is not None else \
        [np.random.default_rng(seed).standard_normal((1, 3, *size)).astype(np.float32)]
    merged: dict[tuple[str, int], OutputComparison] = {}
    levels = spec.level_names
    for batch in batches:
        try:
            outs = dict(zip(names, det.run(None, {found.image: batch}), strict=True))
        except Exception as exc:
            raise InputError(f"{where}: ONNX Runtime failed on the image: "
                             f"{first_line(exc, 200)}") from None
        feats = [outs[n] for n in found.inputs]
        want = [outs[n] for n in found.outputs]
        with torch.no_grad():
            got = [t.numpy() for t in model([torch.from_numpy(f) for f in feats])]
        runs = [("pytorch", got)]
        if neck_sess is not None:
            inputs = [i.name for i in neck_sess.get_inputs()]
            try:
                ran = neck_sess.run(None, dict(zip(inputs, feats, strict=True)))
            except Exception as exc:  # ORT's untyped errors: a static file, other sizes
                fed = ", ".join("x".join(map(str, f.shape)) for f in feats)
                raise InputError(
                    f"{str(neck_file)!r} cannot run on the features of {where}'s neck "
                    f"({fed}): {first_line(exc, 160)}; export the neck at the detector's "
                    f"size ({size[0]}x{size[1]}) or dynamic") from None
            runs.append(("onnx", ran))
        for runtime, arrays in runs:
            for i, (mine, ref) in enumerate(zip(arrays, want, strict=False)):
                atol, rtol = options.tolerances(levels[i])
                c = compare_arrays(levels[i], np.asarray(mine), ref, atol, rtol,
                                   options.error_stat)
                key = (runtime, i)
                merged[key] = merged[key].merge(c) if key in merged else c
    rows = tuple((r, found.outputs[i], c) for (r, i), c in merged.items())
    return AgainstReport(detector=str(detector), neck_file=str(neck_file) if neck_file else None,
                         found=found,
                         images=tuple(str(p) for p in sorted(pathlib.Path(images).iterdir())
                                      if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_IMAGES]
                         if images is not None else (),
                         size=size, rows=rows)
