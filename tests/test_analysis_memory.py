"""Memory figures and the second conv count, against hand-worked values and against
measurements taken here, independently of necktool's tracker (necktool.analysis.memory)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from _analytic import CONV_MACS, PARAMS, activation_bytes, level_sizes
from _presets import every_preset
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from necktool import NeckSpec, build_neck, make_inputs, profile
from necktool.cli import app
from necktool.spec.neck_spec import seed_gn_groups
from necktool.spec.registry import PRESETS

runner = CliRunner()


# -- the independent measurement ----------------------------------------------------------
def measured(model: torch.nn.Module, inputs: list[torch.Tensor]) -> tuple[int, int]:
    """(peak, total) bytes that an eager no_grad forward allocates, from the CPU
    allocator's own records in torch.profiler (profile_memory=True).

    This reads the profiler's event tree (``kineto_results.experimental_event_tree()``,
    ``_EventType.Allocation``): private, experimental API, acceptable here because it is
    only an oracle, and a fully independent one (the allocator's byte counts, not Python
    objects). Allocations freed inside the same top-level op are that op's temporaries
    (a conv's workspace, GroupNorm's mean and rstd), and allocations outside every op are
    the Python binding wrapping a number as a tensor for one call (``w.sum() + eps``
    allocates an 8-byte double before ``aten::add`` starts and frees it after): the
    definition counts neither, so both are dropped here.
    """
    allocation = torch._C._profiler._EventType.Allocation
    with torch.no_grad(), torch_profile(activities=[ProfilerActivity.CPU],
                                        profile_memory=True) as prof:
        out = model(inputs)
    nodes: list[Any] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.children)
    events = sorted((n for n in nodes if n.tag == allocation), key=lambda n: n.start_time_ns)

    def top_op(node: Any) -> Any:
        while node.parent is not None:
            node = node.parent
        return node

    open_allocs: dict[int, Any] = {}
    temporary: set[int] = set()
    for e in events:
        f = e.extra_fields
        if f.alloc_size > 0:
            open_allocs[f.ptr] = e
        elif f.ptr in open_allocs:
            a = open_allocs.pop(f.ptr)
            if a.parent is None or top_op(a) is top_op(e):
                temporary |= {id(a), id(e)}
    peak = current = total = 0
    for e in events:
        if id(e) not in temporary:
            size = e.extra_fields.alloc_size
            current += size
            total += max(size, 0)
            peak = max(peak, current)
    del out
    return peak, total


def by_hand(spec: NeckSpec, size: tuple[int, int], batch: int) -> list[int]:
    return activation_bytes(spec, *size, batch)


# -- a small neck, worked out on paper ----------------------------------------------------
def test_a_tiny_pafpn_worked_out_on_paper() -> None:
    # PAFPN, in (2, 2) -> out 4, GroupNorm (4 groups), in-place ReLU, 32x32 image:
    # P3 is 4x4 and P4 2x2, so a 4-channel map is 4*4*4 = 64 floats = 256 B at P3 and
    # 4*2*2 = 16 floats = 64 B at P4. Each conv block allocates the conv's output, then
    # GroupNorm's (ReLU works in place); the conv output is freed when the block's
    # Sequential moves on. The forward, step by step (live bytes after each op):
    #   lateral P3: conv a 256 -> 256, GN b 256 -> 512, a freed -> 256
    #   lateral P4: conv c 64 -> 320, GN d 64 -> 384, c freed -> 320
    #   top-down:   upsample d to P3 e 256 -> 576, b + e = f 256 -> 832, e freed -> 576,
    #               laterals[0] = f frees b -> 320          (laterals = [f, d] from here)
    #   td P3:      conv g 256 -> 576, GN h 256 -> 832, g freed -> 576
    #   td P4:      conv i 64 -> 640, GN j 64 -> 704, i freed -> 640   (td_outs = [h, j])
    #   bottom-up:  stride-2 conv of h, k 64 (P4) -> 704, GN l 64 -> 768, k freed -> 704,
    #               j + l = m 64 -> 768, l freed -> 704           (bu_outs = [h, m])
    #   out P3:     conv n 256 -> 960, GN o 256 -> 1216  <- the peak; n freed -> 960
    #   out P4:     conv p 64 -> 1024, GN q 64 -> 1088, p freed -> 1024
    # Alive at the peak: the laterals list (f 256 + d 64), td_outs (h 256 + j 64), the
    # bottom-up add m 64, the P3 output conv's n 256 and its GN output o 256 = 1216.
    # Created: at P3 a b e f g h n o = 8 x 256 = 2048; at P4 c d i j k l m p q = 9 x 64 = 576.
    spec = NeckSpec("pafpn", (2, 2), 4, "gn", "relu", input_size=(32, 32))  # type: ignore[arg-type]
    r = profile(spec)
    m = r.memory
    assert m.peak_activation_bytes == (256 + 64) + (256 + 64) + 64 + 256 + 256 == 1216
    assert [lv.activation_bytes for lv in r.levels] == [8 * 256, 9 * 64] == [2048, 576]
    assert m.activation_bytes == 2624 and r.unattributed_activation_bytes == 0
    assert m.input_bytes == 4 * (2 * 4 * 4 + 2 * 2 * 2) == 160  # c3 (1,2,4,4), c4 (1,2,2,2)
    assert m.output_bytes == 256 + 64  # o and q
    assert m.param_bytes == 4 * PARAMS["pafpn"](spec) == 4 * r.params
    # Batch 3: every tensor three times larger, so every figure (but params) triples.
    r3 = profile(spec, batch=3)
    assert r3.memory.peak_activation_bytes == 3 * 1216
    assert r3.memory.activation_bytes == 3 * 2624 and r3.memory.param_bytes == m.param_bytes
    # And the independent measurement agrees with the paper.
    assert measured(build_neck(spec), make_inputs(spec, seed=None)) == (1216, 2624)


# -- every preset, batches 1 to 4, odd sizes ----------------------------------------------
def _configs(name: str) -> list[tuple[tuple[int, int], int]]:
    default = PRESETS[name].spec.input_size
    return [(default, 1), *(((161, 97), b) for b in (1, 2, 3, 4))]


@pytest.mark.parametrize("name", every_preset())
def test_every_preset_against_the_hand_count_and_the_allocator(name: str) -> None:
    spec = PRESETS[name].spec
    model = build_neck(spec)
    for size, batch in _configs(name):
        if name == "retinaface_r50" and size == spec.input_size:
            size = (417, 419)  # its 840x840 costs seconds and adds nothing an odd size does not
        r = profile(spec, input_size=size, batch=batch)
        m = r.memory
        where = (name, size, batch)
        levels = [lv.activation_bytes for lv in r.levels]
        assert levels == by_hand(spec, size, batch), where
        assert r.unattributed_activation_bytes == 0 and sum(levels) == m.activation_bytes
        inputs = make_inputs(spec, size, batch, seed=None)
        assert measured(model, inputs) == (m.peak_activation_bytes, m.activation_bytes), where
        assert m.input_bytes == 4 * sum(x.numel() for x in inputs)
        assert m.output_bytes == 4 * batch * sum(
            c * h * w for c, (h, w) in zip(spec.level_channels,
                                           level_sizes(*size, spec.num_levels), strict=True))
        assert m.param_bytes == 4 * r.params
        assert m.output_bytes <= m.peak_activation_bytes < m.activation_bytes, where
        check = r.cross_check
        assert check.flop_counter_conv_macs == check.fvcore_conv_macs == r.operators["conv"]
        assert check.agree and bool(r), where
        if batch == 3:
            # The profile's second count is torch.utils.flop_counter's conv formula applied
            # during fvcore's trace (FlopCounterMode itself cannot run there: it changes
            # the trace). Here the real FlopCounterMode counts a separate eager forward.
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(inputs)
            convs = [n for op, n in counter.get_flop_counts()["Global"].items()
                     if "convolution" in str(op)]
            assert sum(convs) == 2 * check.flop_counter_conv_macs, where


def test_a_custom_neck_is_measured_too() -> None:
    # examples/custom_neck.py's BiFPN: separable convs, max-pool, weighted sums whose
    # small weight tensors match no level (unattributed).
    r = profile("examples.custom_neck:BiFPN", in_channels=(40, 80, 160), out_channels=24,
                input_size=(161, 97), batch=2)
    m = r.memory
    assert r.unattributed_activation_bytes > 0
    assert sum(lv.activation_bytes for lv in r.levels) + r.unattributed_activation_bytes == \
        m.activation_bytes
    model = build_neck(r.spec)
    assert measured(model, make_inputs(r.spec, (161, 97), 2, seed=None)) == (
        m.peak_activation_bytes, m.activation_bytes)
    assert r.cross_check.agree and r.cross_check.fvcore_conv_macs > 0


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(["fpn", "pafpn"]),
    cin=st.lists(st.integers(1, 16), min_size=2, max_size=4),
    out=st.integers(1, 12),
    norm=st.sampled_from(["gn", "bn", "none"]),
    act=st.sampled_from(["relu", "leaky_relu", "none"]),
    extra=st.tuples(st.integers(0, 40), st.integers(0, 40)),
    batch=st.integers(1, 3),
)
def test_any_valid_spec_matches_the_hand_count(family: str, cin: list[int], out: int,
                                               norm: str, act: str, extra: tuple[int, int],
                                               batch: int) -> None:
    coarsest = 8 * 2 ** (len(cin) - 1)
    h, w = coarsest + extra[0], coarsest + extra[1]
    last_h, last_w = level_sizes(h, w, len(cin))[-1]
    assume(not (norm == "gn" and last_h * last_w * out // seed_gn_groups(out) == 1))
    spec = NeckSpec(family, tuple(cin), out, norm, act, input_size=(h, w))  # type: ignore[arg-type]
    r = profile(spec, batch=batch)
    assert [lv.activation_bytes for lv in r.levels] == by_hand(spec, (h, w), batch)
    assert r.memory.activation_bytes == sum(by_hand(spec, (h, w), batch))
    assert r.memory.output_bytes <= r.memory.peak_activation_bytes <= r.memory.activation_bytes
    assert r.cross_check.flop_counter_conv_macs == sum(
        CONV_MACS[family](spec, h, w, batch)) == r.operators["conv"]


# -- one forward, under no_grad -----------------------------------------------------------
# (fvcore's counts are the same under no_grad as with grad: test_architecture compares
# every preset's profile with a plain fvcore trace run with grad on.)
def _on_meta(args: tuple[object, ...]) -> bool:
    levels = args[0] if args else None
    first = next(iter(levels), None) if isinstance(levels, (list, tuple)) else levels
    return isinstance(first, torch.Tensor) and first.device.type == "meta"


def test_memory_comes_from_the_profiles_own_single_forward() -> None:
    spec = PRESETS["scrfd_0.5g"].spec
    model = build_neck(spec)
    calls: list[bool] = []
    # The receptive field (analysis/receptive.py) runs the forward again on shape-only
    # "meta" tensors, which allocate nothing: only forwards on real data count here.
    hook = model.register_forward_pre_hook(
        lambda mod, args: None if _on_meta(args) else calls.append(torch.is_grad_enabled()))
    from necktool.analysis.profiling import analyze

    try:
        r = analyze(model, spec, (64, 64), 1)
    finally:
        hook.remove()
    assert calls == [False]  # one forward, the trace, with no autograd graph
    assert r.memory.peak_activation_bytes > 0


@pytest.mark.parametrize("name", ["scrfd_2.5g", "retinaface_mnet"])
def test_the_same_figures_without_pausing_the_tracer(name: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # necktool.analysis.memory pauses the TorchScript tracer during its bookkeeping through a
    # private torch._C pair; should a PyTorch release drop it, the figures must not move.
    import necktool.analysis.memory

    ref = profile(name, input_size=(96, 128), batch=2)
    monkeypatch.setattr(necktool.analysis.memory, "_get_tracing", None)
    r = profile(name, input_size=(96, 128), batch=2)
    assert r.memory == ref.memory and r.cross_check == ref.cross_check
    assert r.levels == ref.levels and r.operators == ref.operators and r.stages == ref.stages


# -- the CLI -------------------------------------------------------------------------------
def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_profile_table_and_json_carry_memory_and_the_cross_check() -> None:
    code, out, err = run("profile", "scrfd_2.5g", "--input-size", "64")
    assert (code, err) == (0, "")
    r = profile("scrfd_2.5g", input_size=(64, 64))
    assert "conv MACs cross-checked with torch.utils.flop_counter: equal" in out
    assert "activations by level" in out and "MiB = 2^20 bytes" in out
    for lv in r.levels:
        assert f"{lv.activation_bytes:,}" in out and f"{lv.activation_bytes / 2**20:.4f}" in out
    assert f"peak {r.memory.peak_activation_bytes / 2**20:.4f} MiB" in out

    code, out, _ = run("profile", "scrfd_2.5g", "--input-size", "64", "--json")
    data = json.loads(out)
    assert data["memory"] == r.memory.to_dict() and data["memory_unit"] == "bytes"
    assert set(data["memory"]) == {"param_bytes", "input_bytes", "output_bytes",
                                   "activation_bytes", "peak_activation_bytes"}
    assert [lv["activation_bytes"] for lv in data["levels"]] == [
        lv.activation_bytes for lv in r.levels]
    assert data["cross_check"] == {"flop_counter_conv_macs": r.operators["conv"],
                                   "fvcore_conv_macs": r.operators["conv"], "agree": True}
    assert data["unattributed"]["activation_bytes"] == 0

    code, out, _ = run("sweep", "scrfd_2.5g", "--sizes", "64")
    assert code == 0
    assert "conv MACs cross-checked with torch.utils.flop_counter at every size: equal" in out


def test_a_disagreement_is_exit_1_with_both_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.analysis.memory

    real = necktool.analysis.memory.conv_flop_count
    monkeypatch.setattr(necktool.analysis.memory, "conv_flop_count",
                        lambda *a, **k: real(*a, **k) + 2)  # one MAC too many per conv
    r = profile("scrfd_0.5g", input_size=(64, 64))
    assert not r and not r.cross_check.agree
    convs = 3 + 3 + 2 + 3  # lateral, top-down, bottom-up, output
    assert r.cross_check.flop_counter_conv_macs == r.operators["conv"] + convs
    code, out, err = run("profile", "scrfd_0.5g", "--input-size", "64")
    assert code == 1
    both = (f"conv MACs differ: {r.operators['conv']:,} from fvcore vs "
            f"{r.operators['conv'] + convs:,} from torch.utils.flop_counter")
    assert both in out and both in err
    code, out, _ = run("profile", "scrfd_0.5g", "--input-size", "64", "--json")
    assert code == 1 and json.loads(out)["cross_check"]["agree"] is False
    code, out, err = run("sweep", "scrfd_0.5g", "--sizes", "64")
    assert code == 1 and both in err and both in out and "equal" not in out
