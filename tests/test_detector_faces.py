"""The YuNet, YOLO5Face and YOLOv8-face necks inside detector ONNX files
(necktool.detector.merges, .match): found by structure, the preset named, the weights
loaded and the neck proved equal to the file's, the detector counted by part.

The detectors (tests/face_detectors.py) are small faithful backbones, a neck (necktool's
own module, or for the ``*_authors`` files the authors' structure written out in the test
helpers, so the comparison is against code necktool did not write) and the authors' heads,
exported as the authors export them. The ShuffleNet backbones (YOLO5Face n-0.5,
yolov8-lite) bring their same-scale Concats, Splits and channel-shuffle reshapes, which
are not merges.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _cli import run
from face_detectors import YUNET_SIZE, Face, faces
from onnx import helper
from torch import nn

from necktool.deploy.against import verify_against
from necktool.detector import find_neck, load_detector
from necktool.detector.inspect import inspect_detector
from necktool.detector.neck import DEFAULT_SIZE
from necktool.detector.weights import load_detector_weights
from necktool.errors import InputError, WeightsError
from necktool.necks.build import build_neck
from necktool.spec.registry import PRESETS

TOL = 1e-5  # the brief's bar: the loaded neck equals the file's to 1e-5 (fp32)


def _face(name: str) -> Face:
    return faces()[name]


def _exposed(path: pathlib.Path, names: list[str], image: np.ndarray) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    for n in names:
        model.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {model.graph.input[0].name: image})
    return dict(zip([o.name for o in sess.get_outputs()], outs, strict=True))


ALL = ["yunet", "yunet_dynamic", "yunet_authors", "yolo5face_s", "yolo5face_authors",
       "yolov8n_opset17", "yolov8n_opset12", "yolov8_authors", "yolo5face_n0.5",
       "yolov8_lite_t"]


@pytest.mark.parametrize("name", ALL)
def test_the_preset_is_named_from_the_structure(name: str) -> None:
    face = _face(name)
    found = find_neck(load_detector(face.path))
    want = PRESETS[face.preset].spec
    size = face.size if face.static else DEFAULT_SIZE
    assert found.spec.family == want.family
    assert found.presets == (face.preset,)
    assert found.spec.to_dict() == want.replace(input_size=size).to_dict()
    assert found.strides == (8, 16, 32) and found.input_strides == (8, 16, 32)
    assert found.norm_state == "folded"
    assert found.image_size == (face.size if face.static else None)


def test_the_files_are_exported_as_the_authors_do() -> None:
    """YuNet opset 11 with cls_8..kps_32, YOLO5Face opset 12 with one decoded output,
    ultralytics images -> output0 with the C2f Split; BatchNorm folded everywhere."""
    files = {n: onnx.load(str(f.path)) for n, f in faces().items()}
    for name, model in files.items():
        ops = {n.op_type for n in model.graph.node}
        assert "BatchNormalization" not in ops, name
        assert model.opset_import[0].version == faces()[name].opset
    assert [o.name for o in files["yunet"].graph.output][:3] == ["cls_8", "cls_16", "cls_32"]
    assert len(files["yunet"].graph.output) == 12
    assert [i.name for i in files["yolo5face_s"].graph.input] == ["input"]
    assert [o.name for o in files["yolo5face_s"].graph.output] == ["output"]
    v8 = files["yolov8n_opset17"]
    assert [i.name for i in v8.graph.input] == ["images"]
    assert [o.name for o in v8.graph.output] == ["output0"]
    assert "Split" in {n.op_type for n in v8.graph.node}
    silu = [n for n in v8.graph.node if n.op_type == "Sigmoid"]
    assert silu and all(any(r.op_type == "Mul" for r in v8.graph.node if n.output[0] in r.input)
                        for n in silu[:5])
    dims = files["yunet_dynamic"].graph.input[0].type.tensor_type.shape.dim
    assert not dims[2].HasField("dim_value") and not dims[3].HasField("dim_value")


@pytest.mark.parametrize("name", ["yunet_dynamic", "yolo5face_authors", "yolov8n_opset12",
                                  "yolo5face_n0.5", "yolov8_lite_t"])
def test_the_tensors_found_hold_the_backbone_and_neck_outputs(name: str) -> None:
    """Names are not evidence: the tensors named must hold what the torch model computes."""
    face = _face(name)
    found = find_neck(load_detector(face.path))
    image = torch.randn(1, 3, *face.size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        feats = face.model.backbone(image)
        outs = face.model.neck(feats)
    got = _exposed(face.path, [*found.inputs, *found.outputs], image.numpy())
    for tensor, ref in zip([*found.inputs, *found.outputs], [*feats, *outs], strict=True):
        np.testing.assert_allclose(got[tensor], ref.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_the_loaded_neck_equals_the_files_to_1e5(name: str) -> None:
    report = verify_against(_face(name).path)
    assert report.passed
    assert [r[1] for r in report.rows] == list(report.found.outputs)
    assert max(c.max_abs for _, _, c in report.rows) < TOL


@pytest.mark.parametrize("name", ["yunet", "yolo5face_s", "yolov8n_opset17", "yolov8_lite_t"])
def test_weights_from_the_file_reproduce_the_neck_it_was_built_with(name: str) -> None:
    """``--weights DET.onnx``: the neck loaded from the file computes what the detector's own
    (unfused, BatchNorm in place) neck computes on any input, to 1e-5."""
    face = _face(name)
    spec = PRESETS[face.preset].spec.replace(input_size=face.size)
    model = build_neck(spec)
    source = load_detector_weights(model, face.path)
    assert source.note is not None and "folded" in source.note
    gen = torch.Generator().manual_seed(9)
    feats = [torch.randn(1, c, h, w, generator=gen) for c, (h, w) in
             zip(spec.in_channels, spec.input_sizes(face.size), strict=True)]
    with torch.no_grad():
        mine, theirs = model(feats), face.model.neck(feats)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=TOL, rtol=TOL)


def test_a_neck_of_other_widths_does_not_take_the_files_weights() -> None:
    model = build_neck(PRESETS["yolov8s_face"].spec.replace(input_size=(128, 128)))
    with pytest.raises(WeightsError, match=r"not built like necktool's|does not fit"):
        load_detector_weights(model, _face("yolov8n_opset17").path)


def _swap_first_concat(path: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """The top-down Concat with its inputs swapped (coarse part last)."""
    model = onnx.load(str(path))
    found = find_neck(model)
    assert found.merge is not None
    node = next(n for n in model.graph.node if n.name == found.merge.merges[0].node.name)
    node.input[0], node.input[1] = node.input[1], node.input[0]
    onnx.save(model, str(out))
    return out


def test_a_neck_built_otherwise_is_refused_in_one_line(tmp_path: pathlib.Path) -> None:
    """A file whose top-down Concat takes the backbone map first still has a neck of the
    family's shape, but not necktool's: its weights are refused, not loaded wrongly."""
    path = _swap_first_concat(_face("yolov8n_opset17").path, tmp_path / "swapped.onnx")
    assert find_neck(load_detector(path)).spec.family == "yolov8"
    code, _out, err = run("verify", "--weights", str(path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("necktool: error: ") and "not built like necktool's" in lines[0]


# -- costs by part --------------------------------------------------------------------------
def test_the_detector_is_counted_by_part_by_hand() -> None:
    """YuNet at 160x160 (levels 20x20, 10x10, 5x5: 525 pixels over the three levels).

    Neck: a DPU per level, 1x1 64->64 (4,096 MACs a pixel) + 3x3 depthwise (576):
    4,672 x 525 = 2,452,800; params 3 x (4,096 + 64 + 576 + 64) = 14,400.
    Head per level: a shared DPU (4,672 a pixel), cls and obj DPUs to 1 channel (64 + 9
    each), bbox to 4 (256 + 36), kps to 10 (640 + 90): 5,840 x 525 = 3,066,000; params
    3 x (4,800 + 75 + 75 + 300 + 750) = 18,000.
    Backbone: 3x3 s2 conv 3->16 at 80x80 (16 x 6,400 x 27 = 2,764,800), DPU(16,16) at 80x80
    (400 x 6,400 = 2,560,000), at 40x40 DPU(16,16) + DPU(16,64) (2,000 x 1,600 =
    3,200,000) and two DPU(64,64) (9,344 x 1,600 = 14,950,400), then two DPU(64,64) at
    20x20, 10x10 and 5x5 (9,344 x 525 = 4,905,600): 28,380,800; params 448 + 432 + 2,160 +
    8 x 4,800 = 41,440.
    """
    result = inspect_detector(_face("yunet").path)
    assert result is not None
    parts = {k: (c.macs, c.params) for k, c in result.parts.items()}
    assert parts == {"backbone": (28_380_800, 41_440), "neck": (2_452_800, 14_400),
                     "head": (3_066_000, 18_000)}
    assert result.graph_costs.macs == 28_380_800 + 2_452_800 + 3_066_000
    assert result.neck_costs.macs == 2_452_800
    # the same count by forward hooks on the torch detector, part by part
    from face_detectors import conv_macs

    hooks = conv_macs(_face("yunet").model, torch.zeros(1, 3, *YUNET_SIZE))
    assert hooks["neck"][0] == 2_452_800 and hooks["head"][0] == 3_066_000
    assert hooks["backbone"][0] == 28_380_800
    # the torch model's convs hold the same params, less the biases folding adds
    # (every DPU's depthwise conv has a bias already; the stem's 3x3 conv too)
    assert hooks["neck"][1] == 14_400 and hooks["head"][1] == 18_000


def test_input_size_counts_at_that_size(tmp_path: pathlib.Path) -> None:
    """--input-size 320x320 on the dynamic YuNet: the neck's 4,672 MACs a pixel over
    40x40 + 20x20 + 10x10 = 9,811,200."""
    code, out, err = run("inspect", str(_face("yunet_dynamic").path), "--input-size", "320x320",
                         "--format", "json")
    assert code == 0, err
    import json

    data = json.loads(out)
    assert data["input_size"] == [320, 320]
    assert data["parts"]["neck"]["conv_macs"] == 4_672 * 2_100 == 9_811_200
    assert data["neck"]["conv_macs"] == 9_811_200
    assert data["presets"] == ["yunet"]
    assert sum(p["conv_macs"] for p in data["parts"].values()) == data["graph"]["conv_macs"]
    assert data["command"] == "necktool profile yunet --input-size 320x320"


def test_input_size_on_a_checkpoint_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "neck.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    code, _out, err = run("inspect", str(path), "--input-size", "320")
    assert code == 2 and "--input-size applies to a detector ONNX file" in err


# -- near misses ----------------------------------------------------------------------------
class _Down(nn.Module):
    """A ShuffleNet-style downsampling unit: two stride-2 branches concatenated."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, 2, 1, groups=c), nn.Conv2d(c, c, 1), nn.SiLU())
        self.b = nn.Sequential(nn.Conv2d(c, c, 1), nn.SiLU(), nn.Conv2d(c, c, 3, 2, 1, groups=c),
                               nn.Conv2d(c, c, 1), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.a(x), self.b(x)), 1)


class _Residual(nn.Module):
    """A stride-2 conv, then ``x + conv(conv(x))``: a residual add, no merge."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(c, c, 3, 2, 1)
        self.body = nn.Sequential(nn.Conv2d(c, c, 1), nn.SiLU(), nn.Conv2d(c, c, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return x + self.body(x)


class _NearMiss(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.s4, self.s8 = _Down(8), _Down(16)
        self.res = _Residual(32)
        self.lat = nn.Conv2d(32, 32, 1)
        self.td = nn.Conv2d(64, 32, 3, 1, 1)
        self.down = nn.Conv2d(32, 32, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c3 = self.s8(self.s4(self.stem(x)))  # stride 8, 32 channels
        c4 = self.res(c3)  # stride 16
        if self.kind == "units":
            return (c4,)
        up = nn.functional.interpolate(self.lat(c4), scale_factor=2.0)
        if self.kind == "spatial":  # a Concat of an upsample and a map, on the height axis
            return (self.td(torch.cat((up, c3), 2).reshape(1, 64, 8, 8)),)
        p3 = self.td(torch.cat((up, c3), 1))
        return (p3, self.down(p3))  # "half": a top-down merge, then no bottom-up merge


def _export(model: nn.Module, path: pathlib.Path) -> pathlib.Path:
    from face_detectors import export

    onnx.save(export(model.eval(), (64, 64), opset=12, input_name="images",
                     output_names=[f"o{i}" for i in range(2 if model.kind == "half" else 1)]),
              str(path))
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("units", "no top-down upsample-and-add"),
    ("spatial", "no top-down upsample-and-add"),
    ("half", "no neck found"),
])
def test_near_misses_of_the_merge_patterns_are_one_line_errors(
        tmp_path: pathlib.Path, kind: str, message: str) -> None:
    """ShuffleNet downsampling units and a residual add (both cross or share one scale),
    a Concat on the height axis, and a single top-down merge with nothing to pair it with
    are not necks."""
    path = _export(_NearMiss(kind), tmp_path / f"{kind}.onnx")
    with pytest.raises(InputError, match=message):
        find_neck(load_detector(path))
    code, _out, err = run("inspect", str(path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("necktool: error: "), err


def test_a_perturbed_neck_fails_verification(tmp_path: pathlib.Path) -> None:
    """The comparison can fail: a neck file with one conv's weight scaled is caught."""
    face = _face("yolov8n_opset17")
    neck_file = tmp_path / "neck.onnx"
    code, _out, err = run("export", "yolov8n_face", "--weights", str(face.path), "--onnx", "-o",
                          str(neck_file), "--input-size", "128")
    assert code == 0, err
    report = verify_against(face.path, neck_file=neck_file)
    assert report.passed and {r for r, _, _ in report.rows} == {"pytorch", "onnx"}
    model = onnx.load(str(neck_file))
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(i for i in model.graph.initializer if i.name == first.input[1])
    array = onnx.numpy_helper.to_array(weight).copy()
    array *= 1.5  # one conv 50% off
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    bad = verify_against(face.path, neck_file=broken)
    assert not bad.passed and any(r == "onnx" for r, _, c in bad.rows if not c.passed)
    assert all(c.passed for r, _, c in bad.rows if r == "pytorch")


def test_inspect_prints_the_preset_and_the_parts() -> None:
    code, out, err = run("inspect", str(_face("yolo5face_s").path))
    assert code == 0, err
    assert "yolo5face_s" in out and "backbone MACs, params" in out and "head MACs" in out
