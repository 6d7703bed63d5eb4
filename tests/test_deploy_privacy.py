"""What ships stays private: no file an export writes carries an absolute path, the user
name or the host name of the machine that made it (the dynamo exporter annotates every node
with its Python stack, absolute paths included), while the name scopes ``--stages`` reads
stay. A preset, a custom neck whose source lies in a folder named with a marker, a
checkpoint there, and the ncnn pair are exported from a working directory, ``$HOME`` and
``$TMPDIR`` holding the marker; the marker, the Python environment's and necktool's own
folders appear in no written byte (every preset's own export is checked the same way, in
test_deploy_export.py)."""

from __future__ import annotations

import pathlib
import shutil

import onnx
import pytest
import torch
from _cli import necktool
from _privacy import leaks, written

from necktool.artifact.stages import NAME_SCOPES, module_path
from necktool.deploy.export import export_onnx
from necktool.necks.weights import seeded_model
from necktool.spec.registry import resolve_spec

SMALL = (64, 64)
EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "custom_neck.py"


def test_no_export_of_a_custom_neck_names_the_machine(
        marked: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A custom neck whose source file sits in the marked folder: its own frames are
    traced. Static exports (half the exporter's time of a dynamic one; every preset's
    dynamic export is checked the same way in test_deploy_export.py, the int8 and
    checkpoint path in the process test below)."""
    work = marked / "work"
    export_onnx("scrfd_0.5g", work / "scrfd_0.5g.onnx", input_size=SMALL, dynamic=False,
                verify=False)
    source = marked / "src"
    source.mkdir()
    shutil.copy(EXAMPLE, source / "private_bifpn.py")
    monkeypatch.syspath_prepend(str(source))
    export_onnx("private_bifpn:BiFPN", work / "custom.onnx", in_channels=(16, 24, 32),
                out_channels=16, input_size=SMALL, dynamic=False, verify=False)
    files = written(marked)
    assert [f.name for f in files] == ["custom.onnx", "scrfd_0.5g.onnx"]
    assert leaks(files) == []
    # The name scopes --stages reads stay, and nothing else annotates a node.
    model = onnx.load(str(work / "scrfd_0.5g.onnx"))
    assert {p.key for n in model.graph.node for p in n.metadata_props} == {NAME_SCOPES}
    assert all(not n.doc_string for n in model.graph.node)
    paths = {module_path(n) for n in model.graph.node if n.op_type == "Conv"}
    assert {"lateral_convs.0.conv", "lateral_convs.1.conv", "lateral_convs.2.conv"} <= paths


def test_the_ncnn_pair_names_nothing_of_the_machine(marked: pathlib.Path) -> None:
    pytest.importorskip("pnnx")
    from necktool.deploy.runtimes.ncnn_export import export_ncnn

    result = export_ncnn("scrfd_0.5g", marked / "work" / "n.param", input_size=SMALL,
                         verify=False)
    assert result.written
    assert leaks([result.param_path, result.bin_path]) == []
    assert sorted(p.name for p in (marked / "work").iterdir()) == ["n.bin", "n.param"]


def test_an_exporting_process_leaves_nothing_in_tmpdir_and_names_weights_by_name_only(
        marked: pathlib.Path) -> None:
    """A process of its own (torch creates ``$TMPDIR/torchinductor_<user>`` when the exporter
    first imports ``torch._dynamo``): a dynamic int8 export of weights from a checkpoint in
    the marked ``$HOME``. The file records the checkpoint's name and SHA-256, not its
    folder."""
    spec = resolve_spec("scrfd_0.5g")
    checkpoint = marked / "home" / "neck.pt"
    torch.save(seeded_model(spec, seed=3).state_dict(), checkpoint)
    proc = necktool("export", "scrfd_0.5g", "--input-size", "64", "--no-verify",
                    "--precision", "int8", "--weights", str(checkpoint), "-o", "n.onnx",
                    cwd=marked / "work",
                    env={"TMPDIR": str(marked / "tmp"), "HOME": str(marked / "home")})
    assert (proc.returncode, proc.stderr) == (0, "")
    assert list((marked / "tmp").iterdir()) == []
    assert leaks(written(marked)) == []
    from necktool.artifact.metadata import read_metadata
    from necktool.files import file_sha256

    weights = read_metadata(onnx.load(str(marked / "work" / "n.onnx"))).weights
    assert (weights.path, weights.sha256) == ("neck.pt", file_sha256(checkpoint))
