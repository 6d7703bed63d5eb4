"""necktool export: every preset, checks, metadata, weights, and nothing lost on failure."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from _presets import every_preset
from _privacy import leaks, written
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import necktool.cli
from necktool.artifact.metadata import conv_macs, read_metadata
from necktool.deploy.export import export_onnx
from necktool.deploy.model import load_weights
from necktool.deploy.runtimes.runners import open_session
from necktool.deploy.tolerance import VerifyOptions
from necktool.errors import ExportError, WeightsError
from necktool.necks.build import make_inputs
from necktool.necks.weights import WeightsReport, seeded_model
from necktool.spec.families import FAMILIES
from necktool.spec.registry import PRESETS, get_spec, resolve_spec

SMALL = (96, 128)  # the extra cases: odd, no multiples of 32, 65x91 and 93x71 in batch 2
EXPORTER_NOISE = ("[torch.onnx]", "Warning", "torchvision", "W11", "✅", "Obtain model graph")


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(necktool.cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_quiet(stderr: str) -> None:
    for noise in EXPORTER_NOISE:
        assert noise not in stderr, f"exporter chatter on stderr: {stderr[:300]!r}"


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- every preset ------------------------------------------------------------------------
# How each family's input levels relate in a dynamic file, read off its forward: FPNs meet
# only through interpolate(size=finer level); PAFPNs add a stride-2 conv of one level to
# the next, which ties the levels to one image.
SERVED_LEVELS = {"fpn": "independent", "mmdet_fpn": "independent",
                 "pafpn": "one-image", "mmdet_pafpn": "one-image", "yunet": "independent",
                 "yolo5face": "one-image", "yolov8": "one-image", "yolov8_lite": "one-image"}
# YuNet adds each level to the unit output of the next, so all but the coarsest have its width
LEVEL_CHANNELS = {"yunet": (8, 8, 32)}


def _family_neck(family: str) -> str:
    """A preset of the family: its bare one, else its first."""
    return family if family in PRESETS else next(
        n for n, p in PRESETS.items() if p.spec.family == family)


@pytest.mark.parametrize("family", [f for f, info in FAMILIES.items() if info.levels])
def test_each_familys_registered_levels_hold_in_pytorch(family: str) -> None:
    """What a family's registry entry claims its dynamic files serve, checked on the module:
    levels of no one image (c3 20x30, c4 7x9, c5 2x5) run where the levels are free and
    fail where a bottom-up path ties them."""
    spec = resolve_spec(_family_neck(family), in_channels=LEVEL_CHANNELS.get(family, (8, 16, 32)),
                        out_channels=8)
    model = seeded_model(spec)
    x = [torch.randn(1, c, h, w) for c, (h, w) in zip(spec.in_channels,
                                                      [(20, 30), (7, 9), (2, 5)], strict=True)]
    if SERVED_LEVELS[family] == "independent":
        with torch.no_grad():
            outs = model(x)
        assert [tuple(o.shape[2:]) for o in outs[:3]] == [(20, 30), (7, 9), (2, 5)]
    else:
        with pytest.raises(RuntimeError, match=r"size of tensor|Sizes of tensors"), \
                torch.no_grad():
            model(x)
    assert FAMILIES[family].levels == SERVED_LEVELS[family]


@pytest.mark.parametrize("name", every_preset())
def test_every_preset_exports_and_verifies_at_its_default_size_with_no_flags(
        name: str, marked: pathlib.Path) -> None:
    """One export per preset (the dynamo exporter is the suite's biggest cost), checked
    for everything: names, dims, counts, verification, metadata, and that it names nothing
    of the machine (made from a folder, ``$HOME`` and ``$TMPDIR`` holding a marker; see
    tests/_privacy.py). retinaface_r50's 840x840 is no multiple of 32: it used to need
    --static."""
    path = marked / "work" / f"{name}.onnx"
    code, stdout, stderr = invoke("export", name, "--onnx", "-o", str(path), "--trials", "1",
                                  "--json")
    assert code == 0, stderr
    assert_quiet(stderr)
    data = json.loads(stdout)
    spec = get_spec(name)
    default = list(spec.input_size)
    assert data["input_size"] == default and data["written"] and path.is_file()
    assert data["precision"] == "fp32" and "every image H x W" in data["serves"]
    assert [t["name"] for t in data["inputs"]] == [f"c{3 + i}" for i in range(spec.num_inputs)]
    assert [t["name"] for t in data["outputs"]] == [f"p{3 + i}" for i in range(spec.num_levels)]
    # Each level's H and W is a dimension of its own: every image size is served.
    top = spec.input_strides[-1]  # 32, or 64 for a P6 neck (yolo5face_s6)
    assert data["inputs"][-1]["shape"] == ["batch", spec.in_channels[-1], f"H_div{top}",
                                           f"W_div{top}"]
    assert data["inputs"][0]["shape"][2:] == ["H_div8", "W_div8"]
    # A bottom-up Concat (the YOLO necks: the stride-2 conv's map first, as the authors
    # order it) makes the exporter write P4's size as the conv's: ceil(H_div8 / 2).
    assert data["outputs"][1]["shape"][2:] in (
        ["H_div16", "W_div16"], ["(((H_div8 - 1)//2)) + 1", "(((W_div8 - 1)//2)) + 1"])
    # The graph's own conv count equals fvcore's and torch.utils.flop_counter's, and the
    # graph on disk says so too.
    macs = data["conv_macs"]
    assert macs["onnx"] == macs["fvcore"] == macs["flop_counter"] > 0 and macs["match"]
    shapes = {n: list(t.shape) for n, t in zip(spec.input_names, make_inputs(spec), strict=True)}
    assert conv_macs(onnx.load(str(path)), shapes) == macs["onnx"]
    # Verified at the export size and two odd sizes (no multiples of the coarsest stride),
    # the second in batch 2.
    v = data["verification"]
    assert v["passed"] and v["cases"][0]["input_size"] == default
    assert [c["batch"] for c in v["cases"]] == [1, 1, 2]
    assert all(s % 2 == 1 for c in v["cases"][1:] for s in c["input_size"])
    for case in v["cases"]:
        for out in case["outputs"]:
            assert 0 < out["max_abs"] < 1e-4  # real float noise, far below the tolerance
            assert out["failed_elements"] == 0 and out["nonfinite_ort"] == 0
    meta = read_metadata(path)
    assert meta is not None and meta.neck == name and meta.dynamic
    assert meta.precision == "fp32" and meta.served_shapes.images == "any"
    # Exactly which sizes the file serves: levels free for the FPN families, tied to one
    # image's ceil(H/stride) sizes by PAFPN's bottom-up path.
    assert meta.served_shapes.levels == SERVED_LEVELS[spec.family]
    assert f"every image H x W from {top}x{top} up" in meta.serves_text()
    assert meta.spec.to_dict() == spec.to_dict()
    assert meta.flops == data["flops"] > 0
    assert meta.params == data["params"] == sum(p.numel() for p in
                                                seeded_model(spec).parameters())
    assert written(marked) == [path] and leaks([path]) == []


@pytest.mark.parametrize("name", ["retinaface_mnet", "mmdet_fpn"])
def test_dynamic_fpn_file_equals_pytorch_at_sizes_that_are_no_multiples_of_32(
        name: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / f"{name}.onnx"
    result = export_onnx(name, out, input_size=SMALL, options=VerifyOptions(trials=1))
    # verified at the export size and at 65x91 and 93x71 (batch 2): odd, non-square
    v = result.verification
    assert v is not None and v.passed and bool(v) and result.cross_check.agree
    assert [(c.case.input_size, c.case.batch) for c in v.cases] == [
        (SMALL, 1), ((65, 91), 1), ((93, 71), 2)]
    spec = get_spec(name)
    model = seeded_model(spec)
    session = open_session(out, "CPUExecutionProvider")
    # the sizes the old tied export refused with a broadcast error ("33 by 34")
    for size, batch in (((840, 840), 1), ((600, 1000), 1), ((333, 517), 2), ((97, 65), 3),
                        ((32, 33), 1)):
        x = make_inputs(spec, size, batch, seed=size[0])
        got = session.run(None, {n: t.numpy() for n, t in zip(spec.input_names, x,
                                                                strict=True)})
        with torch.no_grad():
            want = model(x)
        for g, t, (h, w) in zip(got, want, spec.level_sizes(size), strict=True):
            assert g.shape == (batch, spec.out_channels, h, w)
            np.testing.assert_allclose(g, t.numpy(), atol=1e-4, rtol=1e-4)
    # Each level's H and W are free: levels of no one image run too (c3 20x30, c4 7x9,
    # c5 2x5), as they do in PyTorch.
    x = [torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(7))
         for c, (h, w) in zip(spec.in_channels, [(20, 30), (7, 9), (2, 5)], strict=True)]
    got = session.run(None, {n: t.numpy() for n, t in zip(spec.input_names, x, strict=True)})
    with torch.no_grad():
        want = model(x)
    assert [g.shape[2:] for g in got[:3]] == [(20, 30), (7, 9), (2, 5)]
    for g, t in zip(got, want, strict=True):
        np.testing.assert_allclose(g, t.numpy(), atol=1e-4, rtol=1e-4)


def test_pafpn_file_serves_one_images_levels_and_says_so(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "p.onnx"
    result = export_onnx("scrfd_0.5g", out, input_size=(64, 64),
                         options=VerifyOptions(trials=1))
    assert "levels must be these sizes of one image" in result.metadata.serves_text()
    spec = get_spec("scrfd_0.5g")
    session = open_session(out, "CPUExecutionProvider")
    model = seeded_model(spec)
    x = make_inputs(spec, (333, 517), 2, seed=3)
    got = session.run(None, {n: t.numpy() for n, t in zip(spec.input_names, x, strict=True)})
    with torch.no_grad():
        np.testing.assert_allclose(got[0], model(x)[0].numpy(), atol=1e-4, rtol=1e-4)
    # levels of two different images: the bottom-up add cannot broadcast them
    bad = [x[0], x[1], torch.zeros(2, spec.in_channels[2], 7, 9)]
    with pytest.raises(Exception, match=r"(?i)broadcast|dimension|shape"):
        session.run(None, {n: t.numpy() for n, t in zip(spec.input_names, bad, strict=True)})


SCALE_NECK = """
import torch.nn.functional as F
from torch import nn

class ScaleFPN(nn.Module):
    # upsamples by a factor of 2, so it runs only where each level is twice the next
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)

    def forward(self, feats):
        outs = [conv(x) for conv, x in zip(self.lateral, feats)]
        for i in range(len(outs) - 2, -1, -1):
            outs[i] = outs[i] + F.interpolate(outs[i + 1], scale_factor=2.0)
        return tuple(outs)
"""


def test_custom_neck_that_runs_at_multiples_only_serves_multiples(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "scaleneck.py").write_text(SCALE_NECK)
    monkeypatch.chdir(tmp_path)
    neck = ["scaleneck:ScaleFPN", "--in-channels", "8,16,32", "--out-channels", "8"]
    code, stdout, stderr = invoke("export", *neck, "--input-size", "80", "-o", "a.onnx")
    assert code == 2 and stdout == ""
    assert "multiples of 32" in stderr and "--input-size 64x64 or 96x96" in stderr
    code, stdout, stderr = invoke("export", *neck, "--input-size", "64x96", "-o", "a.onnx",
                                  "--trials", "1", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert "multiples of 32" in data["serves"]
    assert data["inputs"][0]["shape"] == ["batch", 8, "4*H_div32", "4*W_div32"]
    assert [c["input_size"] for c in data["verification"]["cases"]] == [
        [64, 96], [96, 128], [128, 96]]


def test_conv_macs_from_graph_by_hand() -> None:
    # Grouped, strided conv: out 1x6x4x4, weight 6x2x3x3 (groups 2) -> 6*4*4 * 2*3*3 = 1728.
    weight = numpy_helper.from_array(np.zeros((6, 2, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, strides=[2, 2],
                            pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert conv_macs(model, {"x": [1, 4, 8, 8]}) == 1728
    assert conv_macs(model, {"x": [3, 4, 16, 8]}) == 3 * 6 * 8 * 4 * 18


# -- CLI, variants, static ---------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["pafpn", "--norm", "bn", "--out-channels", "24"],
    ["fpn", "--norm", "gn", "--gn-groups", "8", "--act", "relu"],
    # mmdetection's extra levels: max-pool P6/P7, and stride-2 convs with ReLU between
    ["mmdet_fpn", "--norm", "bn", "--out-channels", "32", "--extra-convs", "none"],
    ["mmdet_pafpn", "--norm", "gn", "--num-outs", "5", "--extra-convs", "on_lateral",
     "--relu-before-extra-convs", "true", "--act", "relu"],
])
def test_bn_and_gn_variants(args: list[str], tmp_path: pathlib.Path) -> None:
    out = tmp_path / "v.onnx"
    code, stdout, stderr = invoke("export", *args, "--onnx", "-o", str(out), "--input-size",
                                  "64x96", "--trials", "2", "--json")
    assert code == 0, stderr
    assert_quiet(stderr)
    data = json.loads(stdout)
    assert data["path"] == str(out) and data["written"] and data["dynamic"] is True
    assert data["opset"] == 18
    assert data["config"]["norm"] == args[2] and data["format"] == "onnx"
    macs = data["conv_macs"]
    assert macs["fvcore"] == macs["flop_counter"] == macs["onnx"] > 0 and macs["match"]
    assert [o["name"] for o in data["outputs"]] == [f"p{3 + i}" for i in range(
        len(data["config"]["strides"]))]
    ver = data["verification"]
    assert ver["passed"] is True and len(ver["cases"]) == 3
    assert {c["batch"] for c in ver["cases"]} == {1, 2}
    for case in ver["cases"]:
        assert case["seeds"] and len(case["seeds"]) == 2
        for o in case["outputs"]:
            assert o["passed"] and 0 < o["max_abs"] < 1e-4 and o["min_atol"] <= o["max_abs"]
    # The norm really is in the graph (a broken BN/GN export could not hide).
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ("InstanceNormalization" in ops) == (args[2] == "gn")


def test_static_export_of_a_size_that_is_no_stride_multiple(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "s.onnx"
    code, stdout, stderr = invoke("export", "retinaface_mnet", "--static", "--input-size",
                                  "72x100", "--batch", "2", "-o", str(out), "--opset", "20",
                                  "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["dynamic"] is False and data["opset"] == 20
    # ceil(72/8)=9, ceil(100/8)=13; ceil(72/32)=3, ceil(100/32)=4
    assert data["inputs"][0]["shape"] == [2, 64, 9, 13]
    assert data["outputs"][2]["shape"] == [2, 64, 3, 4]
    assert [c["input_size"] for c in data["verification"]["cases"]] == [[72, 100]]
    assert data["verification"]["cases"][0]["batch"] == 2
    assert onnx.load(str(out)).opset_import[0].version == 20


def test_tables_on_stdout_and_nothing_on_stderr(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "t.onnx"
    code, stdout, stderr = invoke("export", "scrfd_0.5g", "--input-size", "64", "-o", str(out),
                                  "--trials", "1")
    assert code == 0
    assert stderr == ""
    assert "conv MACs" in stdout and "equal" in stdout and "PASS" in stdout
    assert "(fvcore)" in stdout and "(torch.utils.flop_counter)" in stdout
    assert "(ONNX graph)" in stdout
    assert "H_div32" in stdout and "written" in stdout
    assert "every image H x W from 32x32 up" in stdout and "SQNR" in stdout


def test_counts_that_differ_refuse_the_export_with_all_three(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.analysis.memory

    real = necktool.analysis.memory.conv_flop_count
    monkeypatch.setattr(necktool.analysis.memory, "conv_flop_count",
                        lambda *a, **k: real(*a, **k) + 2)  # one MAC too many per conv
    dest = tmp_path / "d.onnx"
    code, stdout, stderr = invoke("export", "fpn", "--input-size", "64", "-o", str(dest))
    assert code == 1 and stdout == ""
    assert "conv multiply-adds differ" in stderr and "from torch.utils.flop_counter" in stderr
    assert "in the ONNX graph" in stderr and "from fvcore" in stderr
    assert not dest.exists() and leftovers(tmp_path) == []


def test_bad_opset_and_provider(tmp_path: pathlib.Path) -> None:
    code, _, stderr = invoke("export", "fpn", "--opset", "11", "-o", str(tmp_path / "a.onnx"))
    assert code == 2 and "--opset" in stderr
    code, _, stderr = invoke("export", "fpn", "--provider", "nosuch", "-o",
                             str(tmp_path / "a.onnx"))
    assert code == 2 and "provider 'nosuch' is not available" in stderr
    assert not list(tmp_path.iterdir())


def test_help_does_not_import_torch() -> None:
    probe = ("import sys\nfrom typer.testing import CliRunner\nimport necktool.cli\n"
             "r = CliRunner().invoke(necktool.cli.app, ['export', '--help'])\n"
             "print(r.exit_code, 'torch' in sys.modules, '0.0001' in r.stdout)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "200"}).stdout.split()
    assert out == ["0", "False", "True"]


# -- weights -------------------------------------------------------------------------------
def _checkpoint(tmp_path: pathlib.Path, state: dict[str, torch.Tensor], name: str) -> str:
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def test_weights_round_trip_with_prefix(tmp_path: pathlib.Path) -> None:
    spec = get_spec("retinaface_mnet")
    trained = seeded_model(spec, seed=7)  # differs from the default seed 0
    # A Pytorch_Retinaface-style checkpoint: DataParallel 'module.', neck under 'fpn.'.
    state = {f"module.fpn.{k}": v for k, v in trained.state_dict().items()}
    state["module.body.conv1.weight"] = torch.zeros(8, 3, 3, 3)
    state["module.ClassHead.0.conv1x1.bias"] = torch.zeros(4)
    ckpt = _checkpoint(tmp_path, state, "mobilenet0.25_Final.pth")
    out = tmp_path / "w.onnx"
    code, stdout, stderr = invoke("export", "retinaface_mnet", "--weights", ckpt, "--prefix",
                                  "fpn.", "--input-size", "64", "-o", str(out), "--trials", "1",
                                  "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["weights"]["source"] == "file"
    assert data["weights"]["stripped"] == ["module.", "fpn."]
    assert len(data["weights"]["sha256"]) == 64
    # The file computes the checkpoint's network, not the seed-0 one.
    x = [torch.randn(1, c, s, s) for c, s in zip(spec.in_channels, (8, 4, 2), strict=True)]
    got = open_session(out, "CPUExecutionProvider").run(
        None, {n: t.numpy() for n, t in zip(spec.input_names, x, strict=True)})
    with torch.no_grad():
        want = trained(x)
        other = seeded_model(spec, seed=0)(x)
    np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-4, rtol=1e-4)
    assert float((want[0] - other[0]).abs().max()) > 0.1
    # The file names the checkpoint (its name and hash, no folder); verify opens no file the
    # user did not name, so it asks for it, then rebuilds the neck from it.
    assert data["weights"]["path"] == "mobilenet0.25_Final.pth"
    code, stdout, stderr = invoke("verify", str(out), "--trials", "1")
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "'mobilenet0.25_Final.pth'" in stderr and "--weights PATH --prefix fpn." in stderr
    code, stdout, stderr = invoke("verify", str(out), "--trials", "1", "--weights", ckpt,
                                  "--prefix", "fpn.")
    assert code == 0, stderr
    assert "file mobilenet0.25_Final.pth" in stdout and "PASS" in stdout


def test_load_weights_strips_module_prefix_alone(tmp_path: pathlib.Path) -> None:
    spec = get_spec("scrfd_0.5g")
    trained = seeded_model(spec, seed=3)
    ckpt = _checkpoint(tmp_path, {f"module.{k}": v for k, v in trained.state_dict().items()},
                       "m.pt")
    model = seeded_model(spec, seed=0)
    source = load_weights(model, ckpt)
    assert source.stripped == ("module.",) and source.prefix is None
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def _bad_states() -> list[tuple[str, object]]:
    return [("missing", "output1.0.weight"), ("unexpected", "output9.0.weight"),
            ("shape", "merge1.0.weight")]


@pytest.mark.parametrize(("kind", "key"), _bad_states())
def test_bad_weights_give_a_report_and_exit_2(kind: str, key: str,
                                              tmp_path: pathlib.Path) -> None:
    state = {f"fpn.{k}": v for k, v in seeded_model(get_spec("fpn")).state_dict().items()}
    if kind == "missing":
        del state[f"fpn.{key}"]
    elif kind == "unexpected":
        state[f"fpn.{key}"] = torch.zeros(1)
    else:
        state[f"fpn.{key}"] = torch.zeros(64, 32, 3, 3)
    ckpt = _checkpoint(tmp_path, state, "bad.pth")
    out = tmp_path / "x.onnx"
    code, stdout, stderr = invoke("export", "fpn", "--weights", ckpt, "--prefix", "fpn.",
                                  "-o", str(out))
    assert code == 2 and stdout == ""
    assert key in stderr and "does not fit the neck" in stderr
    expected = {"missing": "missing keys (in the neck, not in the file): 1",
                "unexpected": "unexpected keys (in the file, not in the neck): 1",
                "shape": "merge1.0.weight: file (64, 32, 3, 3) vs neck (64, 64, 3, 3)"}[kind]
    assert expected in stderr
    assert not out.exists() and leftovers(tmp_path) == []
    with pytest.raises(WeightsError) as info:
        load_weights(seeded_model(get_spec("fpn")), ckpt, prefix="fpn.")
    report = info.value.report
    assert isinstance(report, WeightsReport) and not report.ok
    counts = (len(report.missing), len(report.unexpected), len(report.mismatched))
    assert counts == {"missing": (1, 0, 0), "unexpected": (0, 1, 0), "shape": (0, 0, 1)}[kind]


def test_unreadable_weights_and_prefix_hint(tmp_path: pathlib.Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    code, _, stderr = invoke("export", "fpn", "--weights", str(junk), "-o",
                             str(tmp_path / "a.onnx"))
    assert code == 2 and "cannot read weights file" in stderr
    code, _, stderr = invoke("export", "fpn", "--weights", str(tmp_path / "w.safetensors"),
                             "-o", str(tmp_path / "a.onnx"))
    assert code == 2 and "supported: .pt, .pth" in stderr
    state = {f"fpn.{k}": v for k, v in seeded_model(get_spec("fpn")).state_dict().items()}
    ckpt = _checkpoint(tmp_path, state, "noprefix.pth")
    code, _, stderr = invoke("export", "fpn", "--weights", ckpt, "-o", str(tmp_path / "a.onnx"))
    assert code == 2 and "try --prefix fpn." in stderr


# -- nothing lost ----------------------------------------------------------------------------
def test_unwritable_destinations_fail_before_work(tmp_path: pathlib.Path) -> None:
    code, stdout, stderr = invoke("export", "fpn", "-o", str(tmp_path / "nodir" / "a.onnx"))
    assert code == 2 and stdout == "" and "does not exist" in stderr
    code, _, stderr = invoke("export", "fpn", "-o", str(tmp_path))
    assert code == 2 and "is a directory" in stderr


def test_no_permission_fails_before_work(tmp_path: pathlib.Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.deploy.export

    locked = tmp_path / "locked"
    locked.mkdir()
    real_mkstemp = tempfile.mkstemp

    def denied(*args: Any, **kwargs: Any) -> tuple[int, str]:
        if pathlib.Path(kwargs.get("dir") or ".").resolve() == locked:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("counted the neck before checking the destination")

    # chmod does not bind root (the usual CI user), so deny the write probe itself.
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    import necktool.analysis.profiling

    monkeypatch.setattr(necktool.analysis.profiling, "analyze", no_work)
    code, stdout, stderr = invoke("export", "fpn", "-o", str(locked / "a.onnx"))
    assert code == 2 and stdout == ""
    assert "a.onnx: cannot write the ONNX file: permission denied" in stderr
    assert list(locked.iterdir()) == []


def test_failed_verification_leaves_existing_file_untouched(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "keep.onnx"
    dest.write_bytes(b"previous good export")
    # atol = rtol = 0 cannot pass: fp32 kernels differ by ~1e-6.
    code, stdout, stderr = invoke("export", "scrfd_0.5g", "--input-size", "64", "-o", str(dest),
                                  "--atol", "0", "--rtol", "0", "--trials", "1", "--json")
    assert code == 1
    data = json.loads(stdout)
    assert data["verification"]["passed"] is False and data["written"] is False
    assert all(o["min_atol"] > 0 for c in data["verification"]["cases"] for o in c["outputs"])
    assert "verification failed" in stderr and "left untouched" in stderr
    assert_quiet(stderr)
    assert dest.read_bytes() == b"previous good export"
    assert leftovers(tmp_path) == []


def test_broken_model_fails_verification(tmp_path: pathlib.Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.deploy.verify as verify_mod

    real = verify_mod._run_torch

    def off_by_half(model: torch.nn.Module, inputs: list[torch.Tensor]) -> list[np.ndarray]:
        return [o + 0.5 for o in real(model, inputs)]  # a model that disagrees with its export

    monkeypatch.setattr(verify_mod, "_run_torch", off_by_half)
    dest = tmp_path / "b.onnx"
    result = export_onnx("fpn", dest, input_size=(64, 64), options=VerifyOptions(trials=1))
    assert not result and not result.written  # falsy, no exception
    v = result.verification
    assert v is not None and not v and not v.passed
    for _, out in v.checks:
        assert out.max_abs == pytest.approx(0.5, abs=1e-4)
        assert out.failed_elements == out.elements
        assert out.min_atol == pytest.approx(0.5 - 1e-4 * 0.5, abs=2e-3)
    assert "FAIL: 9 of 9" in v.summary()
    assert not dest.exists() and leftovers(tmp_path) == []


def test_exporter_failure_is_one_line_and_leaves_nothing(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.onnx

    def boom(*args: object, **kwargs: object) -> None:
        print("[torch.onnx] chatter that must not leak")
        raise RuntimeError("unsupported operator aten::frobnicate\nlong traceback text")

    monkeypatch.setattr(torch.onnx, "export", boom)
    dest = tmp_path / "e.onnx"
    dest.write_bytes(b"old")
    with pytest.raises(ExportError, match="aten::frobnicate"):
        export_onnx("fpn", dest, input_size=(64, 64))
    code, stdout, stderr = invoke("export", "fpn", "--input-size", "64", "-o", str(dest))
    # One line on stderr: the error, quoting the exporter's last words; nothing on stdout.
    assert code == 1 and stdout == ""
    assert stderr.count("\n") == 1
    assert stderr.startswith("necktool: error: the ONNX exporter failed: RuntimeError: "
                             "unsupported operator aten::frobnicate")
    assert "long traceback text" not in stderr
    assert dest.read_bytes() == b"old" and leftovers(tmp_path) == []
