"""Finding the neck inside detector ONNX files by structure (necktool.detector.neck).

The detectors are built in tests/detectors.py (a strided-conv backbone, a neck of each
family with known weights, a per-level head), exported by both exporters and varied the
ways released files vary. What find_neck reports is checked against the torch model the
file came from: the spec it was built with, and the values of the tensors it names (run
in ONNX Runtime) against the torch backbone's and neck's outputs.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from detectors import SIZE, VARIANTS, spec_of, suite
from onnx import helper

from necktool.detector import find_neck, load_detector
from necktool.detector.inspect import inspect_detector
from necktool.detector.neck import DEFAULT_SIZE
from necktool.errors import InputError

TOL = 1e-4  # fp32: ORT vs PyTorch on the same tiny convs


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_found_spec_is_the_one_the_detector_was_built_with(name: str) -> None:
    kind, static, state = VARIANTS[name]
    found = find_neck(load_detector(suite().files[name]))
    want = spec_of(kind).replace(input_size=SIZE if static else DEFAULT_SIZE)
    assert found.spec.to_dict() == want.to_dict()
    assert found.norm_state == state
    assert found.strides == tuple(8 * 2 ** i for i in range(want.num_levels))
    assert found.input_strides == (8, 16, 32)
    assert found.image_size == (SIZE if static else None)


def _run_exposed(path: str, names: list[str], image: np.ndarray) -> dict[str, np.ndarray]:
    model = onnx.load(path)
    for n in names:
        model.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {model.graph.input[0].name: image})
    return dict(zip([o.name for o in sess.get_outputs()], outs, strict=True))


@pytest.mark.parametrize("name", ["retinaface_bn_dynamic", "retinaface_opset9",
                                  "retinaface_rewritten", "scrfd_dedup", "scrfd_numbered",
                                  "scrfd_extra_dynamo", "retinanet_ts", "seed_numbered",
                                  "seed_gn", "retinaface_fused"])
def test_the_named_tensors_hold_the_backbone_and_neck_outputs(name: str) -> None:
    """Names are not evidence: the tensors found must hold what the torch model computes."""
    s = suite()
    found = find_neck(load_detector(s.files[name]))
    model = s.models[name]
    image = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        feats = model.backbone(image)
        outs = model.neck(feats)
    got = _run_exposed(str(s.files[name]), [*found.inputs, *found.outputs], image.numpy())
    for tensor, ref in zip([*found.inputs, *found.outputs], [*feats, *outs], strict=True):
        np.testing.assert_allclose(got[tensor], ref.numpy(), atol=TOL, rtol=TOL)


def test_the_variants_cover_the_exporters_and_opsets() -> None:
    opsets = {name: onnx.load(str(path)).opset_import[0].version
              for name, path in suite().files.items()}
    assert opsets["retinaface_opset9"] == 9 and opsets["retinaface_ts"] == 11
    assert opsets["retinaface_fused"] == 21 and opsets["scrfd_extra_dynamo"] >= 18
    ops = {n.op_type for n in onnx.load(str(suite().files["retinaface_opset9"])).graph.node}
    assert "Upsample" in ops and "Resize" not in ops
    fused = onnx.load(str(suite().files["retinaface_fused"]))
    assert len(fused.graph.output) == 1


def test_deduplicated_biases_are_followed_through_the_conv_nodes() -> None:
    """As in insightface's SCRFD: fpn_convs.1 reads downsample_convs.0's bias, and
    neck.fpn_convs.1.conv.bias does not exist in the file."""
    path = suite().files["scrfd_dedup"]
    model = onnx.load(str(path))
    names = {i.name for i in model.graph.initializer}
    assert "neck.fpn_convs.1.conv.bias" not in names
    assert "neck.downsample_convs.0.conv.bias" in names
    found = find_neck(model)
    fpn1 = next(c for c in found.by_role("fpn") if c.level == 1)
    down = next(c for c in found.by_role("downsample") if c.level == 1)
    assert fpn1.bias == down.bias == "neck.downsample_convs.0.conv.bias"
    assert fpn1.weight == "neck.fpn_convs.1.conv.weight"


def _conv_costs(model: torch.nn.Module, image: torch.Tensor) -> tuple[int, int]:
    """Conv MACs and params of a torch module, counted by forward hooks."""
    macs = [0]

    def hook(m: torch.nn.Conv2d, _inp: object, out: torch.Tensor) -> None:
        macs[0] += out.numel() * m.in_channels // m.groups * math.prod(m.kernel_size)

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    handles = [m.register_forward_hook(hook) for m in convs]
    with torch.no_grad():
        model(image)
    for h in handles:
        h.remove()
    return macs[0], sum(p.numel() for m in convs for p in m.parameters())


def test_neck_macs_and_params_are_counted_by_hand() -> None:
    # mmdet PAFPN, in 16,24,32 -> 16, at 128x128 (levels 16x16, 8x8, 4x4):
    # laterals 16*16*(16*256 + 24*64 + 32*16) = 98,304; fpn 3x3 convs 2304*(256+64+16) =
    # 774,144; downsample and pafpn convs 2304*(64+16) each = 184,320 + 184,320.
    # params: laterals 272+400+528 = 1,200; seven 3x3 16->16 convs 7*(2304+16) = 16,240;
    # the bias fpn_convs.1 and downsample_convs.0 share is one tensor in the file: -16.
    result = inspect_detector(suite().files["scrfd_dedup"])
    assert result is not None
    assert result.neck_costs.macs == 98_304 + 774_144 + 2 * 184_320 == 1_241_088
    assert result.neck_costs.params == 1_200 + 16_240 - 16
    # the whole graph's, against forward hooks on the torch detector (BN folded into convs:
    # the same MACs; the folded convs gain a bias each, as the file holds them)
    model = suite().models["scrfd_dedup"]
    macs, params = _conv_costs(model, torch.zeros(1, 3, *SIZE))
    backbone_bn = sum(m.num_features for m in model.backbone.modules()
                      if isinstance(m, torch.nn.BatchNorm2d))
    assert result.graph_costs.macs == macs
    assert result.graph_costs.params == params + backbone_bn - 16
    assert result.to_dict()["neck_share"]["conv_macs"] == round(1_241_088 / macs, 6)


def test_a_dynamic_detector_is_costed_at_the_stated_default_size() -> None:
    result = inspect_detector(suite().files["scrfd_dynamic"])
    assert result is not None and not result.static \
        and result.neck.spec.input_size == DEFAULT_SIZE
    assert "figures are at 640x640" in " ".join(result.neck.notes)
    # the same neck at 640x640 is 25x the 128x128 count (every level scales by 5x5)
    assert result.neck_costs.macs == 25 * 1_241_088


def test_the_exact_preset_is_named() -> None:
    result = inspect_detector(suite().files["scrfd_2.5g"])
    assert result is not None
    assert result.presets == ("insightface_scrfd_2.5g",)
    assert result.command == "necktool profile insightface_scrfd_2.5g --input-size 128x128"


def test_a_classifier_has_no_neck_and_says_what_it_found() -> None:
    with pytest.raises(InputError, match=r"no neck found: 4 Conv nodes \(1 of them 1x1\), "
                       "no top-down upsample-and-add"):
        find_neck(load_detector(suite().files["classifier"]))
