"""fvcore counts against hand-worked formulas and PyTorch's own FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from _analytic import CONV_MACS, PARAMS, level_sizes, mmdet_level_flops, mmdet_params
from _presets import every_preset
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from necktool import InputError, NeckSpec, SpecError, build_neck, make_inputs, profile
from necktool.spec.neck_spec import seed_gn_groups
from necktool.spec.registry import PRESETS


def _analytic(spec: NeckSpec, h: int, w: int, batch: int = 1) -> tuple[list[int], int]:
    return CONV_MACS[spec.family](spec, h, w, batch), PARAMS[spec.family](spec)


@pytest.mark.parametrize("name", every_preset())
def test_preset_counts_match_formula_and_flopcountermode(name: str) -> None:
    result = profile(name)
    spec = result.spec
    h, w = spec.input_size
    conv_levels, params = _analytic(spec, h, w)

    assert result.operators["conv"] == sum(conv_levels)
    assert result.params == params
    neck = build_neck(spec)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        neck(make_inputs(spec, seed=None))
    assert counter.get_total_flops() == 2 * result.operators["conv"]  # 2 flops per MAC there
    # ... and the profile's own second count, from torch.utils.flop_counter's formula
    assert counter.get_total_flops() == 2 * result.cross_check.flop_counter_conv_macs
    assert result.cross_check.agree

    assert result.flops == sum(lv.flops for lv in result.levels)  # exact attribution
    assert result.flops == sum(result.stages.values())
    assert result.params == sum(lv.params for lv in result.levels)
    assert result.unsupported_ops == {}
    assert [lv.shape for lv in result.levels] == [
        (1, c, lh, lw) for c, (lh, lw) in zip(spec.level_channels,
                                              level_sizes(h, w, spec.num_levels), strict=True)]
    assert all(isinstance(v, int) for v in result.operators.values())


def test_seed_style_pafpn_matches_reference_figures() -> None:
    # REFERENCE.md: in 40,80,160 -> 40 with inputs 80/40/20 px (a 640 image).
    r = profile("pafpn", in_channels=(40, 80, 160), out_channels=40, input_size=(640, 640))
    assert r.operators["conv"] == 288_640_000
    assert r.operators["group_norm"] == 5_440_000  # fvcore: 5 flops per element
    assert r.operators["upsample_nearest2d"] == 320_000  # 40 * (80*80 + 40*40)
    # our add handle: top-down adds at P3, P4 and bottom-up adds at P4, P5, one flop each
    assert r.operators["add"] == 40 * (80 * 80 + 40 * 40) + 40 * (40 * 40 + 20 * 20)
    assert r.params == 127_280
    # P3 by hand: lateral 1x1, td 3x3, out 3x3, 3 GNs, the upsample into P3 and its add
    p3 = 40 * 6400 * 40 + 2 * 40 * 6400 * 40 * 9 + 3 * 5 * 40 * 6400 + 2 * 40 * 6400
    assert r.levels[0].flops == p3
    assert r.stages["lateral"] == 40 * (6400 * 40 + 1600 * 80 + 400 * 160) + \
        5 * 40 * (6400 + 1600 + 400)


def test_retinaface_fpn_counts_by_stage() -> None:
    r = profile("retinaface_mnet", input_size=(64, 64))  # levels 8x8, 4x4, 2x2
    lateral_conv = 64 * (64 * 64 + 128 * 16 + 256 * 4)
    merge_conv = 64 * 64 * 9 * (64 + 16)
    bn = 2 * 64 * (64 + 16 + 4) + 2 * 64 * (64 + 16)  # fvcore: 2 per element in eval mode
    assert r.operators["conv"] == lateral_conv + merge_conv
    assert r.operators["batch_norm"] == bn
    assert r.stages["lateral"] == lateral_conv + 2 * 64 * (64 + 16 + 4)
    assert r.stages["merge"] == r.flops - r.stages["lateral"]
    assert "leaky_relu" not in r.operators  # ignored like relu, never "unsupported"


def test_batch_scales_flops_not_params() -> None:
    one = profile("scrfd_0.5g", input_size=(128, 96))
    two = profile("scrfd_0.5g", input_size=(128, 96), batch=2)
    assert two.flops == 2 * one.flops and two.params == one.params
    assert two.levels[0].shape[0] == 2


def test_non_square_size_and_json_shape() -> None:
    r = profile("scrfd_2.5g", input_size=(640, 480))
    assert [lv.shape[2:] for lv in r.levels] == [(80, 60), (40, 30), (20, 15)]
    d = r.to_dict()
    assert d["input_size"] == [640, 480] and d["unit"] == "flops"
    assert d["config"]["gn_groups"] == 10 and d["config"]["in_channels"] == [48, 48, 80]
    assert [lv["name"] for lv in d["levels"]] == ["P3", "P4", "P5"]
    assert d["flops"] == sum(d["operators"].values())


def test_bad_sizes_and_batch_are_typed_errors() -> None:
    with pytest.raises(SpecError, match="smaller than the coarsest stride 32"):
        profile("scrfd_2.5g", input_size=(640, 16))
    with pytest.raises(SpecError, match="one value per GroupNorm group at level P4"):
        profile("pafpn", in_channels=(8, 8), out_channels=4, gn_groups=4, input_size=(16, 16))
    with pytest.raises(InputError, match="batch"):
        profile("scrfd_2.5g", batch=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(["fpn", "pafpn"]),
    cin=st.lists(st.integers(1, 24), min_size=2, max_size=4),
    out=st.integers(1, 16),
    norm=st.sampled_from(["gn", "bn", "none"]),
    scale=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    extra=st.tuples(st.integers(0, 7), st.integers(0, 7)),
)
def test_any_valid_spec_counts_match_formula(family: str, cin: list[int], out: int, norm: str,
                                             scale: tuple[int, int],
                                             extra: tuple[int, int]) -> None:
    coarsest = 8 * 2 ** (len(cin) - 1)
    h, w = (coarsest * s + e for s, e in zip(scale, extra, strict=True))
    last_h, last_w = level_sizes(h, w, len(cin))[-1]
    # GroupNorm cannot normalise one value; such a spec is rejected (tested below).
    assume(not (norm == "gn" and last_h * last_w * out // seed_gn_groups(out) == 1))
    spec = NeckSpec(family, tuple(cin), out, norm, "relu", input_size=(h, w))  # type: ignore[arg-type]
    r = profile(spec)
    conv_levels, params = _analytic(spec, h, w)
    assert [lv.flops >= c for lv, c in zip(r.levels, conv_levels, strict=True)] == \
        [True] * len(cin)
    assert r.operators["conv"] == sum(conv_levels)
    assert r.params == params
    assert r.flops == sum(lv.flops for lv in r.levels)
    assert r.unattributed_flops == 0 and r.unsupported_ops == {}


# -- mmdetection families: every flop and parameter from the shapes ------------------------
MMDET_PRESETS = [n for n, p in PRESETS.items() if p.spec.family.startswith("mmdet_")]


@pytest.mark.parametrize("size", [(640, 640), (640, 480)])
@pytest.mark.parametrize("name", MMDET_PRESETS)
def test_mmdet_presets_count_exactly_by_hand(name: str, size: tuple[int, int]) -> None:
    r = profile(name, input_size=size)
    spec = r.spec
    pafpn = spec.family == "mmdet_pafpn"
    h, w = size
    levels = mmdet_level_flops(spec, h, w, pafpn=pafpn)
    assert [lv.flops for lv in r.levels] == levels  # every level, extra ones included
    assert r.flops == sum(levels)
    assert r.params == PARAMS[spec.family](spec) == mmdet_params(spec, pafpn=pafpn)
    assert [lv.name for lv in r.levels] == spec.level_names
    assert [lv.stride for lv in r.levels] == [8 * 2**i for i in range(spec.num_levels)]
    assert [lv.shape[2:] for lv in r.levels] == level_sizes(h, w, spec.num_levels)
    assert r.unattributed_flops == 0 and r.unattributed_params == 0
    assert r.unsupported_ops == {}


def test_retinanet_neck_by_hand() -> None:
    """mmdet_fpn (RetinaNet: 512,1024,2048 -> 256, P3-P7 on_input) at 640x640, written out."""
    r = profile("mmdet_fpn")
    c, sizes = 256, [80, 40, 20, 10, 5]
    lateral = sum(c * s * s * ci for s, ci in zip(sizes, (512, 1024, 2048), strict=False))
    fpn = sum(c * s * s * c * 9 for s in sizes[:3])
    p6 = c * 10 * 10 * 2048 * 9  # on the C5 input (20x20, 2048 channels), stride 2
    p7 = c * 5 * 5 * c * 9
    assert r.operators["conv"] == lateral + fpn + p6 + p7
    assert r.levels[3].flops == p6 and r.levels[4].flops == p7
    assert r.stages["extra"] == p6 + p7
    assert list(r.stages) == ["lateral", "top-down", "fpn", "extra"]
    assert r.params == (512 + 1024 + 2048) * c + 3 * c + 3 * (9 * c * c + c) + \
        (9 * 2048 * c + c) + (9 * c * c + c)


def test_scrfd_stages_are_named_for_what_they_are() -> None:
    r = profile("insightface_scrfd_2.5g", input_size=(64, 64))
    assert list(r.stages) == ["lateral", "top-down", "fpn", "bottom-up", "pafpn"]
    d = profile("mmdet_fpn", input_size=(320, 320), extra_convs="none").to_dict()
    assert d["stages"]["extra"] == 0 and d["stage_params"]["extra"] == 0
    assert [lv["name"] for lv in d["levels"]] == ["P3", "P4", "P5", "P6", "P7"]
    assert d["levels"][4]["shape"] == [1, 256, 3, 3] and d["levels"][4]["stride"] == 128
    assert "max_pool2d" not in d["operators"] and d["unsupported_ops"] == {}


def test_levels_of_one_size_go_unattributed_not_to_the_wrong_level() -> None:
    r = profile("mmdet_fpn", input_size=(64, 64))  # P5 2x2, P6 1x1, P7 1x1
    assert r.levels[3].flops == r.levels[4].flops == 0
    assert r.unattributed_flops == 256 * 2048 * 9 + 256 * 256 * 9  # the two extra convs
    assert r.flops == sum(lv.flops for lv in r.levels) + r.unattributed_flops
    assert any("P6, P7 have the same size" in getattr(b, "text", "") for b in r.blocks())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(["mmdet_fpn", "mmdet_pafpn"]),
    cin=st.lists(st.integers(1, 24), min_size=2, max_size=4),
    out=st.integers(1, 16),
    norm=st.sampled_from(["gn", "bn", "none"]),
    extra=st.integers(0, 2),
    mode=st.sampled_from(["none", "on_input", "on_lateral", "on_output"]),
    relu=st.booleans(),
    scale=st.tuples(st.integers(2, 4), st.integers(2, 4)),
    odd=st.tuples(st.integers(0, 9), st.integers(0, 9)),
)
def test_any_mmdet_spec_counts_match_formula(family: str, cin: list[int], out: int, norm: str,
                                             extra: int, mode: str, relu: bool,
                                             scale: tuple[int, int],
                                             odd: tuple[int, int]) -> None:
    outs = len(cin) + extra
    coarsest = 8 * 2 ** (outs - 1)
    h, w = (coarsest * s + e for s, e in zip(scale, odd, strict=True))  # levels all distinct
    last_h, last_w = level_sizes(h, w, outs)[-1]
    assume(not (norm == "gn" and last_h * last_w * out // seed_gn_groups(out) == 1))
    spec = NeckSpec(family, tuple(cin), out, norm, "relu", input_size=(h, w),  # type: ignore[arg-type]
                    num_outs=outs, extra_convs=mode, relu_before_extra_convs=relu)  # type: ignore[arg-type]
    r = profile(spec)
    pafpn = family == "mmdet_pafpn"
    assert r.operators["conv"] == sum(CONV_MACS[family](spec, h, w))
    assert [lv.flops for lv in r.levels] == mmdet_level_flops(spec, h, w, pafpn=pafpn)
    assert r.params == PARAMS[family](spec)
    assert r.unattributed_flops == 0 and r.unsupported_ops == {}


@pytest.mark.parametrize("name", every_preset())
def test_fvcore_handles_equal_fvcore_defaults_for_every_preset(name: str) -> None:
    import warnings

    import torch

    from necktool import PRESETS, build_neck, make_inputs, profile

    preset = PRESETS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis
        size = (96, 128)
        ours = profile(name, input_size=size).operators
        model = build_neck(preset.spec)
        plain = FlopCountAnalysis(model, (tuple(make_inputs(preset.spec, size, seed=None)),))
        plain.unsupported_ops_warnings(False)
        plain.uncalled_modules_warnings(False)
        plain.tracer_warnings("none")
        # fvcore's own table, untouched: everything but the adds necktool counts on top.
        # necktool traces under torch.no_grad() (for the memory figures); this plain
        # trace runs with grad on, so the counts are also the same either way.
        assert torch.is_grad_enabled()
        assert {k: v for k, v in ours.items() if k != "add"} == dict(plain.by_operator())
