"""The receptive field of every output level, checked against autograd.

Independent measurement: every weight and input positive and no normalisation statistics
(BatchNorm in eval mode, or no norm), so no ReLU is closed and no sum cancels; then
backpropagate from each pixel of a block of positions at the centre of each output level
(one batch element per position, so one backward pass serves the whole block) and take
the bounding box of the input pixels with a non-zero gradient. The largest box over the
block must equal :func:`receptive_fields`' figure exactly, on every input level.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from necktool.analysis.profiling import profile
from necktool.analysis.receptive import receptive_fields
from necktool.necks.build import build_neck
from necktool.spec.fields import ExtraConvs, Norm
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.registry import resolve_spec

#: image side in coarsest-level pixels: every block below stays inside the borders (asserted);
#: the PAFPNs' fields reach further (P5 sees 17 pixels of c3), so they run larger
SIDE_IN_COARSEST = 8
WIDER = {"scrfd_2.5g": 12, "pafpn-4": 12, "insightface_scrfd_500m": 12}

CASES = {
    # family pafpn (the SCRFD seed), 3 and 4 levels, GroupNorm replaced by no norm
    "scrfd_2.5g": dict(norm=Norm.NONE),
    "pafpn-4": dict(norm=Norm.NONE, in_channels=(4, 4, 4, 4)),
    # family fpn (RetinaFace), BatchNorm in eval mode kept; 3 and 2 levels
    "retinaface_mnet": {},
    "fpn-2": dict(in_channels=(4, 4)),
    # mmdetection FPN: extra convs on the input, on the lateral with ReLU between, max-pool
    "mmdet_fpn": {},
    "mmdet_fpn-lateral": dict(extra_convs=ExtraConvs.ON_LATERAL, relu_before_extra_convs=True,
                              num_outs=5),
    "mmdet_fpn-pool": dict(extra_convs=ExtraConvs.NONE, in_channels=(4, 4, 4, 4), num_outs=5),
    # mmdetection PAFPN: the released SCRFD necks, and extras on the output, 2 inputs + 2
    "insightface_scrfd_500m": {},
    "mmdet_pafpn-extra": dict(in_channels=(4, 4), num_outs=4),
}


def _spec(case: str) -> NeckSpec:
    preset = case.split("-")[0]
    overrides = {"in_channels": (4, 4, 4), "out_channels": 4, **CASES[case]}
    return resolve_spec(preset, **overrides)


def _positive(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.1)
    return model.eval()


def measured(model: nn.Module, spec: NeckSpec, level: int,
             side_in_coarsest: int = SIDE_IN_COARSEST) -> dict[str, tuple[int, int]]:
    """Largest gradient bounding box per input level over a central block of positions
    of output ``level``; asserts no box touches an input's border."""
    size = (side_in_coarsest * spec.strides[-1],) * 2
    out_h, out_w = spec.level_sizes(size)[level]
    side = 2 ** max(1, spec.num_inputs - 1 - min(level, spec.num_inputs - 1))
    positions = [(out_h // 2 + dy, out_w // 2 + dx) for dy in range(side) for dx in range(side)]
    gen = torch.Generator().manual_seed(1)
    inputs = [(torch.rand(len(positions), c, h, w, generator=gen) + 0.5).requires_grad_()
              for c, (h, w) in zip(spec.in_channels, spec.input_sizes(size),
                                   strict=True)]
    out = model(inputs)[level]
    picked = torch.stack([out[b, :, y, x].sum() for b, (y, x) in enumerate(positions)])
    grads = torch.autograd.grad(picked.sum(), inputs, allow_unused=True)
    found = {}
    for name, grad in zip(spec.input_names, grads, strict=True):
        best = (0, 0)
        if grad is None:  # no path from this input level at all
            found[name] = best
            continue
        for b in range(len(positions)):
            rows = grad[b].abs().sum(dim=(0, 2)).nonzero().flatten()
            cols = grad[b].abs().sum(dim=(0, 1)).nonzero().flatten()
            if not len(rows):
                continue
            assert rows.min() > 0 and cols.min() > 0
            assert rows.max() < grad.shape[2] - 1 and cols.max() < grad.shape[3] - 1
            box = (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
            best = (max(best[0], box[0]), max(best[1], box[1]))
        found[name] = best
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_matches_autograd_bounding_boxes(case: str) -> None:
    spec = _spec(case)
    model = _positive(build_neck(spec))
    fields = receptive_fields(model, spec)
    assert fields.levels is not None, fields.unreadable
    for level, rf in enumerate(fields.levels):
        seen = measured(model, spec, level, WIDER.get(case, SIDE_IN_COARSEST))
        assert rf.inputs == seen, (spec.level_names[level], rf.inputs, seen)
        assert rf.image == tuple(
            max(hw[axis] * s for hw, s in zip(seen.values(), spec.input_strides, strict=True))
            for axis in (0, 1))


def test_hand_counts_on_the_seed_pafpn() -> None:
    # P5 output: 3x3 at P5 <- bu stride-2 3x3 <- bu stride-2 3x3 <- td 3x3 at P3:
    # 3 -> 2*3+1 = 7 (P4) -> 15 (P3) -> 17 on c3 through the laterals (1x1)
    spec = resolve_spec("scrfd_2.5g")
    rf = receptive_fields(build_neck(spec), spec).levels
    assert rf is not None
    assert rf[2].inputs["c3"] == (17, 17)
    # c4: 7 (P4) + 2 = 9; c5: 3 (P5) + 2 = 5; image: the largest of 17*8, 9*16, 5*32
    assert rf[2].inputs["c4"] == (9, 9) and rf[2].inputs["c5"] == (5, 5)
    assert rf[2].image == (160, 160)
    # RetinaFace's P5 is one 1x1 lateral: one pixel of c5, nothing of c3/c4
    spec = resolve_spec("retinaface_mnet")
    rf = receptive_fields(build_neck(spec), spec).levels
    assert rf is not None
    assert rf[2].inputs == {"c3": (0, 0), "c4": (0, 0), "c5": (1, 1)}


class Dilated(nn.Module):
    """A custom neck: a 5x3 conv with dilation 2 per level, plus the coarser level
    bilinearly upsampled, concatenated along channels and zero-padded by hand."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, out_channels, (5, 3), padding=(4, 2),
                                             dilation=2) for c in in_channels)
        self.mix = nn.ModuleList(nn.Conv2d(2 * out_channels, out_channels, 1)
                                 for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        outs = [conv(x) for conv, x in zip(self.convs, feats, strict=True)]
        fused = []
        for i, x in enumerate(outs):
            coarse = outs[min(i + 1, len(outs) - 1)]
            up = nn.functional.interpolate(coarse, size=x.shape[-2:], mode="bilinear")
            padded = nn.functional.pad(up[:, :, 1:, :], (0, 0, 0, 1))
            fused.append(self.mix[i](torch.cat([x, padded], dim=1)))
        return tuple(fused)


def test_custom_neck_matches_autograd() -> None:
    spec = NeckSpec("pafpn", (4, 4, 4), 4)  # only its level names and strides are used
    model = _positive(Dilated([4, 4, 4], 4))
    fields = receptive_fields(model, spec)
    assert fields.levels is not None, fields.unreadable
    assert fields.levels[0].inputs["c3"] == (9, 5)  # 2 * (5 - 1) + 1 by 2 * (3 - 1) + 1
    for level, rf in enumerate(fields.levels):
        assert rf.inputs == measured(model, spec, level, side_in_coarsest=16)


class Cspish(nn.Module):
    """A custom neck in the YOLO manner: channel split and concat, average-pool down,
    a transposed conv up, in-place activations, and a scale_factor upsample."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.halves = nn.ModuleList(nn.Conv2d(c // 2, c // 2, 3, padding=1) for c in in_channels)
        self.up = nn.ConvTranspose2d(in_channels[1], in_channels[0], 4, stride=2, padding=1)
        self.out = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        mixed = []
        for conv, x in zip(self.halves, feats, strict=True):
            a, b = x.chunk(2, dim=1)
            mixed.append(torch.cat([nn.functional.relu(conv(a), inplace=True), b], dim=1))
        p3 = mixed[0] + self.up(mixed[1])
        p4 = mixed[1] + nn.functional.avg_pool2d(p3, 3, 2, 1)
        p5 = mixed[2] + nn.functional.interpolate(
            nn.functional.avg_pool2d(p4, 2), scale_factor=1.0)
        return tuple(conv(x) for conv, x in zip(self.out, (p3, p4, p5), strict=True))


def test_split_concat_pool_and_transposed_conv_match_autograd() -> None:
    spec = NeckSpec("pafpn", (4, 4, 4), 4)
    model = _positive(Cspish([4, 4, 4], 4))
    fields = receptive_fields(model, spec)
    assert fields.levels is not None, fields.unreadable
    for level, rf in enumerate(fields.levels):
        assert rf.inputs == measured(model, spec, level, side_in_coarsest=16)


class Unmodelled(nn.Module):
    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.fft.fft2(x).real for x in feats)


def test_unreadable_structure_is_said() -> None:
    spec = NeckSpec("pafpn", (4, 4, 4), 4)
    fields = receptive_fields(Unmodelled(), spec)
    assert fields.levels is None
    assert "fft2" in (fields.unreadable or "")


def test_profile_cli_json_carries_it() -> None:
    from typer.testing import CliRunner

    from necktool.cli import app

    result = CliRunner().invoke(app, ["profile", "scrfd_2.5g", "--input-size", "128",
                                      "--format", "json"])
    assert result.exit_code == 0, result.stderr
    levels = json.loads(result.stdout)["levels"]
    assert [lv["receptive_field"]["image"] for lv in levels] == [[64, 64], [96, 96],
                                                                 [160, 160]]
    assert levels[2]["receptive_field"]["inputs"] == {"c3": [17, 17], "c4": [9, 9],
                                                      "c5": [5, 5]}


def test_profile_reports_it() -> None:
    result = profile("retinaface_mnet", input_size=(128, 128))
    data = result.to_dict()
    assert data["levels"][2]["receptive_field"] == {
        "image": [32, 32], "inputs": {"c3": [0, 0], "c4": [0, 0], "c5": [1, 1]}}
    titles = [getattr(b, "title", "") for b in result.blocks()]
    assert any(t.startswith("receptive field") for t in titles)


# -- any chain of size-keeping ops on each level -------------------------------------
def _op(kind: str, k: int, d: int) -> nn.Module:
    if kind == "conv":
        return nn.Conv2d(2, 2, k, padding=d * (k // 2), dilation=d)
    if kind == "wide":  # a non-square kernel
        return nn.Conv2d(2, 2, (k, 1), padding=(d * (k // 2), 0), dilation=d)
    if kind == "pool":  # average 3x3, stride 1: every pixel of the window counts
        return nn.AvgPool2d(3, 1, 1)
    # down then up: a 2x2 average pool, then nearest 2x upsampling
    return nn.Sequential(nn.AvgPool2d(2), nn.Upsample(scale_factor=2.0, mode="nearest"))


class Chains(nn.Module):
    def __init__(self, ops: list[tuple[str, int, int]]) -> None:
        super().__init__()
        self.chains = nn.ModuleList(nn.Sequential(*(_op(*o) for o in ops)) for _ in range(2))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(chain(x) for chain, x in zip(self.chains, feats, strict=True))


@settings(max_examples=8, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["conv", "wide", "pool", "down-up"]),
                          st.sampled_from([1, 3, 5]), st.sampled_from([1, 2])),
                min_size=1, max_size=3))
def test_any_chain_of_ops_matches_autograd(ops: list[tuple[str, int, int]]) -> None:
    spec = NeckSpec("fpn", (2, 2), 2)
    model = _positive(Chains(ops))
    fields = receptive_fields(model, spec)
    assert fields.levels is not None, fields.unreadable
    for level, rf in enumerate(fields.levels):
        assert rf.inputs == measured(model, spec, level, side_in_coarsest=24)
