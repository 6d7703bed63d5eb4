"""Plans of profile, sweep, check and bench (necktool.analysis.plan): checks made once when
the plan is built, never by the run; progress totals from the plan; a stable content hash
that any deciding field changes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from _cli import run as invoke
from _cli import run_without
from _counting import count_calls, record_progress

import necktool
import necktool.analysis.plan as plan_mod
import necktool.cli
import necktool.cli.bench_cmd
import necktool.cli.profile_cmd
import necktool.cli.sweep_cmd
import necktool.latency.plan as bench_plan_mod
from necktool.analysis.plan import ProfilePlan
from necktool.analysis.profiling import run_profile
from necktool.analysis.sweep import run_sweep, sweep_plans
from necktool.errors import InputError, SpecError
from necktool.latency.bench import run_bench
from necktool.latency.plan import BenchPlan
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.precision import Precision
from necktool.spec.runtimes import Runtime

SIZE = (64, 64)


@pytest.fixture
def size_checks(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count every size check, spec validation, batch check and run-count check."""
    calls: Counter[str] = Counter()
    real_size, real_validate = NeckSpec.check_size, NeckSpec._validate

    def check_size(self: NeckSpec, size: Any) -> None:
        calls["check_size"] += 1
        real_size(self, size)

    def validate(self: NeckSpec, info: Any) -> None:
        calls["spec"] += 1
        real_validate(self, info)

    monkeypatch.setattr(NeckSpec, "check_size", check_size)
    monkeypatch.setattr(NeckSpec, "_validate", validate)
    count_calls(monkeypatch, plan_mod, ("check_batch", "resolve_spec"), calls)
    return count_calls(monkeypatch, bench_plan_mod, ("check_batch", "check_count", "resolve_spec"),
                       calls)


def refuse_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a plan's run validated again")

    monkeypatch.setattr(NeckSpec, "check_size", refuse)
    monkeypatch.setattr(NeckSpec, "_validate", refuse)
    for name in ("check_batch", "resolve_spec"):
        monkeypatch.setattr(plan_mod, name, refuse)
    for name in ("check_batch", "check_count", "resolve_spec"):
        monkeypatch.setattr(bench_plan_mod, name, refuse)


# -- profile -----------------------------------------------------------------------------------
def test_profile_resolves_once_checks_once_and_the_run_checks_nothing(
        size_checks: Counter[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Before plans: 3 resolutions of the spec and 5 size checks for one profile.
    plan = ProfilePlan.build("fpn", input_size=SIZE, batch=2)
    assert size_checks == Counter({"resolve_spec": 1, "spec": 1, "check_size": 1,
                                   "check_batch": 1})
    refuse_checks(monkeypatch)
    [result] = run_profile(plan)
    assert result.input_size == SIZE and result.batch == 2
    # fpn at 64x64: the output levels are 8x8, 4x4 and 2x2 (strides 8, 16, 32)
    assert [lv.shape for lv in result.levels] == [(2, 64, 8, 8), (2, 64, 4, 4),
                                                   (2, 64, 2, 2)]


def test_the_public_profile_is_build_then_run(size_checks: Counter[str]) -> None:
    result = necktool.profile("fpn", input_size=SIZE)
    assert size_checks["resolve_spec"] == 1 and size_checks["check_size"] == 1
    assert result.flops == run_profile(ProfilePlan.build("fpn", input_size=SIZE))[0].flops


def test_cli_profile_bar_counts_the_plans_traces(monkeypatch: pytest.MonkeyPatch,
                                                 size_checks: Counter[str]) -> None:
    bars = record_progress(monkeypatch, necktool.cli.profile_cmd)
    code, _, stderr = invoke("profile", "fpn", "pafpn", "--input-size", "64x64",
                             "--json")
    assert code == 0, stderr
    assert bars == [(2, ["fpn", "pafpn"])]
    assert size_checks["resolve_spec"] == 2 and size_checks["check_size"] == 2


@pytest.mark.parametrize(("build", "error", "says"), [
    (lambda: ProfilePlan.build("fpn", batch=0), InputError, "batch"),
    (lambda: ProfilePlan.build("fpn", input_size=(16, 16)), SpecError, "coarsest stride 32"),
    (lambda: ProfilePlan(necktool.get_spec("fpn"), 1, ((640, 640), (31, 64))), SpecError,
     "coarsest stride 32"),
    (lambda: ProfilePlan.build("fnp"), necktool.UnknownNeckError, "did you mean"),
])
def test_a_bad_plan_is_refused_when_built(build: Callable[[], Any], error: type[Exception],
                                          says: str) -> None:
    with pytest.raises(error, match=says):
        build()


# -- sweep -------------------------------------------------------------------------------------
def test_sweep_plans_check_each_size_once_and_the_bar_total_is_every_trace(
        monkeypatch: pytest.MonkeyPatch, size_checks: Counter[str]) -> None:
    plans = sweep_plans(["fpn", "pafpn"], [(64, 64), (96, 64), (64, 64)], 1)
    assert [p.sizes for p in plans] == [((64, 64), (96, 64))] * 2
    assert size_checks["check_size"] == 4 and size_checks["check_batch"] == 2
    assert sum(p.steps for p in plans) == 4
    refuse_checks(monkeypatch)
    points: list[str] = []
    result = run_sweep(plans, on_point=points.append)
    assert points == ["fpn 64x64", "fpn 96x64", "pafpn 64x64", "pafpn 96x64"]
    # 96x64 has 1.5x the pixels of 64x64 at every level: 1.5x the FLOPs
    fpn = result.necks[0].points
    assert fpn[1].flops * 2 == fpn[0].flops * 3


def test_cli_sweep_bar_total_comes_from_the_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    bars = record_progress(monkeypatch, necktool.cli.sweep_cmd)
    code, _, stderr = invoke("sweep", "fpn", "--sizes", "64,96", "--json")
    assert code == 0, stderr
    [(total, points)] = bars
    assert total == len(points) == 2


# -- bench -------------------------------------------------------------------------------------
def test_bench_plan_checks_once_and_knows_its_runs(size_checks: Counter[str]) -> None:
    plan = BenchPlan.build("fpn", SIZE, warmup=1, repeat=4, threads=1,
                           precisions=["fp16", "int8", "fp16"], calibration=2)
    assert size_checks["check_count"] == 3 and size_checks["resolve_spec"] == 1
    assert size_checks["check_size"] == 1 and size_checks["check_batch"] == 1
    assert plan.runtimes == (Runtime.ORT,)  # with precisions: ORT alone
    assert plan.precisions == (Precision.FP16, Precision.INT8)
    assert plan.steps == 4 * 2 and plan.calibration == 2
    both = BenchPlan.build("fpn", SIZE, repeat=3, precisions=["fp32", "fp16"],
                           runtimes=["torch", "onnxruntime"])
    assert both.series == ((Runtime.TORCH, Precision.FP32),
                           (Runtime.ORT, Precision.FP32),
                           (Runtime.ORT, Precision.FP16))
    assert both.steps == 9
    assert BenchPlan.build("fpn", SIZE).steps == 30 * 2  # the defaults: 30 runs, 2 runtimes


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"repeat": 0}, "repeat must be an integer from 1"),
    ({"threads": True}, "threads must be an integer"),
    ({"precisions": ["fp16"], "calibration": 2}, "add int8 to --precision"),
    ({"precisions": ["int8"], "calibration": 0}, "calibration must be an integer"),
    ({"runtimes": []}, "no runtime to time"),
    ({"runtimes": ["tvm"]}, "unknown runtime"),
    ({"precisions": ["fp16"], "runtimes": ["torch"]}, "add --runtime onnxruntime"),
])
def test_bench_plan_refuses_bad_requests(kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(InputError, match=says):
        BenchPlan.build("fpn", SIZE, **kwargs)


def test_bench_run_checks_nothing_and_runs_what_the_plan_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = BenchPlan.build("fpn", SIZE, warmup=1, repeat=3, threads=1, runtimes=["torch"])
    refuse_checks(monkeypatch)
    runs: list[str] = []
    result = run_bench(plan, on_run=runs.append)
    assert len(runs) == plan.steps == 3 and set(runs) == {"torch"}
    [timing] = result.timings
    assert timing.repeat == 3 and timing.threads == 1 and timing.median_ms > 0


def test_cli_bench_bar_total_comes_from_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    bars = record_progress(monkeypatch, necktool.cli.bench_cmd)
    code, _, stderr = invoke("bench", "fpn", "--input-size", "64x64", "--runtime",
                             "torch", "--warmup", "1", "--repeat", "2", "--json")
    assert code == 0, stderr
    assert bars == [(2, ["torch", "torch"])]


def test_cli_bench_errors_are_exit_2_before_torch() -> None:
    proc = run_without(["bench", "fpn", "--precision", "fp16", "--calibration", "2"], code=2)
    assert "add int8 to --precision" in proc.stderr


# -- the content hash --------------------------------------------------------------------------
def test_hashes_are_stable_across_processes() -> None:
    here = [ProfilePlan.build("scrfd_2.5g").content_hash(),
            BenchPlan.build("fpn", SIZE, repeat=3).content_hash()]
    code = ("from necktool.analysis.plan import ProfilePlan\n"
            "from necktool.latency.plan import BenchPlan\n"
            "print(ProfilePlan.build('scrfd_2.5g').content_hash())\n"
            "print(BenchPlan.build('fpn', (64, 64), repeat=3).content_hash())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONHASHSEED": "99"})
    assert proc.stdout.split() == here
    assert ProfilePlan.build("scrfd_2.5g").content_hash() == ProfilePlan(
        necktool.get_spec("scrfd_2.5g"), 1, ((640, 640),)).content_hash()


@pytest.mark.parametrize("changes", [
    {"batch": 2}, {"input_size": (96, 64)}, {"out_channels": 32}, {"sizes": [(64, 64)]},
    {"sizes": [(640, 640), (64, 64)]},
])
def test_profile_hash_changes_with_each_deciding_field(changes: dict[str, Any]) -> None:
    base = ProfilePlan.build("scrfd_2.5g")
    assert ProfilePlan.build("scrfd_2.5g", **changes).content_hash() != base.content_hash()


def test_profile_hash_changes_with_the_neck_and_its_name() -> None:
    hashes = {ProfilePlan.build(n).content_hash() for n in ("fpn", "retinaface_mnet",
                                                           "scrfd_2.5g")}
    assert len(hashes) == 3  # fpn and retinaface_mnet differ only in name: still two plans


@pytest.mark.parametrize("changes", [
    {"repeat": 4}, {"warmup": 2}, {"threads": 1}, {"seed": 1}, {"runtimes": ["torch"]},
    {"precisions": ["fp16"]}, {"precisions": ["int8"], "calibration": 2}, {"batch": 2},
])
def test_bench_hash_changes_with_each_field(changes: dict[str, Any]) -> None:
    base = BenchPlan.build("fpn", SIZE, repeat=3)
    kwargs: dict[str, Any] = {"repeat": 3}
    kwargs.update(changes)
    assert BenchPlan.build("fpn", SIZE, **kwargs).content_hash() != base.content_hash()
