"""Plans of the ONNX path (necktool.deploy.plan): every check made once, when the plan is
built; the run trusts it; the content hash is stable and changes with any deciding field;
a failed verification is a falsy result (exit 1), never an exception."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _cli import run as invoke
from _counting import count_calls, record_progress

import necktool
import necktool.cli
import necktool.cli.export_cmd
import necktool.deploy.export
import necktool.deploy.plan as plan_mod
import necktool.deploy.tolerance
from necktool.budgets.config import BudgetConfig, load_config
from necktool.budgets.export import plan_config
from necktool.deploy.plan import STEPS, ExportPlan, VerifyPlan
from necktool.deploy.tolerance import VerifyOptions
from necktool.deploy.verify import run_verify
from necktool.errors import InputError, SpecError, VerificationFailed
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.precision import Precision
from necktool.spec.weights import WeightsKind, WeightsRequest

SIZE = (64, 64)  # fpn's coarsest stride is 32: 2x2 at the coarsest level
CHECKS = ("resolve_spec", "check_batch", "check_precision", "check_opset", "resolve_provider",
          "check_traced_size", "check_writable")


def counting(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...] = CHECKS,
             module: Any = plan_mod, calls: Counter[str] | None = None) -> Counter[str]:
    """Count the calls of each check ``module`` makes (each is a module global)."""
    return count_calls(monkeypatch, module, names, calls)


class _NoCoercion:
    """Stands in for the Precision enum during a run: coercing a value again fails."""

    def __new__(cls, *args: Any) -> Any:
        raise AssertionError("a plan's run coerced a precision again")

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - class attributes below
        raise AttributeError(name)


for _member in Precision:  # Precision.FP32 and friends still read as themselves
    setattr(_NoCoercion, _member.name, _member)


def forbid_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every check (and resolving a spec, and checking its size) fail: a run that
    re-validates anything breaks."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a plan's run validated again")

    for name in CHECKS:
        monkeypatch.setattr(plan_mod, name, refuse)
    monkeypatch.setattr(NeckSpec, "check_size", refuse)
    import necktool.deploy.precision.convert as convert_mod

    for module in (convert_mod, plan_mod):  # the run converts without checking again
        monkeypatch.setattr(module, "Precision", _NoCoercion)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One fpn export through the CLI, its checks counted and its progress bar recorded."""
    out = tmp_path_factory.mktemp("export") / "fpn.onnx"
    mp = pytest.MonkeyPatch()
    calls = counting(mp)
    counting(mp, ("resolve_spec",), necktool.cli.export_cmd, calls)
    bars = record_progress(mp, necktool.cli.export_cmd)
    real_run = necktool.deploy.export.run_export
    ran: list[ExportPlan] = []

    def run_without_checks(plan: ExportPlan, **kwargs: Any) -> Any:
        with pytest.MonkeyPatch.context() as strict:
            forbid_checks(strict)  # the run must not check anything again
            ran.append(plan)
            return real_run(plan, **kwargs)

    mp.setattr(necktool.deploy.export, "run_export", run_without_checks)
    try:
        code, stdout, stderr = invoke("export", "fpn", "--input-size", "64x64", "--trials",
                                      "1", "-o", str(out), "--json")
    finally:
        mp.undo()
    assert code == 0, stderr
    yield {"data": json.loads(stdout), "calls": calls, "bars": bars, "path": out,
           "plan": ran[0]}


def test_cli_export_checks_each_thing_once_and_sizes_its_bar_from_the_plan(
        exported: dict[str, Any]) -> None:
    # One resolution of the neck and one of each check, all of them before any work (the
    # batch was checked by the --batch flag's parser, so the plan is not asked to).
    want = {name: 1 for name in CHECKS if name != "check_batch"}
    assert exported["calls"] == Counter(want), exported["calls"]
    [(total, advanced)] = exported["bars"]
    assert advanced == ["build", "count", "export", "check", "verify", "write"]
    assert total == len(advanced)  # the plan's steps, no CLI copy of the library's list
    plan = exported["plan"]
    assert plan.steps == tuple(advanced) and plan.spec.input_size == SIZE
    data = exported["data"]
    assert data["written"] is True and data["verification"]["passed"] is True
    assert pathlib.Path(data["path"]) == exported["path"] and exported["path"].is_file()
    # The conv cross-check is one value; the JSON shape of the three counts is kept.
    macs = data["conv_macs"]
    assert macs["fvcore"] == macs["flop_counter"] == macs["onnx"] > 0 and macs["match"]


def test_a_failed_verification_is_a_falsy_result_and_exit_1(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.deploy.verify as verify_mod

    real = verify_mod._run_torch
    monkeypatch.setattr(verify_mod, "_run_torch",
                        lambda model, inputs: [o + 0.5 for o in real(model, inputs)])
    dest = tmp_path / "bad.onnx"
    code, stdout, stderr = invoke("export", "fpn", "--input-size", "64x64", "--trials", "1",
                                  "--static", "-o", str(dest), "--json")
    assert code == 1
    data = json.loads(stdout)  # rendered like a passing result
    assert data["written"] is False and data["verification"]["passed"] is False
    max_abs = data["verification"]["max_abs"]
    assert max_abs == pytest.approx(0.5, abs=1e-4)  # the injected error, not another one
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("necktool: error: verification failed, ")
    assert "not written" in lines[0] and not dest.exists()


def test_nothing_raises_verification_failed_any_more() -> None:
    package = pathlib.Path(necktool.__file__).parent
    raised = [f"{path.name}:{node.lineno}" for path in package.rglob("*.py")
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Raise) and node.exc is not None
              and "VerificationFailed" in ast.unparse(node.exc)]
    assert raised == []
    assert necktool.VerificationFailed is VerificationFailed  # still importable


# -- building: errors before any work ----------------------------------------------------------
@pytest.mark.parametrize(("changes", "error", "says"), [
    ({"opset": 17}, InputError, "opset 17 is not supported"),
    ({"precision": "fp8"}, InputError, "precision 'fp8' is not one of"),
    ({"calibration": 4}, InputError, "add --precision int8"),
    ({"batch": 0}, InputError, "batch"),
    ({"options": VerifyOptions(atol="p9:1e-3")}, InputError, "names output 'p9'"),
    ({"options": VerifyOptions(provider="nosuch")}, InputError, "not available here"),
    ({"input_size": (16, 16)}, SpecError, "coarsest stride 32"),
])
def test_build_refuses_a_bad_request(tmp_path: pathlib.Path, changes: dict[str, Any],
                                     error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        ExportPlan.build("fpn", tmp_path / "x.onnx", **changes)
    assert list(tmp_path.iterdir()) == []


def test_steps_follow_precision_and_verification(tmp_path: pathlib.Path) -> None:
    int8 = ExportPlan.build("fpn", tmp_path / "x.onnx", precision="int8", verify=False)
    assert int8.steps == ("build", "count", "export", "check", "convert", "write")
    assert int8.request.calibration == 8 and int8.cases == ()
    fp16 = ExportPlan.build("fpn", tmp_path / "x.onnx", precision="fp16")
    assert fp16.steps == STEPS
    # The cases: the export size, and two odd sizes for a file serving every size.
    assert [c.title for c in fp16.cases] == ["640x640 b1", "321x347 b1", "349x327 b2"]
    assert fp16.request.options is not None
    assert fp16.request.options.provider == "CPUExecutionProvider"
    assert fp16.request.options.atol.default == 1e-2  # fp16's default, resolved once


# -- the content hash --------------------------------------------------------------------------
def _plan(tmp_path: pathlib.Path, **changes: Any) -> ExportPlan:
    kwargs: dict[str, Any] = {"input_size": SIZE}
    kwargs.update(changes)
    return ExportPlan.build("fpn", tmp_path / "x.onnx", **kwargs)


def test_hash_is_stable_across_processes_and_ignores_the_destination(
        tmp_path: pathlib.Path) -> None:
    here = _plan(tmp_path).content_hash()
    elsewhere = ExportPlan.build("fpn", tmp_path / "sub.onnx", input_size=SIZE)
    assert elsewhere.content_hash() == here
    assert len(here) == 64 and int(here, 16) >= 0
    code = ("import pathlib, sys\nfrom necktool.deploy.plan import ExportPlan\n"
            f"p = ExportPlan.build('fpn', pathlib.Path({str(tmp_path)!r}) / 'y.onnx', "
            "input_size=(64, 64))\nprint(p.content_hash())\nprint('torch' in sys.modules)")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=env)
    assert proc.stdout.split() == [here, "False"]  # same hash; planning needs no torch


@pytest.mark.parametrize("changes", [
    {"batch": 2}, {"dynamic": False}, {"opset": 20}, {"precision": "fp16"},
    {"precision": "int8"}, {"verify": False}, {"options": VerifyOptions(trials=1)},
    {"options": VerifyOptions(atol=1e-3)}, {"options": VerifyOptions(error_stat="mean")},
    {"weights": WeightsRequest(seed=1)}, {"input_size": (96, 64)}, {"out_channels": 32},
    {"norm": "gn"}, {"act": "relu"},
])
def test_hash_changes_with_each_deciding_field(tmp_path: pathlib.Path,
                                               changes: dict[str, Any]) -> None:
    assert _plan(tmp_path, **changes).content_hash() != _plan(tmp_path).content_hash()


def test_hash_counts_calibration_and_a_weights_file_by_its_bytes(tmp_path: pathlib.Path) -> None:
    int8 = _plan(tmp_path, precision="int8")
    assert _plan(tmp_path, precision="int8", calibration=3).content_hash() != \
        int8.content_hash()
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"weights one")
    second.write_bytes(b"weights one")
    by_a = _plan(tmp_path, weights=WeightsRequest(path=first)).content_hash()
    assert _plan(tmp_path, weights=WeightsRequest(path=second)).content_hash() == by_a
    assert _plan(tmp_path, weights=WeightsRequest(path=first, prefix="fpn.")
                 ).content_hash() != by_a
    second.write_bytes(b"weights two")
    assert _plan(tmp_path, weights=WeightsRequest(path=second)).content_hash() != by_a
    # seed 0 asked for and seed left to its default are the same weights
    assert _plan(tmp_path, weights=WeightsRequest(seed=0)).content_hash() == \
        _plan(tmp_path).content_hash()


# -- one weights request -----------------------------------------------------------------------
def test_weights_request_says_what_kind_of_file_it_reads(tmp_path: pathlib.Path) -> None:
    assert WeightsRequest().kind is WeightsKind.SEED
    assert WeightsRequest(path=pathlib.Path("r50.pth")).kind is WeightsKind.CHECKPOINT
    assert WeightsRequest(path=pathlib.Path("det.ONNX")).kind is WeightsKind.ONNX
    from necktool.cli.params import Weights

    assert Weights is WeightsRequest  # the CLI's group collects the library's type
    # An ONNX file is read as a detector (its neck's Conv nodes), untrusted: garbage is a
    # one-line input error naming the file, never a pickle or a checkpoint load.
    from necktool.deploy.model import make_model
    from necktool.errors import InputError, WeightsError

    onnx_file = tmp_path / "det.onnx"
    onnx_file.write_bytes(b"not read")
    with pytest.raises((WeightsError, InputError), match=r"det\.onnx"):
        make_model(_plan(tmp_path).spec, WeightsRequest(path=onnx_file))


# -- a config: shared settings checked once ------------------------------------------------------
def test_config_plan_checks_the_shared_settings_once(tmp_path: pathlib.Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "necktool.toml").write_text(
        '[[budget]]\nneck = "fpn"\ninput-size = "64x64"\nmax-gflops = 1\n'
        '[[budget]]\nname = "wide"\nneck = "fpn"\nout-channels = 128\ninput-size = "64x64"\n'
        'max-gflops = 1\n[[budget]]\nneck = "pafpn"\ninput-size = "64x64"\nmax-gflops = 1\n')
    config: BudgetConfig = load_config(tmp_path / "necktool.toml", tmp_path)
    calls = counting(monkeypatch)
    request = plan_mod.ExportRequest(precision=Precision.FP16)
    plan = plan_config(config, tmp_path, request)
    assert calls["check_precision"] == calls["resolve_provider"] == calls["check_opset"] == 1
    assert calls["check_traced_size"] == 3  # per entry: it depends on the neck
    # fp16 files are named NAME.fp16.onnx, so they never replace the fp32 ones
    assert [e.plan.output.name for e in plan.entries] == ["fpn.fp16.onnx", "wide.fp16.onnx",
                                                          "pafpn.fp16.onnx"]
    assert plan.steps == 3 * len(STEPS)
    hashes = {e.plan.content_hash() for e in plan.entries}
    assert len(hashes) == 3
    assert list(tmp_path.iterdir()) == [tmp_path / "necktool.toml"]  # nothing written


# -- verify ------------------------------------------------------------------------------------
def test_verify_plan_runs_without_validating_and_hashes_the_file(
        exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    path = exported["path"]
    plan = VerifyPlan.build(path, options=VerifyOptions(trials=1))
    assert plan.precision is Precision.FP32 and plan.weights == WeightsRequest(seed=0)
    assert plan.content_hash() == VerifyPlan.build(path, options=VerifyOptions(trials=1)
                                                   ).content_hash()
    assert plan.content_hash() != VerifyPlan.build(path).content_hash()  # trials decide
    forbid_checks(monkeypatch)
    seen: list[str] = []
    report = run_verify(plan, on_case=seen.append)
    assert report and len(seen) == plan.steps == 3
    assert report.served == plan.served and "every image H x W" in report.serves_text
    assert report.to_dict()["serves"] == report.serves_text  # the sentence, from the Served
    assert report.verification.path == str(path)  # no patched-in path


def test_verify_failure_is_exit_1(exported: dict[str, Any],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.deploy.verify as verify_mod

    real = verify_mod._run_torch
    monkeypatch.setattr(verify_mod, "_run_torch",
                        lambda model, inputs: [o * 1.5 for o in real(model, inputs)])
    code, stdout, stderr = invoke("verify", str(exported["path"]), "--trials", "1")
    assert code == 1 and "FAIL" in stdout
    assert stderr.strip().splitlines()[-1].startswith("necktool: error: verification of ")


# -- the library refuses exactly what the CLI refuses --------------------------------------------
def _features(spec: NeckSpec, directory: pathlib.Path) -> pathlib.Path:
    """One real-layout .npz feature set for ``spec`` at 64x64 (what --calibration-data takes)."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal((1, c, 64 // s, 64 // s)).astype(np.float32)
              for name, c, s in zip(spec.input_names, spec.in_channels, spec.input_strides,
                                    strict=True)}
    np.savez(directory / "f.npz", **arrays)
    return directory / "f.npz"


def _library_refusals(tmp: pathlib.Path) -> list[tuple[list[str], Callable[[], Any]]]:
    """Each CLI refusal of ``export`` beside the library call that asks the same thing."""
    from necktool.budgets.export import export_config
    from necktool.deploy.data import load_data
    from necktool.deploy.export import export_onnx
    from necktool.deploy.precision.reduce import Reduction
    from necktool.deploy.runtimes.ncnn_export import export_ncnn
    from necktool.spec.precision import CalibrationMethod
    from necktool.spec.registry import resolve_spec

    spec = resolve_spec("pafpn", input_size=SIZE)
    npz = _features(spec, tmp)
    data = load_data(spec, calibration_data=npz, holdout=0)
    config = load_config(tmp / "necktool.toml", tmp)
    neck = ["pafpn", "--input-size", "64x64"]
    return [
        ([*neck, "--precision", "int8", "--calibration", "2", "--calibration-data", str(npz),
          "--holdout", "0"],
         lambda: export_onnx("pafpn", input_size=SIZE, precision="int8", calibration=2,
                             reduction=Reduction(data))),
        ([*neck, "--to", "ncnn", "--static"],
         lambda: export_ncnn("pafpn", input_size=SIZE, dynamic=False)),
        ([*neck, "--to", "ncnn", "--opset", "20"],
         lambda: export_ncnn("pafpn", input_size=SIZE, opset=20)),
        ([*neck, "--to", "ncnn", "--upsample", "scale2"],
         lambda: export_ncnn("pafpn", input_size=SIZE, upsample="scale2")),
        ([*neck, "--to", "ncnn", "--runtime", "ort"],
         lambda: export_ncnn("pafpn", input_size=SIZE, runtimes=["ort"])),
        ([*neck, "--to", "ncnn", "--precision", "int8"],
         lambda: export_ncnn("pafpn", input_size=SIZE, precision="int8")),
        ([*neck, "--to", "ncnn", "--precision", "fp16", "--stages"],
         lambda: export_ncnn("pafpn", input_size=SIZE, precision="fp16",
                             reduction=Reduction(stages=True))),
        ([*neck, "--keep-fp32", "top-down"],
         lambda: export_onnx("pafpn", input_size=SIZE, reduction=Reduction(
             keep_fp32=("top-down",)))),
        ([*neck, "--precision", "fp16", "--calibration-method", "entropy"],
         lambda: export_onnx("pafpn", input_size=SIZE, precision="fp16",
                             reduction=Reduction(method=CalibrationMethod.ENTROPY))),
        (["--runtime", "openvino"], lambda: export_config(config, tmp, runtimes=["openvino"])),
        (["--out-channels", "8", "--batch", "2"],
         lambda: export_config(config, tmp, out_channels=8, batch=2)),
        (["--prefix", "fpn."], lambda: export_config(config, tmp, prefix="fpn.")),
        (["--to", "ncnn"], lambda: export_config(config, tmp, to="ncnn")),
        ([*neck, "--calibration", "3"], lambda: export_onnx("pafpn", input_size=SIZE,
                                                            calibration=3)),
    ]


def test_every_cli_refusal_of_export_is_the_librarys(tmp_path: pathlib.Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI builds the one request and the plans; each refusal comes from there, so a
    library caller gets the same one-line error for the same request (exit 2 <-> raise)."""
    (tmp_path / "necktool.toml").write_text(
        '[[budget]]\nneck = "pafpn"\ninput-size = "64x64"\nmax-gflops = 1\n')
    monkeypatch.chdir(tmp_path)
    cases = _library_refusals(tmp_path)
    assert len(cases) >= 13
    for args, call in cases:
        code, stdout, stderr = invoke("export", *args)
        assert code == 2 and stdout == "", (args, code, stderr)
        cli = stderr.strip().splitlines()[-1].removeprefix("necktool: error: ")
        with pytest.raises(InputError) as raised:
            call()
        assert str(raised.value) == cli, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz", "necktool.toml"]
