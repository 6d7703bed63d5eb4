"""The necks of YuNet, YOLO5Face and the YOLOv8 faces: counts worked out by hand from the
authors' build rules, outputs equal to a re-implementation with torch.nn.functional on the
same weights, the authors' checkpoint key layouts read and loaded, their pickled whole
models refused with a way to their necks, and each family's image preprocessing."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from _cli import run

from necktool import build_neck, get_spec, make_inputs, profile
from necktool.deploy.data import default_preprocess
from necktool.deploy.model import load_weights
from necktool.detector.identify import identify_checkpoint
from necktool.errors import SpecError, WeightsError
from necktool.necks.weights import seeded_model
from necktool.spec.registry import PRESETS, yolo5_channels, yolo_repeats, yolov8_channels

NEW_FAMILIES = ("yunet", "yolo5face", "yolov8", "yolov8_lite")
BN = 2  # a BatchNorm's parameters per channel (weight, bias); fvcore: 2 flops per element


# -- the authors' build rules, by hand --------------------------------------------------------
def test_the_presets_channels_follow_each_repos_rounding_and_repeats() -> None:
    # yolov5-face make_divisible(arg * width, 8) = ceil(arg * width / 8) * 8
    assert math.ceil(1024 * 0.75 / 8) * 8 == 768 == yolo5_channels(1024, 0.75)
    assert yolo5_channels(128, 0.5) == 64  # n-0.5: every neck arg 128, width 0.5
    # ultralytics make_divisible(min(arg, max_channels) * width, 8): m caps 1024 at 768
    assert yolov8_channels(1024, 0.75, 768) == 576 and yolov8_channels(1024, 0.25, 1024) == 256
    # max(round(n * depth), 1): C3 x3 at depth 0.33 -> 1, at 0.67 -> 2, at 1.0 -> 3
    assert [yolo_repeats(3, d) for d in (0.33, 0.67, 1.0)] == [1, 2, 3]
    want = {
        "yunet": ((64, 64, 64), (64, 64, 64), 1),
        "yolo5face_n0.5": ((64, 128, 256), (64, 64, 64), 1),  # ShuffleV2 128/256/512 x 0.5
        "yolo5face_n": ((128, 256, 512), (128, 128, 128), 1),
        "yolo5face_s": ((128, 256, 512), (128, 256, 512), 1),
        "yolo5face_m": ((192, 384, 768), (192, 384, 768), 2),
        "yolo5face_l": ((256, 512, 1024), (256, 512, 1024), 3),
        "yolo5face_s6": ((128, 256, 384, 512), (128, 256, 384, 512), 1),
        "yolov8n_face": ((64, 128, 256), (64, 128, 256), 1),
        "yolov8s_face": ((128, 256, 512), (128, 256, 512), 1),
        "yolov8m_face": ((192, 384, 576), (192, 384, 576), 2),
        "yolov8_lite_t": ((48, 96, 192), (48, 48, 48), 1),
        "yolov8_lite_s": ((96, 192, 384), (96, 96, 96), 1),
    }
    for name, (cin, widths, repeats) in want.items():
        spec = get_spec(name)
        assert (spec.in_channels, spec.level_channels, spec.repeats) == (cin, widths, repeats)
        assert spec.input_size == (640, 640)
    assert [get_spec(n).first_layer for n in ("yolo5face_n", "yolo5face_s", "yolo5face_s6",
                                              "yolov8n_face", "yolov8_lite_t")] == \
        [7, 9, 11, 10, 8]


def conv(c1: int, c2: int, k: int = 1, bias: bool = False, groups: int = 1) -> int:
    return c1 // groups * c2 * k * k + (c2 if bias else 0)


def yolo_conv(c1: int, c2: int, k: int = 1) -> int:
    """The authors' Conv: conv without bias + BatchNorm."""
    return conv(c1, c2, k) + BN * c2


def c3(c1: int, c2: int, n: int) -> int:
    h = c2 // 2  # cv1, cv2: 1x1 to c2/2; n x (1x1, 3x3); cv3 1x1 on the concat
    return 2 * yolo_conv(c1, h) + yolo_conv(2 * h, c2) + n * (yolo_conv(h, h) +
                                                              yolo_conv(h, h, 3))


def c2f(c1: int, c2: int, n: int) -> int:
    h = c2 // 2  # cv1 1x1 to 2h, n x (3x3, 3x3) on h, cv2 1x1 on (2 + n) h
    return yolo_conv(c1, 2 * h) + yolo_conv((2 + n) * h, c2) + n * 2 * yolo_conv(h, h, 3)


def dw_block(c1: int, c2: int) -> int:
    return conv(c1, c1, 3, groups=c1) + BN * c1 + conv(c1, c2) + BN * c2


def test_params_by_hand_one_preset_per_family() -> None:
    # YuNet-s: per level 1x1 64->64 + bias, 3x3 depthwise + bias, BN
    dpu = (64 * 64 + 64) + (64 * 9 + 64) + BN * 64
    assert dpu == 4928 and profile("yunet").params == 3 * dpu == 14_784
    # YOLO5Face s, yaml layers 9..22: L5, C3, L4, C3 (P3), down, C3 (P4), down, C3 (P5)
    s = (yolo_conv(512, 256) + c3(256 + 256, 256, 1) + yolo_conv(256, 128)
         + c3(128 + 128, 128, 1) + yolo_conv(128, 128, 3) + c3(128 + 128, 256, 1)
         + yolo_conv(256, 256, 3) + c3(256 + 256, 512, 1))
    # 2,834,688: also the sum of YOLOv5s's own per-layer summary for its head's layers
    assert profile("yolo5face_s", input_size=(64, 64)).params == s == 2_834_688
    # YOLOv8n, layers 10..21 (no laterals): C2f(C5 + C4), C2f (P3), down, C2f, down, C2f
    n = (c2f(256 + 128, 128, 1) + c2f(128 + 64, 64, 1) + yolo_conv(64, 64, 3)
         + c2f(64 + 128, 128, 1) + yolo_conv(128, 128, 3) + c2f(128 + 256, 256, 1))
    assert profile("yolov8n_face", input_size=(64, 64)).params == n == 986_880
    # yolov8-lite-t, layers 8..21: L5 1x1, DW(48 + 96), L4, DW(48 + 48), then 2 x (DW s2, DW)
    t = (yolo_conv(192, 48) + dw_block(48 + 96, 48) + yolo_conv(48, 48) + dw_block(96, 48)
         + 4 * dw_block(48, 48))
    assert profile("yolov8_lite_t", input_size=(64, 64)).params == t == 37_776


def test_flops_by_hand_one_preset_per_family() -> None:
    # fvcore: a conv is cin/groups * cout * k * k per output pixel (no bias), a BatchNorm
    # 2 per element, an Add 1, a nearest upsample 1 per output element; activations, cat free.
    # YuNet at 640x640: levels 80, 40, 20 square.
    px = [80 * 80, 40 * 40, 20 * 20]
    yunet = sum((64 * 64 + 9 * 64) * p + BN * 64 * p for p in px) \
        + 2 * 64 * (px[0] + px[1])  # the two top-down upsample-adds: upsample + add
    assert profile("yunet").flops == yunet == 41_344_000

    def cv(c1: int, c2: int, p: int, k: int = 1, groups: int = 1) -> int:
        return c1 // groups * c2 * k * k * p + BN * c2 * p

    def c2f_flops(c1: int, c2: int, p: int) -> int:
        h = c2 // 2
        return cv(c1, 2 * h, p) + 2 * cv(h, h, p, 3) + cv(3 * h, c2, p)

    def c3_flops(c1: int, c2: int, p: int) -> int:
        h = c2 // 2
        return 2 * cv(c1, h, p) + cv(h, h, p) + cv(h, h, p, 3) + cv(2 * h, c2, p)

    # At 128x128: P3 16x16, P4 8x8, P5 4x4.
    p3, p4, p5 = 256, 64, 16
    v8n = (128 * p4 * 0 + 256 * p4  # upsample of C5 (256 ch) to P4 size
           + c2f_flops(384, 128, p4) + 128 * p3 + c2f_flops(192, 64, p3)
           + cv(64, 64, p4, 3) + c2f_flops(192, 128, p4)
           + cv(128, 128, p5, 3) + c2f_flops(384, 256, p5))
    assert profile("yolov8n_face", input_size=(128, 128)).flops == v8n
    y5s = (cv(512, 256, p5) + 256 * p4 + c3_flops(512, 256, p4) + cv(256, 128, p4)
           + 128 * p3 + c3_flops(256, 128, p3) + cv(128, 128, p4, 3) + c3_flops(256, 256, p4)
           + cv(256, 256, p5, 3) + c3_flops(512, 512, p5))
    assert profile("yolo5face_s", input_size=(128, 128)).flops == y5s

    def dw(c1: int, c2: int, p: int) -> int:
        return cv(c1, c1, p, 3, groups=c1) + cv(c1, c2, p)

    lite = (cv(192, 48, p5) + 48 * p4 + dw(144, 48, p4) + cv(48, 48, p4) + 48 * p3
            + dw(96, 48, p3) + dw(48, 48, p4) + 48 * p4 + dw(48, 48, p4)  # down, Add, block
            + dw(48, 48, p5) + 48 * p5 + dw(48, 48, p5))
    assert profile("yolov8_lite_t", input_size=(128, 128)).flops == lite


def test_yunet_neck_is_a_small_part_of_the_published_whole() -> None:
    """YuNet-s is 54,608 parameters in all (libfacedetection's figure); its neck 14,784."""
    params = profile("yunet").params
    assert params == 14_784 and 0.25 < params / 54_608 < 0.3


# -- outputs equal an independent re-implementation ------------------------------------------
def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str, eps: float) -> torch.Tensor:
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"],
                        sd[p + "bias"], False, 0.0, eps)


def _conv(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str, k: int = 1,
          s: int = 1) -> torch.Tensor:
    """The authors' Conv with SiLU; BatchNorm eps 1e-3 as ultralytics/yolov5 set it."""
    y = F.conv2d(x, sd[p + "conv.weight"], None, s, k // 2)
    return F.silu(_bn(y, sd, p + "bn.", 1e-3))


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _c3(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str, n: int) -> torch.Tensor:
    a = _conv(x, sd, p + "cv1.")
    for i in range(n):
        a = _conv(_conv(a, sd, f"{p}m.{i}.cv1."), sd, f"{p}m.{i}.cv2.", 3)
    return _conv(torch.cat([a, _conv(x, sd, p + "cv2.")], 1), sd, p + "cv3.")


def _c2f(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str, n: int) -> torch.Tensor:
    y = list(_conv(x, sd, p + "cv1.").chunk(2, 1))
    for i in range(n):
        y.append(_conv(_conv(y[-1], sd, f"{p}m.{i}.cv1.", 3), sd, f"{p}m.{i}.cv2.", 3))
    return _conv(torch.cat(y, 1), sd, p + "cv2.")


def _dw(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str, s: int = 1) -> torch.Tensor:
    c = x.shape[1]
    y = F.silu(_bn(F.conv2d(x, sd[p + "conv1.weight"], None, s, 1, 1, c), sd, p + "bn1.", 1e-3))
    return F.silu(_bn(F.conv2d(y, sd[p + "conv2.weight"]), sd, p + "bn2.", 1e-3))


def _reference(name: str, sd: dict[str, torch.Tensor], x: list[torch.Tensor]
               ) -> list[torch.Tensor]:
    """Each family's forward, written from the authors' yaml with functional ops."""
    family = get_spec(name).family
    if family == "yunet":
        def dpu(t: torch.Tensor, i: int) -> torch.Tensor:
            p = f"lateral_convs.{i}."
            t = F.conv2d(t, sd[p + "conv1.weight"], sd[p + "conv1.bias"])
            t = F.conv2d(t, sd[p + "conv2.weight"], sd[p + "conv2.bias"], 1, 1, 1, t.shape[1])
            return F.relu(_bn(t, sd, p + "bn.", 1e-5))
        p5 = dpu(x[2], 2)
        p4 = dpu(x[1] + _up(p5), 1)
        return [dpu(x[0] + _up(p4), 0), p4, p5]
    def m(i: int) -> str:  # layer i of the s yaml, moved to where this tier's neck starts
        return f"model.{i + get_spec(name).first_layer - start[family]}."

    start = {"yolo5face": 9, "yolov8": 10, "yolov8_lite": 8}
    if family == "yolo5face":  # yolov5s.yaml head: layers 9..22, C3 x n (n tiers from 7)
        n = get_spec(name).repeats
        l5 = _conv(x[2], sd, m(9))
        t4 = _c3(torch.cat([_up(l5), x[1]], 1), sd, m(12), n)
        l4 = _conv(t4, sd, m(13))
        p3 = _c3(torch.cat([_up(l4), x[0]], 1), sd, m(16), n)
        p4 = _c3(torch.cat([_conv(p3, sd, m(17), 3, 2), l4], 1), sd, m(19), n)
        p5 = _c3(torch.cat([_conv(p4, sd, m(20), 3, 2), l5], 1), sd, m(22), n)
        return [p3, p4, p5]
    if family == "yolov8":  # yolov8.yaml head: layers 10..21
        n = get_spec(name).repeats
        t4 = _c2f(torch.cat([_up(x[2]), x[1]], 1), sd, m(12), n)
        p3 = _c2f(torch.cat([_up(t4), x[0]], 1), sd, m(15), n)
        p4 = _c2f(torch.cat([_conv(p3, sd, m(16), 3, 2), t4], 1), sd, m(18), n)
        p5 = _c2f(torch.cat([_conv(p4, sd, m(19), 3, 2), x[2]], 1), sd, m(21), n)
        return [p3, p4, p5]
    # yolov8-lite-t.yaml head: layers 8..21, ADD bottom-up
    l5 = _conv(x[2], sd, m(8))
    t4 = _dw(torch.cat([_up(l5), x[1]], 1), sd, m(11))
    l4 = _conv(t4, sd, m(12))
    p3 = _dw(torch.cat([_up(l4), x[0]], 1), sd, m(15))
    p4 = _dw(_dw(p3, sd, m(16), 2) + l4, sd, m(18))
    p5 = _dw(_dw(p4, sd, m(19), 2) + l5, sd, m(21))
    return [p3, p4, p5]


@pytest.mark.parametrize("name", ["yunet", "yolo5face_n0.5", "yolo5face_m", "yolov8n_face",
                                  "yolov8m_face", "yolov8_lite_t"])
def test_outputs_equal_a_functional_reimplementation(name: str) -> None:
    spec = get_spec(name).replace(input_size=(96, 64))
    model = seeded_model(spec, seed=3)  # BN statistics and affines drawn too
    sd = dict(model.state_dict())
    x = make_inputs(spec, seed=5)
    with torch.no_grad():
        got = model(x)
        want = _reference(name, sd, x)
    assert len(got) == 3
    for g, w, c in zip(got, want, spec.level_channels, strict=True):
        assert g.shape[1] == c
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # The check can fail: one changed weight moves the outputs.
    key = next(k for k in sd if k.endswith("weight") and sd[k].dim() == 4)
    sd[key] = sd[key] * 1.5
    with torch.no_grad():
        moved = _reference(name, sd, x)
    assert any(not torch.allclose(g, m, atol=1e-4) for g, m in zip(got, moved, strict=True))


def test_a_p6_neck_runs_four_levels_at_the_yaml_indices() -> None:
    model = build_neck("yolo5face_s6", input_size=(256, 256))
    keys = {k.split(".")[1] for k in model.state_dict()}
    # yolov5s6.yaml: L6 11, C3 14, L5 15, C3 18, L4 19, C3 22 (P3), 23 down, 25 C3 (P4),
    # 26, 28 (P5), 29, 31 (P6)
    assert keys == {"11", "14", "15", "18", "19", "22", "23", "25", "26", "28", "29", "31"}
    outs = model(make_inputs(model.spec))
    assert [tuple(o.shape[1:]) for o in outs] == [(128, 32, 32), (256, 16, 16), (384, 8, 8),
                                                  (512, 4, 4)]


# -- variants from flags -----------------------------------------------------------------------
def test_variants_from_flags_and_their_rules() -> None:
    spec = get_spec("yolov8n_face", widths=(32, 64, 96), repeats=2, act="relu")
    assert spec.out_channels == 32 and spec.level_channels == (32, 64, 96)
    model = build_neck(spec.replace(input_size=(64, 64)))
    assert len(model.model["12"].m) == 2 and isinstance(model.model["12"].cv1.act,
                                                         torch.nn.ReLU)
    assert get_spec("yolo5face_s", out_channels=64).level_channels == (64, 64, 64)
    with pytest.raises(SpecError, match="widths has 3 level"):
        get_spec("yolo5face_s", in_channels=(64, 128, 256, 512))
    four = get_spec("yolo5face_s", in_channels=(64, 128, 256, 512), widths=(32, 64, 96, 128))
    assert four.num_levels == 4
    with pytest.raises(SpecError, match="needs 64 channels"):
        get_spec("yunet", in_channels=(32, 64, 64))
    with pytest.raises(SpecError, match="--norm gn is not an option"):
        get_spec("yolov8_lite_t", norm="gn")
    with pytest.raises(SpecError, match="--repeats does not apply to yolov8_lite_t"):
        get_spec("yolov8_lite_t", repeats=2)
    code, out, err = run("profile", "yolov8n_face", "--widths", "32,64,96", "--repeats", "2",
                         "--input-size", "64", "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["widths"] == [32, 64, 96]


def test_stage_names_fit_each_family() -> None:
    stages = {name: list(profile(name, input_size=(64, 64)).to_dict()["stages"])
              for name in ("yunet", "yolo5face_n", "yolov8n_face", "yolov8_lite_t")}
    assert stages == {"yunet": ["dpu", "top-down"],
                      "yolo5face_n": ["lateral", "top-down", "downsample", "bottom-up"],
                      "yolov8n_face": ["top-down", "downsample", "bottom-up"],
                      "yolov8_lite_t": ["lateral", "top-down", "downsample", "bottom-up"]}
    model = build_neck("yolo5face_n")
    assert model.part_of("model.7.conv") == ("lateral", 2)
    assert model.part_of("model.14.m.0.cv2.conv") == ("top-down", 0)
    assert model.part_of("model.15") == ("downsample", 1)
    assert model.part_of("model.20.cv3.bn") == ("bottom-up", 2)
    assert model.part_of("model.99.conv") is None and model.part_of("other.1") is None


# -- checkpoints in the authors' layouts ----------------------------------------------------
def _whole_yolo(name: str, seed: int) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """A state dict as the authors' Model holds it: backbone layers before the neck, the
    neck's own model.<i>., the Detect layer after it."""
    neck = seeded_model(get_spec(name).replace(input_size=(64, 64)), seed=seed)
    state = dict(neck.state_dict())
    first = neck.spec.first_layer
    for i in range(first):  # a backbone: Conv layers
        state[f"model.{i}.conv.weight"] = torch.randn(8, 8, 3, 3)
        state[f"model.{i}.bn.weight"] = torch.ones(8)
    last = max(int(k.split(".")[1]) for k in neck.state_dict())
    for k, c in enumerate(neck.spec.level_channels):
        if neck.spec.family == "yolo5face":  # yolov5 Detect: m.<k> 1x1 convs and anchors
            state[f"model.{last + 1}.m.{k}.weight"] = torch.randn(16, c, 1, 1)
        else:  # ultralytics Detect/Pose: cv2.<k>, cv3.<k> Conv stacks, dfl
            state[f"model.{last + 1}.cv2.{k}.0.conv.weight"] = torch.randn(16, c, 3, 3)
            state[f"model.{last + 1}.cv3.{k}.0.conv.weight"] = torch.randn(16, c, 3, 3)
    if neck.spec.family == "yolo5face":
        state[f"model.{last + 1}.anchors"] = torch.randn(3, 3, 2)
    return state, neck


@pytest.mark.parametrize("name", ["yolo5face_s", "yolo5face_n", "yolo5face_s6",
                                  "yolov8s_face", "yolov8_lite_s"])
def test_a_model_state_dict_names_its_preset_and_loads_the_necks_weights(
        name: str, tmp_path: pathlib.Path) -> None:
    state, neck = _whole_yolo(name, seed=11)
    path = tmp_path / "best.pt"
    torch.save({"model": state, "epoch": 3}, path)  # wrapped as a training checkpoint
    found = identify_checkpoint(path)
    assert found.presets == (name,) and found.spec.first_layer == neck.spec.first_layer
    assert found.spec.level_channels == neck.spec.level_channels
    fresh = build_neck(get_spec(name).replace(input_size=(64, 64)), seed=99)
    load_weights(fresh, path)
    for k, v in neck.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    code, out, err = run("inspect", str(path), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["presets"] == [name] and data["family"] == get_spec(name).family
    # a neck tensor missing is named, not silently skipped
    del state[next(k for k in neck.state_dict() if k.endswith("conv.weight"))]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(WeightsError, match="does not fit the neck"):
        load_weights(fresh, tmp_path / "broken.pt")


def test_a_yunet_checkpoint_under_neck_loads(tmp_path: pathlib.Path) -> None:
    neck = seeded_model(get_spec("yunet"), seed=4)
    state = {f"neck.{k}": v for k, v in neck.state_dict().items()}
    state["backbone.model0.conv1.weight"] = torch.randn(16, 3, 3, 3)
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "yunet_s.pth")
    found = identify_checkpoint(tmp_path / "yunet_s.pth")
    assert found.presets == ("yunet",) and found.load_prefix == "neck."
    code, out, err = run("export", "--weights", str(tmp_path / "yunet_s.pth"), "--onnx",
                         "--input-size", "64", "--static", "--trials", "1", "-o",
                         str(tmp_path / "y.onnx"), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["verification"]["passed"] and data["neck"] == "yunet"


@pytest.mark.parametrize(("module", "cls", "hint"), [
    ("models.yolo", "Model", "python export.py --weights yolov5n-face.pt"),
    ("ultralytics.nn.tasks", "DetectionModel", "yolo export model=yolov5n-face.pt format=onnx"),
])
def test_a_pickled_whole_model_is_never_unpickled_and_says_how_to_reach_its_neck(
        tmp_path: pathlib.Path, module: str, cls: str, hint: str) -> None:
    marker = tmp_path / "ran.txt"
    package = tmp_path / "pkg"
    *parents, leaf = module.split(".")
    folder = package
    for part in parents:
        folder = folder / part
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text("")
    (folder / f"{leaf}.py").write_text(textwrap.dedent(f"""
        class {cls}:
            def __setstate__(self, state):
                open({str(marker)!r}, "w").write("unpickled")
    """))
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(package)!r})
        from {module} import {cls}
        m = {cls}(); m.x = 1
        torch.save({{"model": m, "epoch": 1}}, {str(tmp_path / 'yolov5n-face.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    code, out, err = run("inspect", str(tmp_path / "yolov5n-face.pt"))
    assert code == 2 and out == "" and not marker.exists()
    assert err.count("\n") == 1 and err.startswith("necktool: error: ")
    assert f"{module}.{cls}" in err and "never unpickles" in err and hint in err
    assert "inspect the .onnx" in err


# -- preprocessing -----------------------------------------------------------------------------
def test_each_family_declares_its_image_preprocessing() -> None:
    yunet = default_preprocess("yunet")
    assert yunet.bgr and yunet.mean == (0.0, 0.0, 0.0) and yunet.std == (1.0, 1.0, 1.0)
    for family in ("yolo5face", "yolov8", "yolov8_lite"):
        pre = default_preprocess(family)
        assert not pre.bgr and pre.mean == (0.0, 0.0, 0.0) and pre.std == (255.0,) * 3
    assert default_preprocess("pafpn").mean == (127.5,) * 3  # SCRFD's kept
    assert default_preprocess("fpn").bgr and default_preprocess("fpn").mean == (104.0, 117.0,
                                                                               123.0)
    from necktool.spec.families import FamilyInfo

    bare = FamilyInfo(name="bare", description="", builder="x:y", fields=("in_channels",))
    with pytest.raises(SpecError, match="family 'bare' declares no image preprocessing"):
        bare.image_norm()
    with pytest.raises(SpecError, match="family 'bare' declares no parameter bound"):
        bare.bound_params(None)


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items()
                                  if p.spec.family in NEW_FAMILIES])
def test_the_declared_parameter_bound_holds(name: str) -> None:
    spec = get_spec(name)
    with torch.device("meta"):
        model = spec.info.load_builder()(spec)
    assert sum(p.numel() for p in model.parameters()) <= spec.info.bound_params(spec)


@pytest.mark.parametrize(("name", "overrides"), [
    ("yunet", {"norm": "none", "act": "none"}),
    ("yunet", {"in_channels": (16, 16, 16, 40), "out_channels": 16}),
    ("yolo5face_s", {"in_channels": (24, 40, 56, 72), "widths": (16, 32, 48, 64),
                     "repeats": 2, "norm": "none", "act": "relu"}),
    ("yolov8n_face", {"in_channels": (24, 40), "widths": (16, 32), "repeats": 3,
                      "first_layer": 4}),
    ("yolov8_lite_t", {"in_channels": (24, 40, 56, 72), "out_channels": 16,
                       "act": "leaky_relu"}),
])
def test_variants_equal_the_reference_and_count_by_hand(name: str, overrides: dict) -> None:  # type: ignore[type-arg]
    from _analytic import CONV_MACS, PARAMS, REFERENCE

    spec = get_spec(name, **overrides, input_size=(200, 136))
    model = seeded_model(spec, seed=2)
    feats = make_inputs(spec, batch=2, seed=7)
    with torch.no_grad():
        got = model(feats)
    want = REFERENCE[spec.family](dict(model.state_dict()), feats, spec)
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        assert g.abs().max() > 0.05
    r = profile(spec)
    assert r.operators["conv"] == sum(CONV_MACS[spec.family](spec, 200, 136))
    assert r.params == PARAMS[spec.family](spec)
