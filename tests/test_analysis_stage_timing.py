"""``necktool bench --stages``: per-stage latency in PyTorch eager and ONNX Runtime."""

from __future__ import annotations

import json
import time

import onnx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from necktool.cli import app
from necktool.errors import InputError
from necktool.latency.bench import BenchResult, Runtime, bench
from necktool.latency.stages import (
    REORDER,
    UNATTRIBUTED,
    StageRun,
    ort_cells,
    ort_runs,
    stage_times,
    summarise,
)
from necktool.necks.build import build_neck, make_inputs
from necktool.spec.registry import resolve_spec

SIZE = (128, 128)


@pytest.fixture(scope="module", params=["scrfd_2.5g", "retinaface_mnet"])
def staged(request: pytest.FixtureRequest) -> BenchResult:
    return bench(request.param, SIZE, warmup=1, repeat=3, threads=1, stages=True)


def test_every_stage_of_the_neck_has_a_row_on_both_runtimes(staged: BenchResult) -> None:
    model = build_neck(staged.spec)
    expected = {part for name, _ in model.named_modules() if name
                and (part := model.part_of(name)) is not None}
    for runtime in staged.stages:
        cells = {(r.stage, r.level) for r in runtime.rows}
        assert expected <= cells | {(REORDER, lv) for lv in range(3)}, runtime.runtime
        assert runtime.rows[-1].stage == UNATTRIBUTED
        assert sum(r.share for r in runtime.rows) == pytest.approx(1.0)
        assert runtime.sum_s == pytest.approx(sum(r.median_s for r in runtime.rows))
        assert runtime.plain_s == staged.timing(Runtime(runtime.runtime)).median_ms / 1e3


def test_ort_kernel_time_is_at_least_90_percent_attributed(staged: BenchResult) -> None:
    ort = next(s for s in staged.stages if s.runtime == "onnxruntime")
    assert ort.attributed >= 0.9
    # kernels run inside their run: per run, the rows add up to no more than the run
    assert ort.run_sum_s <= ort.profiled_s
    # eager: the unattributed row is the rest of each run, so the rows add up to the run
    eager = next(s for s in staged.stages if s.runtime == "torch")
    assert eager.run_sum_s == pytest.approx(eager.profiled_s)


def test_json_rows_and_table(staged: BenchResult) -> None:
    data = json.loads(json.dumps(staged.to_dict()))
    rows = data["stages"]
    assert {tuple(sorted(r)) for r in rows} == {
        ("level", "median_s", "runtime", "share", "stage")}
    assert {r["runtime"] for r in rows} == {"torch", "onnxruntime"}
    assert {r["level"] for r in rows} <= {"P3", "P4", "P5", None}
    assert [s["runtime"] for s in data["stage_runs"]] == ["torch", "onnxruntime"]
    titles = [getattr(b, "title", "") for b in staged.blocks()]
    assert "onnxruntime: time by stage and level" in titles


class Sleep(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


def test_eager_times_land_on_the_stage_that_spends_them() -> None:
    # A deliberately slow P4 top-down conv: 20 ms there, microseconds elsewhere.
    spec = resolve_spec("pafpn", in_channels=(4, 4, 4), out_channels=4, input_size=(64, 64))
    model = build_neck(spec)
    model.td_convs[1] = nn.Sequential(Sleep(0.02), model.td_convs[1])
    run = StageRun(model=model, spec=spec, inputs=make_inputs(spec, spec.input_size, 1, seed=0),
                   onnx=None, threads=1, warmup=1, runs=3)
    result = stage_times("torch", run)
    slow = {(r.stage, r.level): r for r in result.rows}[("top-down", 1)]
    assert 0.02 <= slow.median_s < 0.2
    assert slow.share > 0.8
    assert result.profiled_s >= 0.02


def _node(name: str, op: str, inputs: list[str], outputs: list[str],
          scope: str | None = None) -> onnx.NodeProto:
    node = onnx.helper.make_node(op, inputs, outputs, name=name)
    if scope is not None:
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes",
                                value=str(["", scope, f"{scope}.conv", "conv2d"]))
    return node


def test_renamed_fused_and_inserted_nodes_are_followed() -> None:
    model = build_neck("scrfd_2.5g")
    exported = [_node("node_Conv_1", "Conv", ["x"], ["conv2d_3"], "td_convs.1"),
                _node("node_Relu_2", "Relu", ["conv2d_3"], ["relu_3"], "td_convs.1"),
                _node("node_Add_3", "Add", ["relu_3", "y"], ["add_1"], "bu_fuse.0"),
                _node("node_Shape", "Shape", ["x"], ["shape"])]
    optimised = [_node("ReorderInput", "ReorderInput", ["x"], ["x_nchwc"]),
                 _node("conv2d_3_nchwc", "Conv", ["x_nchwc"], ["relu_3_nchwc"]),
                 _node("ReorderOutput", "ReorderOutput", ["relu_3_nchwc"], ["relu_3"]),
                 _node("node_Add_3", "Add", ["relu_3", "y"], ["add_1"]),
                 _node("node_Shape", "Shape", ["x"], ["shape"]),
                 _node("mystery", "Mul", ["add_1"], ["out"])]
    cells = ort_cells(exported, optimised, model.part_of)
    assert cells == {"conv2d_3_nchwc": ("top-down", 1), "ReorderInput": (REORDER, 1),
                     "ReorderOutput": (REORDER, 1), "node_Add_3": ("bottom-up", 1)}


def test_profile_events_group_by_run_and_leave_the_unplaced_visible() -> None:
    def kernel(name: str, ts: int, dur: int) -> dict[str, object]:
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur}

    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              kernel("a", 10, 50),
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
              kernel("a", 210, 30), kernel("b", 250, 10),
              {"cat": "Session", "name": "model_run", "ts": 400, "dur": 120},
              kernel("a", 410, 40), kernel("b", 460, 30)]
    runs = ort_runs(events, warmup=1)
    assert runs == [(100e-6, {"a": 30e-6, "b": 10e-6}), (120e-6, {"a": 40e-6, "b": 30e-6})]
    cells = {"a": ("fpn", 0)}
    per_run = [{cells.get(n, (UNATTRIBUTED, None)): d for n, d in nodes.items()}
               for _, nodes in runs]
    result = summarise("onnxruntime", per_run, [w for w, _ in runs], None, "test")
    rows = {(r.stage, r.level): r for r in result.rows}
    assert rows[("fpn", 0)].median_s == pytest.approx(35e-6)
    assert rows[(UNATTRIBUTED, None)].median_s == pytest.approx(20e-6)
    assert result.attributed == pytest.approx(35 / 55)
    assert result.run_sum_s == pytest.approx(55e-6)  # runs add up to 40 and 70 us
    assert result.profiled_s == pytest.approx(110e-6)


def test_a_runtime_without_a_profiler_is_a_clear_error() -> None:
    spec = resolve_spec("pafpn", input_size=(64, 64))
    run = StageRun(model=build_neck(spec), spec=spec, inputs=[], onnx=None, threads=1, warmup=1,
                   runs=1)
    with pytest.raises(InputError, match="available: torch, onnxruntime"):
        stage_times("tensorrt", run)


def test_cli_json() -> None:
    result = CliRunner().invoke(app, ["bench", "pafpn", "--in-channels", "8,16,32",
                                      "--out-channels", "8", "--input-size", "64",
                                      "--stages", "--runs", "2", "--warmup", "1",
                                      "--format", "json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["runtimes"][0]["repeat"] == 2
    assert {r["runtime"] for r in data["stages"]} == {"torch", "onnxruntime"}
    assert all(0 <= r["share"] <= 1 and r["median_s"] >= 0 for r in data["stages"])


def test_the_plan_knows_exactly_the_runtimes_that_have_a_stage_profiler() -> None:
    from necktool.latency.stages import STAGE_PROFILERS
    from necktool.spec.runtimes import Runtime

    assert tuple(STAGE_PROFILERS) == tuple(r.timing_name for r in Runtime if r.info.staged)
