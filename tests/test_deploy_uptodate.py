"""``export --onnx`` over the config keeps files that are up to date (deploy/project.py):
an entry whose file's metadata matches the plan is not exported again; anything that
differs, a damaged or foreign file, or ``--force`` exports it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
from _cli import run_without
from typer.testing import CliRunner

import necktool.budgets.export as project_mod
from necktool.budgets.config import load_config
from necktool.budgets.export import up_to_date
from necktool.cli import app
from necktool.deploy.plan import ExportPlan, ExportRequest
from necktool.spec.graph_form import DEFAULT_OPSET
from necktool.spec.precision import DEFAULT_CALIBRATION, Precision
from necktool.spec.weights import WeightsRequest

#: Graphs of structures exported before come from the session's export templates (files
#: byte for byte the cold export's): the exporter is not what these tests are about.
pytestmark = pytest.mark.usefixtures("shared_templates")

UPSAMPLE_KEY = "necktool.upsample"

REPO = Path(__file__).resolve().parents[1]
CONFIG = 'input-size = "64x64"\n\n[[budget]]\nneck = "scrfd_0.5g"\nmax-gflops = 1\n'
FILE = "scrfd_0.5g.onnx"
PLAN: dict[str, Any] = {"dynamic": True, "opset": DEFAULT_OPSET, "seed": 0,
                        "precision": Precision.FP32, "calibration": None}


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with one entry, exported once for real."""
    root = tmp_path_factory.mktemp("exported")
    (root / "necktool.toml").write_text(CONFIG)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code, out, err = invoke("export", "--onnx", "--trials", "1", "--json")
    finally:
        os.chdir(cwd)
    assert code == 0, err
    assert [(e["written"], e["up_to_date"]) for e in json.loads(out)] == [(True, False)]
    return root


@pytest.fixture
def project(tmp_path: Path, exported: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(exported, tmp_path / "p")
    monkeypatch.chdir(tmp_path / "p")
    return tmp_path / "p"


def entry(root: Path) -> Any:
    return load_config(root / "necktool.toml", root).budgets[0]


def plan_for(root: Path, seed: int = 0, **settings: Any) -> ExportPlan:
    """The plan ``export --onnx`` makes for the project's one entry."""
    budget = entry(root)
    request = ExportRequest(weights=WeightsRequest(seed=seed), verify=False, **settings)
    return ExportPlan.for_spec(budget.spec, root / FILE, request, batch=budget.batch,
                               check_output=False)


def test_a_second_run_keeps_the_file_and_does_not_import_torch(project: Path) -> None:
    before = (project / FILE).read_bytes(), (project / FILE).stat().st_mtime_ns
    proc = run_without(["export", "--onnx", "--json"], cwd=project,
                       env={"PYTHONPATH": str(REPO)})
    (only,) = json.loads(proc.stdout)
    assert only["up_to_date"] is True and only["written"] is False
    assert only["entry"] == "scrfd_0.5g" and only["input_size"] == [64, 64]
    assert ((project / FILE).read_bytes(), (project / FILE).stat().st_mtime_ns) == before
    code_, out, _ = invoke("export", "--onnx")
    assert code_ == 0 and "up to date" in out


def test_the_plan_matches_field_for_field(project: Path) -> None:
    kept = up_to_date(plan_for(project, **PLAN))
    assert kept is not None and kept.nbytes == (project / FILE).stat().st_size


@pytest.mark.parametrize("change", [
    {"opset": DEFAULT_OPSET + 1}, {"dynamic": False}, {"seed": 1},
    {"precision": Precision.FP16},
    {"precision": Precision.INT8, "calibration": DEFAULT_CALIBRATION},
    {"upsample": "scale2"},
])
def test_any_other_request_is_not_up_to_date(project: Path, change: dict[str, Any]) -> None:
    assert up_to_date(plan_for(project, **{**PLAN, **change})) is None


@pytest.mark.parametrize("config_change", [
    ("max-gflops = 1", "max-gflops = 1\nbatch = 2"),
    ("max-gflops = 1", "max-gflops = 1\nout-channels = 24"),
    ('input-size = "64x64"', 'input-size = "64x96"'),
])
def test_a_changed_entry_is_not_up_to_date(project: Path,
                                           config_change: tuple[str, str]) -> None:
    config = project / "necktool.toml"
    config.write_text(config.read_text().replace(*config_change))
    assert up_to_date(plan_for(project, **PLAN)) is None


def test_another_necktool_version_is_not_up_to_date(project: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(project_mod, "__version__", "0.0.1")
    assert up_to_date(plan_for(project, **PLAN)) is None


def _set_props(path: Path, **props: str | None) -> None:
    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *((k, v) for k, v in props.items() if v is not None)]:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def test_the_upsample_form_counts_and_absent_means_size(project: Path) -> None:
    _set_props(project / FILE, **{UPSAMPLE_KEY: "size"})
    assert up_to_date(plan_for(project, **PLAN)) is not None
    _set_props(project / FILE, **{UPSAMPLE_KEY: "scale"})
    assert up_to_date(plan_for(project, **PLAN)) is None


@pytest.mark.parametrize("damage", ["garbage", "no metadata", "damaged metadata", "a dir"])
def test_a_damaged_or_foreign_file_is_not_up_to_date(project: Path, damage: str) -> None:
    path = project / FILE
    if damage == "garbage":
        path.write_bytes(b"not an onnx file")
    elif damage == "no metadata":
        model = onnx.load(str(path))
        del model.metadata_props[:]
        onnx.save(model, str(path))
    elif damage == "damaged metadata":
        _set_props(path, **{"necktool.spec": "{not json"})
    else:
        path.unlink()
        path.mkdir()
    assert up_to_date(plan_for(project, **PLAN)) is None


def test_force_exports_again_and_a_stale_entry_alone_is_exported(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = project_mod.up_to_date

    def spy(plan: ExportPlan) -> Any:
        calls.append(plan.output.stem)
        return real(plan)

    monkeypatch.setattr(project_mod, "up_to_date", spy)
    (project / "necktool.toml").write_text(
        CONFIG + '\n[[budget]]\nname = "other"\nneck = "scrfd_0.5g"\nmax-gflops = 1\n')
    shutil.copy(project / FILE, project / "other.onnx")  # same plan, so up to date too
    code, out, err = invoke("export", "--onnx", "--force", "--trials", "1", "--json")
    assert code == 0, err
    assert calls == []  # --force does not even look
    assert [(e["up_to_date"], e["written"]) for e in json.loads(out)] == [(False, True)] * 2
    # Without --force, only the entry whose file differs is exported.
    _set_props(project / "other.onnx", **{"necktool.opset": str(DEFAULT_OPSET + 1)})
    code, out, err = invoke("export", "--onnx", "--trials", "1", "--json")
    assert code == 0, err
    assert [(e["entry"], e["up_to_date"]) for e in json.loads(out)] == \
        [("scrfd_0.5g", True), ("other", False)]
    assert calls == ["scrfd_0.5g", "other"]


def test_library_result_says_which_entries_were_kept(project: Path) -> None:
    result = project_mod.export_config(load_config(None, project), verify=False)
    assert result and [e.kept is not None and e.result is None for e in result.entries] \
        == [True]
    assert result.to_dict()[0]["up_to_date"] is True
