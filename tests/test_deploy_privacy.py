"""What ships stays private: no file an export writes carries an absolute path, the user
name or the host name of the machine that made it (the dynamo exporter annotates every node
with its Python stack, absolute paths included), while the name scopes ``--stages`` reads
stay. Every preset, a custom neck whose source lies in a folder named with a marker, a
checkpoint there, and the ncnn pair are exported from a working directory, ``$HOME`` and
``$TMPDIR`` holding the marker; the marker, the Python environment's and necktool's own
folders appear in no written byte."""

from __future__ import annotations

import getpass
import pathlib
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator

import onnx
import pytest
import torch
from _cli import necktool

import necktool as package
from necktool.artifact.stages import NAME_SCOPES, module_path
from necktool.deploy.export import export_onnx
from necktool.necks.weights import seeded_model
from necktool.spec.registry import PRESETS, resolve_spec

MARKER = "Mk7qPrivate"
SMALL = (64, 64)
EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "custom_neck.py"


@pytest.fixture
def marked(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """A working directory, ``$HOME`` and ``$TMPDIR`` whose paths hold :data:`MARKER`."""
    root = tmp_path / f"home_of_{MARKER}"
    for sub in ("work", "home", "tmp"):
        (root / sub).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setenv("TMPDIR", str(root / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    monkeypatch.chdir(root / "work")
    yield root


def machine_words() -> list[str]:
    """What must not ship: the marker, this Python's and necktool's folders (the stack
    traces point into both), the user name and the host name."""
    words = [MARKER, sys.prefix, str(pathlib.Path(package.__file__).resolve().parents[1])]
    words += [w for w in (getpass.getuser(), socket.gethostname()) if len(w) >= 3]
    return words


def text_of(path: pathlib.Path) -> bytes:
    """A file's bytes; for ONNX, every string in it (the tensors' raw bytes left out, where a
    short user name could turn up by chance)."""
    data = path.read_bytes()
    if path.suffix != ".onnx":
        return data
    model = onnx.load_from_string(data)
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
    return model.SerializeToString()


def leaks(paths: list[pathlib.Path]) -> list[str]:
    found = []
    for path in paths:
        data, text = path.read_bytes(), text_of(path)
        for word in machine_words():
            if (MARKER in word and word.encode() in data) or word.encode() in text:
                found.append(f"{path.name}: {word!r}")
    return found


def written(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (
        ".onnx", ".param", ".bin", ".json", ".png", ".svg"))


def test_no_export_of_any_preset_or_a_custom_neck_names_the_machine(
        marked: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Static exports (half the exporter's time of a dynamic one; the same modules traced:
    the dynamic, int8 and checkpoint path is the process test below)."""
    work = marked / "work"
    for name in PRESETS:
        export_onnx(name, work / f"{name}.onnx", input_size=SMALL, dynamic=False,
                    verify=False)
    # A custom neck whose source file sits in the marked folder: its own frames are traced.
    source = marked / "src"
    source.mkdir()
    shutil.copy(EXAMPLE, source / "private_bifpn.py")
    monkeypatch.syspath_prepend(str(source))
    export_onnx("private_bifpn:BiFPN", work / "custom.onnx", in_channels=(16, 24, 32),
                out_channels=16, input_size=SMALL, dynamic=False, verify=False)
    files = written(marked)
    assert len(files) == len(PRESETS) + 1
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
