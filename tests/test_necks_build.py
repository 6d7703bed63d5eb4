"""The two families against independent re-implementations and the seeds' key names."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from _analytic import CONV_MACS, PARAMS, REFERENCE
from _presets import REPRESENTATIVES, every_preset
from hypothesis import given
from hypothesis import strategies as st

from necktool import FAMILIES, InputError, NeckSpec, build_neck, make_inputs
from necktool.necks.weights import randomize_norms
from necktool.spec.neck_spec import seed_gn_groups
from necktool.spec.registry import PRESETS

CASES = [
    # family, in_channels, out, norm, act, slope, size
    ("fpn", (64, 128, 256), 64, "bn", "leaky_relu", 0.1, (96, 96)),
    ("fpn", (32, 64, 128, 256), 48, "gn", "relu", 0.0, (160, 120)),
    ("fpn", (16, 24), 8, "none", "none", 0.0, (48, 40)),
    ("pafpn", (48, 48, 80), 40, "gn", "relu", 0.0, (96, 72)),
    ("pafpn", (24, 40), 24, "bn", "leaky_relu", 0.2, (72, 104)),
    ("pafpn", (8, 16, 24, 32), 16, "none", "relu", 0.0, (200, 136)),
]


@pytest.mark.parametrize(("family", "cin", "out", "norm", "act", "slope", "size"), CASES)
def test_matches_independent_functional_forward(family: str, cin: tuple[int, ...], out: int,
                                                norm: str, act: str, slope: float,
                                                size: tuple[int, int]) -> None:
    spec = NeckSpec(family, cin, out, norm, act, leaky_slope=slope, input_size=size)  # type: ignore[arg-type]
    neck = build_neck(spec, seed=3)
    randomize_norms(neck, seed=1)  # norms and BN statistics far from identity
    feats = make_inputs(spec, batch=2, seed=5)
    expected = REFERENCE[family](neck.state_dict(), feats, spec)
    with torch.no_grad():
        got = neck(feats)
    assert isinstance(got, tuple) and len(got) == len(cin)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        assert g.abs().max() > 0.1  # not a degenerate all-zero comparison


def test_mapping_input_uses_values_in_order() -> None:
    neck = build_neck("retinaface_mnet")
    feats = make_inputs(neck.spec, (64, 64))
    with torch.no_grad():
        from_list = neck(feats)
        from_dict = neck(OrderedDict(zip(("stage1", "stage2", "stage3"), feats, strict=True)))
    for a, b in zip(from_list, from_dict, strict=True):
        assert torch.equal(a, b)


def test_wrong_number_of_levels_is_a_typed_error() -> None:
    neck = build_neck("scrfd_2.5g")
    with pytest.raises(InputError, match="expected 3 level tensors"):
        neck(make_inputs(neck.spec, (64, 64))[:2])


def _retinaface_checkpoint() -> dict[str, torch.Tensor]:
    """Keys and shapes of Pytorch_Retinaface mobilenet0.25_Final.pth's ``fpn`` part,
    written out from the seed's printed architecture (DataParallel ``module.`` prefix)."""
    sd: dict[str, torch.Tensor] = {}
    convs = {"output1": (64, 64, 1), "output2": (64, 128, 1), "output3": (64, 256, 1),
             "merge1": (64, 64, 3), "merge2": (64, 64, 3)}
    for name, (cout, cin, k) in convs.items():
        p = f"module.fpn.{name}"
        sd[f"{p}.0.weight"] = torch.randn(cout, cin, k, k)
        for stat in ("weight", "bias", "running_mean"):
            sd[f"{p}.1.{stat}"] = torch.randn(cout)
        sd[f"{p}.1.running_var"] = torch.rand(cout) + 0.5
        sd[f"{p}.1.num_batches_tracked"] = torch.tensor(100)
    return sd


def test_retinaface_checkpoint_keys_load_strictly() -> None:
    ckpt = _retinaface_checkpoint()
    neck = build_neck("retinaface_mnet")
    stripped = {k.removeprefix("module.fpn."): v for k, v in ckpt.items()}
    neck.load_state_dict(stripped, strict=True)
    assert torch.equal(neck.state_dict()["merge2.0.weight"], ckpt["module.fpn.merge2.0.weight"])
    assert neck.output1[2].negative_slope == 0.1
    assert build_neck("retinaface_r50").output1[2].negative_slope == 0.0


def test_pafpn_keeps_seed_submodule_names() -> None:
    gn = set(build_neck("scrfd_2.5g").state_dict())
    assert {"lateral_convs.0.conv.weight", "lateral_convs.0.gn.weight", "td_convs.2.gn.bias",
            "bu_convs.1.conv.weight", "bu_out_convs.2.conv.weight"} <= gn
    assert not any(k.startswith(("td_fuse", "bu_fuse")) for k in gn)  # parameter-free
    bn = set(build_neck("scrfd_2.5g", norm="bn").state_dict())
    assert {"lateral_convs.0.0.weight", "lateral_convs.0.1.running_mean",
            "bu_out_convs.2.1.running_var"} <= bn


@pytest.mark.parametrize(("name", "groups"), [("scrfd_34g", 16), ("scrfd_10g", 14),
                                              ("scrfd_2.5g", 10), ("scrfd_0.5g", 16)])
def test_scrfd_tiers_use_the_seed_group_rule(name: str, groups: int) -> None:
    neck = build_neck(name)
    assert neck.lateral_convs[0].gn.num_groups == groups


@given(st.integers(min_value=1, max_value=4096))
def test_seed_group_rule_is_largest_divisor_up_to_16(out: int) -> None:
    g = seed_gn_groups(out)
    assert out % g == 0
    assert g == max(d for d in range(1, min(16, out) + 1) if out % d == 0)


@pytest.mark.parametrize("name", every_preset())
def test_every_preset_builds_and_runs(name: str) -> None:
    neck = build_neck(name)
    spec = neck.spec
    small = (8 * 2 ** (spec.num_levels - 1) * 3,) * 2
    with torch.no_grad():
        outs = neck(make_inputs(spec, small))
    assert [tuple(o.shape) for o in outs] == [(1, c, h, w) for c, (h, w) in zip(
        spec.level_channels, spec.level_sizes(small), strict=True)]


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_neck("scrfd_0.5g", seed=7)
    assert torch.equal(torch.rand(1), before)
    b = build_neck("scrfd_0.5g", seed=7)
    c = build_neck("scrfd_0.5g", seed=8)
    wa, wb, wc = (m.state_dict()["td_convs.0.conv.weight"] for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_every_built_in_family_has_an_independent_reference() -> None:
    built_in = {name for name, f in FAMILIES.items() if not f.needs_factory}
    assert built_in == set(REFERENCE) == set(CONV_MACS) == set(PARAMS)


# -- mmdetection's FPN and PAFPN -----------------------------------------------------------
MMDET_CASES = [
    # family, in_channels, out, norm, act, num_outs, extra_convs, relu, size
    *[("mmdet_fpn", (12, 20, 28), 16, "none", "none", 5, mode, relu, (97, 75))
      for mode in ("none", "on_input", "on_lateral", "on_output") for relu in (False, True)],
    *[("mmdet_pafpn", (12, 20, 28), 16, "none", "none", 5, mode, relu, (75, 97))
      for mode in ("none", "on_input", "on_lateral", "on_output") for relu in (False, True)],
    ("mmdet_fpn", (8, 16), 12, "bn", "relu", 4, "on_output", True, (81, 63)),
    ("mmdet_pafpn", (8, 16, 24, 32), 16, "gn", "leaky_relu", 6, "on_input", False, (301, 271)),
    ("mmdet_pafpn", (72, 152, 288), 16, "none", "none", 3, "on_output", False, (111, 93)),
    ("mmdet_fpn", (16, 24, 32), 8, "gn", "none", 3, "none", False, (65, 130)),
]


@pytest.mark.parametrize(("family", "cin", "out", "norm", "act", "num_outs", "mode", "relu",
                          "size"), MMDET_CASES)
def test_mmdet_matches_independent_functional_forward(
        family: str, cin: tuple[int, ...], out: int, norm: str, act: str, num_outs: int,
        mode: str, relu: bool, size: tuple[int, int]) -> None:
    spec = NeckSpec(family, cin, out, norm, act, leaky_slope=0.2, input_size=size,  # type: ignore[arg-type]
                    num_outs=num_outs, extra_convs=mode, relu_before_extra_convs=relu)  # type: ignore[arg-type]
    neck = build_neck(spec, seed=3)
    randomize_norms(neck, seed=1)  # conv biases, norms and BN statistics far from identity
    feats = make_inputs(spec, batch=2, seed=5)
    expected = REFERENCE[family](neck.state_dict(), feats, spec)
    with torch.no_grad():
        got = neck(feats)
    assert isinstance(got, tuple) and len(got) == num_outs == len(expected)
    for g, e, (h, w) in zip(got, expected, spec.level_sizes(), strict=True):
        assert g.shape == e.shape == (2, out, h, w)  # ceil(image / stride) on every level
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        assert g.abs().max() > 0.05  # not a degenerate all-zero comparison


def test_mmdet_extra_modes_and_relu_change_the_outputs() -> None:
    """The comparisons above would be vacuous if the modes computed the same thing."""
    base = NeckSpec("mmdet_fpn", (12, 20, 12), 12, input_size=(64, 96), num_outs=5,  # type: ignore[arg-type]
                    extra_convs="on_lateral")
    feats = make_inputs(base, seed=2)
    outs = {}
    for mode, relu in (("on_lateral", False), ("on_output", False), ("on_lateral", True)):
        neck = build_neck(base.replace(extra_convs=mode, relu_before_extra_convs=relu), seed=4)
        with torch.no_grad():
            outs[mode, relu] = neck(feats)
    assert not torch.allclose(outs["on_lateral", False][3], outs["on_output", False][3])
    assert torch.equal(outs["on_lateral", False][3], outs["on_lateral", True][3])  # P6
    assert not torch.allclose(outs["on_lateral", False][4], outs["on_lateral", True][4])


def _mmdet_keys(container: str, count: int, norm: str = "none") -> set[str]:
    params = {"none": ["conv.weight", "conv.bias"],
              "bn": ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                     "bn.running_var", "bn.num_batches_tracked"],
              "gn": ["conv.weight", "gn.weight", "gn.bias"]}[norm]
    return {f"{container}.{i}.{p}" for i in range(count) for p in params}


def test_mmdet_state_dict_keys_are_mmdetections() -> None:
    # RetinaNet's neck: three laterals, three fpn convs, extra convs appended as fpn_convs.3-4
    retinanet = build_neck("mmdet_fpn").state_dict()
    assert set(retinanet) == _mmdet_keys("lateral_convs", 3) | _mmdet_keys("fpn_convs", 5)
    assert retinanet["fpn_convs.3.conv.weight"].shape == (256, 2048, 3, 3)  # on_input: C5
    assert retinanet["fpn_convs.4.conv.weight"].shape == (256, 256, 3, 3)
    # A released SCRFD neck: no norm (biases), downsample and pafpn convs above the finest
    scrfd = build_neck("insightface_scrfd_10g").state_dict()
    assert set(scrfd) == (_mmdet_keys("lateral_convs", 3) | _mmdet_keys("fpn_convs", 3)
                          | _mmdet_keys("downsample_convs", 2) | _mmdet_keys("pafpn_convs", 2))
    assert scrfd["lateral_convs.2.conv.weight"].shape == (56, 224, 1, 1)
    bn = build_neck("mmdet_pafpn", norm="bn", act="relu", num_outs=4).state_dict()
    assert set(bn) == (_mmdet_keys("lateral_convs", 3, "bn") | _mmdet_keys("fpn_convs", 4, "bn")
                       | _mmdet_keys("downsample_convs", 2, "bn")
                       | _mmdet_keys("pafpn_convs", 2, "bn"))
    gn = build_neck("mmdet_fpn", norm="gn", gn_groups=32, extra_convs="none").state_dict()
    assert set(gn) == _mmdet_keys("lateral_convs", 3, "gn") | _mmdet_keys("fpn_convs", 3, "gn")


def test_mmdet_blocks_are_convmodule_shaped() -> None:
    neck = build_neck("mmdet_pafpn", norm="gn", act="leaky_relu")
    block = neck.pafpn_convs[0]
    assert [name for name, _ in block.named_children()] == ["conv", "gn", "activate"]
    assert block.conv.bias is None and isinstance(block.activate, torch.nn.LeakyReLU)
    plain = build_neck("insightface_scrfd_2.5g").lateral_convs[0]
    assert [name for name, _ in plain.named_children()] == ["conv"]
    assert plain.conv.bias is not None


def test_num_outs_below_the_inputs_is_a_spec_error() -> None:
    from necktool import SpecError

    with pytest.raises(SpecError, match="num_outs=2 is fewer than the 3 input levels"):
        build_neck("mmdet_fpn", num_outs=2)
    with pytest.raises(SpecError, match=r"--num-outs does not apply to scrfd_2\.5g"):
        build_neck("scrfd_2.5g", num_outs=4)


def test_presets_cover_every_family() -> None:
    """The README's test command runs one preset per family of the every-preset tests: a
    family that lands with presets must name one in tests/_presets.py."""
    with_presets = {p.spec.family for p in PRESETS.values()}
    assert sorted(PRESETS[n].spec.family for n in REPRESENTATIVES) == sorted(with_presets)
