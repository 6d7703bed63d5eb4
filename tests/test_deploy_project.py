"""`necktool export --onnx` with no NECK: one verified file per budget entry of the project's
config, one progress bar, one summary table (an array in JSON); no config is exit 2."""

from __future__ import annotations

import json
import pathlib

import pytest
from typer.testing import CliRunner

import necktool.cli
from necktool.artifact.metadata import read_metadata
from necktool.budgets.config import load_config
from necktool.budgets.export import export_config

#: The entries' graphs come from the session's templates after their first export: the
#: subject here is the config's entries, not the exporter.
pytestmark = pytest.mark.usefixtures("shared_templates")

CONFIG = """
input-size = "64x96"

[[budget]]
neck = "scrfd_0.5g"
max-gflops = 1

[[budget]]
name = "mnet odd"
neck = "retinaface_mnet"
input-size = "75x93"
batch = 2
max-gflops = 1
"""


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(necktool.cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture()
def project(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'p'\n\n[tool.necktool]\n" + CONFIG.replace("[[budget]]",
                                                                      "[[tool.necktool.budget]]"))
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # found as check finds it: upwards
    return tmp_path


def test_one_verified_file_per_entry_named_after_it(project: pathlib.Path) -> None:
    out = project / "onnx"
    out.mkdir()
    (out / "scrfd_0.5g.onnx").write_bytes(b"an older export, replaced once verified")
    code, stdout, stderr = invoke("export", "--onnx", "-o", str(out), "--trials", "1",
                                  "--json")
    assert code == 0, stderr
    assert stderr == ""
    data = json.loads(stdout)
    assert isinstance(data, list) and [d["entry"] for d in data] == ["scrfd_0.5g", "mnet odd"]
    assert sorted(p.name for p in out.iterdir()) == ["mnet odd.onnx", "scrfd_0.5g.onnx"]
    for entry in data:
        assert entry["written"] and entry["verification"]["passed"]
        assert entry["key_path"].startswith("tool.necktool.budget[")
    # each entry with its own size and batch, from the config
    assert (data[1]["neck"], data[1]["input_size"], data[1]["batch"]) == \
        ("retinaface_mnet", [75, 93], 2)
    meta = read_metadata(out / "mnet odd.onnx")
    assert meta is not None and meta.input_size == (75, 93) and meta.batch == 2
    assert (out / "scrfd_0.5g.onnx").read_bytes()[:8] != b"an older"


def test_summary_table_and_default_directory(project: pathlib.Path) -> None:
    code, stdout, stderr = invoke("export", "--onnx", "--trials", "1", "--precision", "fp16")
    assert code == 0, stderr
    here = pathlib.Path.cwd()
    assert sorted(p.name for p in here.iterdir()) == ["mnet odd.fp16.onnx",
                                                     "scrfd_0.5g.fp16.onnx"]
    assert "2 budget entries of ../pyproject.toml" in stdout
    assert stdout.count("PASS") == 2 and stdout.count("fp16") >= 2
    assert stdout.count("written") >= 2


def test_a_failing_entry_keeps_its_file_and_the_others_are_written(
        project: pathlib.Path) -> None:
    out = project / "onnx"
    out.mkdir()
    keep = out / "mnet odd.onnx"
    keep.write_bytes(b"keep me")
    # p5 of the FPN at 75x93 b2 is tiny; atol 0 fails somewhere in every output
    code, stdout, stderr = invoke("export", "--onnx", "-o", str(out), "--trials", "1",
                                  "--atol", "0", "--rtol", "0", "--json")
    assert code == 1
    data = json.loads(stdout)
    assert [d["written"] for d in data] == [False, False]
    assert keep.read_bytes() == b"keep me" and not (out / "scrfd_0.5g.onnx").exists()
    assert "2 of 2 export(s) of ../pyproject.toml failed verification" in stderr


def test_no_neck_and_no_config_is_one_line_exit_2(tmp_path: pathlib.Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = invoke("export", "--onnx")
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1
    assert "name a neck, e.g. 'necktool export scrfd_2.5g --onnx'" in stderr
    assert "necktool.toml" in stderr and "--config" in stderr
    assert "--weights FILE" in stderr  # the third way: the neck a checkpoint holds
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "says"), [
    (["--input-size", "64"], "--input-size describes one neck"),
    (["--prefix", "fpn.", "--batch", "2"], "--batch, --prefix describe one neck"),
    (["-o", "no/where"], "no/where: does not exist, nor does its parent"),
    (["-o", "../pyproject.toml"], "is not a directory"),
    (["--atol", "1e-4", "p9:1"], "--atol names output 'p9'"),
])
def test_bad_requests_fail_before_any_export(project: pathlib.Path, args: list[str],
                                             says: str) -> None:
    code, stdout, stderr = invoke("export", "--onnx", *args)
    assert code == 2 and stdout == "" and says in stderr
    assert list(pathlib.Path.cwd().iterdir()) == []


def test_a_missing_directory_whose_parent_exists_is_created(project: pathlib.Path) -> None:
    code, stdout, stderr = invoke("export", "--onnx", "-o", "onnx/", "--no-verify", "--json")
    assert code == 0, stderr
    names = sorted(p.name for p in (pathlib.Path.cwd() / "onnx").iterdir())
    assert names == sorted(pathlib.Path(e["path"]).name for e in json.loads(stdout))


def test_default_file_names_carry_a_reduced_precision(project: pathlib.Path) -> None:
    from necktool.deploy.plan import ExportPlan

    assert ExportPlan.build("fpn", verify=False).output.name == "fpn.onnx"
    assert ExportPlan.build("fpn", verify=False, precision="fp16").output.name == \
        "fpn.fp16.onnx"
    assert ExportPlan.build("fpn", verify=False, precision="int8").output.name == \
        "fpn.int8.onnx"


def test_an_entry_name_that_cannot_be_a_file_name(tmp_path: pathlib.Path) -> None:
    (tmp_path / "necktool.toml").write_text(CONFIG + '\n[[budget]]\nname = "a/b"\n'
                                            'neck = "fpn"\nmax-gflops = 1\n')
    code, stdout, stderr = invoke("export", "--config", str(tmp_path / "necktool.toml"),
                                  "-o", str(tmp_path))
    assert code == 2 and stdout == ""
    assert "budget[2].name: 'a/b' cannot name the file <entry name>.onnx" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["necktool.toml"]


def test_library_call_and_steps(project: pathlib.Path) -> None:
    config = load_config(None, pathlib.Path.cwd())
    steps: list[str] = []
    result = export_config(config, project, verify=False, on_step=steps.append)
    assert result and [e.name for e in result.entries] == ["scrfd_0.5g", "mnet odd"]
    assert steps[:5] == [f"scrfd_0.5g: {s}" for s in ("build", "count", "export", "check",
                                                      "write")]
    assert len(steps) == 10
