"""Real checkpoint layouts through --weights, export + verification, and ``necktool inspect``.

Every checkpoint here is written by the test with torch.save in the layout its origin
uses: mmdetection/mmengine (``meta`` with plain values, ``state_dict`` with the neck under
``neck.``, ``optimizer`` with tensors), Pytorch_Retinaface (``module.fpn.``, DataParallel)
and a bare state dict.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
from typing import Any

import numpy as np
import pytest
import torch
from _presets import every_preset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import necktool.cli
from necktool import NeckSpec
from necktool.deploy.model import load_weights
from necktool.deploy.runtimes.runners import open_session
from necktool.detector.identify import find_necks, identify_checkpoint, layout_of
from necktool.errors import WeightsError
from necktool.necks.weights import read_checkpoint, seeded_model
from necktool.spec.registry import get_spec, resolve_spec

#: Graphs of structures exported before come from the session's export templates (files
#: byte for byte the cold export's): the exporter is not what these tests are about.
pytestmark = pytest.mark.usefixtures("shared_templates")

SIZE = "64x96"  # multiples of 32; small enough for quick exports


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(necktool.cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


def mmdet_checkpoint(path: pathlib.Path, neck: dict[str, torch.Tensor]) -> pathlib.Path:
    """An mmdetection/mmengine-style file: meta, state_dict (a whole detector), optimizer."""
    state = {"backbone.stem.0.conv.weight": torch.randn(8, 3, 3, 3),
             "backbone.stem.0.bn.running_mean": torch.zeros(8)}
    state.update({f"neck.{k}": v for k, v in neck.items()})
    state["bbox_head.cls_convs.0.0.conv.weight"] = torch.randn(4, 4, 3, 3)
    torch.save({
        "meta": {"mmdet_version": "2.7.0", "CLASSES": ("face",), "epoch": 640, "iter": 12800,
                 "config": "model = dict(type='SCRFD', neck=dict(type='PAFPN'))",
                 "time": "Fri May 14 10:00:00 2021", "lr": (0.01, 0.001)},
        "state_dict": state,
        "optimizer": {"state": {0: {"momentum_buffer": torch.randn(8, 3, 3, 3)}},
                      "param_groups": [{"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                                        "params": [0, 1, 2]}]},
    }, path)
    return path


def run_onnx(path: pathlib.Path, spec: NeckSpec, feats: list[torch.Tensor]) -> list[np.ndarray]:
    session = open_session(path, "CPUExecutionProvider")
    return session.run(None, {n: t.numpy() for n, t in zip(spec.input_names, feats,
                                                             strict=True)})


def test_mmdetection_checkpoint_through_export_and_verify(tmp_path: pathlib.Path) -> None:
    spec = get_spec("insightface_scrfd_2.5g")
    trained = seeded_model(spec, seed=11)
    ckpt = mmdet_checkpoint(tmp_path / "scrfd_2.5g.pth", trained.state_dict())
    out = tmp_path / "scrfd.onnx"
    code, stdout, stderr = invoke("export", "insightface_scrfd_2.5g", "--weights", str(ckpt),
                                  "--prefix", "neck.", "--input-size", SIZE, "-o", str(out),
                                  "--trials", "1", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["weights"]["stripped"] == ["neck."] and data["verification"]["passed"]
    feats = [torch.randn(1, c, h, w) for c, (h, w) in
             zip(spec.in_channels, spec.input_sizes((64, 96)), strict=True)]
    with torch.no_grad():
        want = trained(feats)
    for got, ref in zip(run_onnx(out, spec, feats), want, strict=True):
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)
    # verify never opens the weights file the metadata names on its own: it asks for it,
    # then rebuilds the neck from it (the recorded hash must match)
    code, stdout, stderr = invoke("verify", str(out), "--trials", "1")
    assert code == 2 and "--weights" in stderr and stdout == ""
    code, stdout, stderr = invoke("verify", str(out), "--trials", "1", "--weights", str(ckpt),
                                  "--prefix", "neck.")
    assert code == 0, stderr
    assert "PASS" in stdout
    # Without --prefix: the hint names neck. (the keys there fit)
    code, _, stderr = invoke("export", "insightface_scrfd_2.5g", "--weights", str(ckpt),
                             "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and "the keys under 'neck.' fit: try --prefix neck." in stderr


def test_export_takes_the_neck_from_the_weights(tmp_path: pathlib.Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_spec("insightface_scrfd_10g")
    ckpt = mmdet_checkpoint(tmp_path / "scrfd_10g.pth", seeded_model(spec, 5).state_dict())
    monkeypatch.chdir(tmp_path)
    # A project config here too: with --weights, no NECK means the checkpoint's neck.
    (tmp_path / "necktool.toml").write_text('[[budget]]\nneck = "scrfd_0.5g"\n')
    # The command: no NECK, the prefix given ...
    code, stdout, stderr = invoke("export", "--weights", str(ckpt), "--prefix", "neck.",
                                  "--onnx", "--input-size", SIZE, "--trials", "1", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["neck"] == "insightface_scrfd_10g" and data["config"] == \
        spec.replace(input_size=(64, 96)).to_dict()
    assert pathlib.Path(data["path"]).name == "insightface_scrfd_10g.onnx"
    assert data["weights"]["prefix"] == "neck." and data["verification"]["passed"]
    # ... and the prefix found too; a verify of a file without metadata takes --weights
    code, stdout, stderr = invoke("export", "--weights", str(ckpt), "--input-size", SIZE,
                                  "-o", "b.onnx", "--trials", "1", "--no-verify", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["weights"]["prefix"] == "neck."
    assert not (tmp_path / "scrfd_0.5g.onnx").exists()  # the config's entry: not exported
    import onnx

    model = onnx.load("b.onnx")
    del model.metadata_props[:]
    onnx.save(model, "bare.onnx")
    code, _, stderr = invoke("verify", "bare.onnx", "--trials", "1")
    assert code == 2 and "or --weights FILE" in stderr
    code, stdout, stderr = invoke("verify", "bare.onnx", "--weights", str(ckpt), "--trials", "1",
                                  "--input-size", SIZE)
    assert code == 0, stderr


def test_export_without_neck_weights_or_config_is_exit_2(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config here or above: nothing to export
    code, stdout, stderr = invoke("export")
    assert code == 2 and stdout == ""
    assert stderr.startswith("necktool: error: no NECK given")
    assert "--weights FILE" in stderr and "necktool inspect" in stderr


def test_data_parallel_and_bare_checkpoints(tmp_path: pathlib.Path) -> None:
    spec = get_spec("mmdet_fpn").replace(in_channels=(16, 32, 64), out_channels=8)
    trained = seeded_model(spec, seed=2)
    dp = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, dp)
    bare = tmp_path / "bare.pt"
    torch.save(trained.state_dict(), bare)
    for path, stripped in ((dp, ("module.",)), (bare, ())):
        model = seeded_model(spec, seed=0)
        source = load_weights(model, path)
        assert source.stripped == stripped
        for k, v in trained.state_dict().items():
            assert torch.equal(model.state_dict()[k], v)
        found = identify_checkpoint(path)
        assert found.spec.in_channels == (16, 32, 64) and found.spec.num_levels == 5
        assert found.load_prefix is None and found.presets == ()
    code, stdout, stderr = invoke("export", "--weights", str(dp), "--input-size", SIZE, "-o",
                                  str(tmp_path / "dp.onnx"), "--trials", "1", "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["weights"]["stripped"] == ["module."]
    assert [o["name"] for o in data["outputs"]] == ["p3", "p4", "p5", "p6", "p7"]


def test_pytorch_retinaface_checkpoint_is_found_under_module_fpn(tmp_path: pathlib.Path) -> None:
    trained = seeded_model(get_spec("retinaface_mnet"), seed=4)
    path = tmp_path / "mobilenet0.25_Final.pth"
    state = {f"module.fpn.{k}": v for k, v in trained.state_dict().items()}
    state["module.body.stage1.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    state["module.ssh1.conv3X3.0.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(state, path)
    code, stdout, stderr = invoke("inspect", str(path), "--json")
    assert code == 0, stderr
    d = json.loads(stdout)
    assert (d["family"], d["prefix"], d["in_channels"], d["out_channels"], d["num_outs"],
            d["norm"]) == ("fpn", "module.fpn.", [64, 128, 256], 64, 3, "bn")
    assert d["presets"] == ["retinaface_mnet", "fpn"]
    assert d["command"] == "necktool profile retinaface_mnet" and d["bias"] is False
    for prefix in ("fpn.", "module.fpn."):  # both select it (module. is stripped first)
        model = seeded_model(get_spec("retinaface_mnet"))
        assert load_weights(model, path, prefix).stripped == ("module.", "fpn.")


def _save_neck(tmp_path: pathlib.Path, spec: NeckSpec, layout: str) -> pathlib.Path:
    state = seeded_model(spec, seed=1).state_dict()
    path = tmp_path / f"{layout}.pth"
    if layout == "mmdet":
        return mmdet_checkpoint(path, state)
    prefix = {"retinaface": "module.fpn.", "bare": ""}[layout]
    torch.save({f"{prefix}{k}": v for k, v in state.items()}, path)
    return path


def _command_spec(command: str) -> NeckSpec:
    """The spec that a printed ``necktool profile NAME --flag value ...`` line builds."""
    from necktool.spec.fields import FIELDS

    words = shlex.split(command)
    assert words[:2] == ["necktool", "profile"]
    flags = {f.flag: f for f in FIELDS}
    overrides: dict[str, Any] = {}
    for flag, text in zip(words[3::2], words[4::2], strict=True):
        overrides[flags[flag].name] = flags[flag].parse_text(text)
    return resolve_spec(words[2], **overrides)


@pytest.mark.parametrize("name", every_preset())
def test_inspect_recognises_every_preset(name: str, tmp_path: pathlib.Path) -> None:
    spec = get_spec(name)
    layout = {"fpn": "retinaface", "pafpn": "bare"}.get(spec.family, "mmdet")
    path = _save_neck(tmp_path, spec, layout)
    code, stdout, stderr = invoke("inspect", str(path), "--json")
    assert code == 0, stderr
    d = json.loads(stdout)
    assert {"family", "prefix", "in_channels", "out_channels", "num_outs", "norm", "presets",
            "command"} <= set(d)
    assert d["family"] == spec.family
    assert d["prefix"] == {"retinaface": "module.fpn.", "bare": "", "mmdet": "neck."}[layout]
    assert (d["in_channels"], d["out_channels"], d["num_outs"], d["norm"]) == \
        (list(spec.in_channels), spec.out_channels, spec.num_levels, str(spec.norm))
    assert name in d["presets"]
    assert layout_of(_command_spec(d["command"])) == layout_of(spec)


@pytest.mark.parametrize(("family", "cin", "out", "norm", "outs", "mode"), [
    ("fpn", (24, 40, 96, 160), 128, "bn", None, None),
    ("pafpn", (16, 24), 20, "gn", None, None),
    ("pafpn", (16, 24, 32), 12, "none", None, None),
    ("mmdet_fpn", (256, 512, 1024, 2048), 256, "none", 6, "on_input"),
    ("mmdet_fpn", (40, 80, 160), 64, "gn", 5, "on_output"),
    ("mmdet_pafpn", (32, 64, 128), 32, "bn", 5, "on_lateral"),
    ("mmdet_pafpn", (96, 192, 384), 48, "none", 3, "none"),
])
def test_inspect_reads_any_width_and_prints_a_command_that_builds_it(
        family: str, cin: tuple[int, ...], out: int, norm: str, outs: int | None,
        mode: str | None, tmp_path: pathlib.Path) -> None:
    fields: dict[str, Any] = {"in_channels": cin, "out_channels": out, "norm": norm}
    if outs is not None:
        fields.update(num_outs=outs, extra_convs=mode)
    spec = get_spec(family, **fields)
    path = _save_neck(tmp_path, spec, "mmdet" if family.startswith("mmdet") else "bare")
    code, stdout, stderr = invoke("inspect", str(path), "--json")
    assert code == 0, stderr
    d = json.loads(stdout)
    assert (d["family"], d["in_channels"], d["out_channels"], d["num_outs"], d["norm"],
            d["bias"]) == (family, list(cin), out, spec.num_levels, norm, norm == "none")
    assert d["presets"] == []
    built = _command_spec(d["command"])
    assert layout_of(built) == layout_of(spec)  # the command builds a neck these weights fit
    model = seeded_model(built)
    load_weights(model, path, d["prefix"] or None)  # strictly
    if mode == "on_lateral":
        assert any("on_lateral hold the same tensors" in n for n in d["notes"])
    code, stdout, _ = invoke("inspect", str(path))
    assert code == 0 and d["command"] in stdout and family in stdout


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(["fpn", "pafpn", "mmdet_fpn", "mmdet_pafpn"]),
    cin=st.lists(st.integers(1, 64), min_size=2, max_size=5),
    out=st.integers(1, 64),
    norm=st.sampled_from(["gn", "bn", "none"]),
    extra=st.integers(0, 1),
    mode=st.sampled_from(["none", "on_input", "on_lateral", "on_output"]),
    prefix=st.sampled_from(["", "neck.", "fpn.", "module.fpn.", "model.detector.neck."]),
)
def test_any_neck_is_found_with_its_channels(family: str, cin: list[int], out: int, norm: str,
                                             extra: int, mode: str, prefix: str) -> None:
    fields: dict[str, Any] = {"in_channels": tuple(cin), "out_channels": out, "norm": norm}
    if family.startswith("mmdet"):
        fields.update(num_outs=len(cin) + extra, extra_convs=mode)
    spec = get_spec(family, **fields)
    shapes = {prefix + k: s for k, s in layout_of(spec).items()}
    if prefix:  # a whole detector: other parts beside the neck
        shapes["head.cls.weight"] = (2, out, 1, 1)
    found, _ = find_necks(shapes)
    assert len(found) == 1
    f = found[0]
    assert (f.prefix, f.spec.family, f.spec.in_channels, f.spec.out_channels, f.spec.norm) == \
        (prefix, family, tuple(cin), out, spec.norm)
    if not (family.startswith("mmdet") and mode == "none"):  # max-pool levels hold nothing
        assert f.spec.num_levels == spec.num_levels
    assert layout_of(f.spec) == layout_of(spec)


def test_unrecognisable_files_list_their_key_groups(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "detector.pth"
    mmdet_checkpoint(path, {"weird.0.weight": torch.zeros(2, 2)})
    code, stdout, stderr = invoke("inspect", str(path))
    assert code == 2 and stdout == ""
    assert stderr.startswith("necktool: error: no neck necktool recognises in")
    assert "top-level keys: meta, state_dict, optimizer (weights under 'state_dict')" in stderr
    assert "key groups: backbone. (2), neck. (1), bbox_head. (1)" in stderr
    assert "Traceback" not in stderr
    # A neck-like layout whose shapes do not add up says why
    spec = get_spec("insightface_scrfd_10g")
    state = dict(seeded_model(spec).state_dict())
    state["fpn_convs.1.conv.weight"] = torch.zeros(56, 12, 3, 3)
    torch.save(state, tmp_path / "broken.pth")
    code, _, stderr = invoke("inspect", str(tmp_path / "broken.pth"))
    assert code == 2 and "'fpn_convs.1.conv.weight' has shape (56, 12, 3, 3)" in stderr
    with pytest.raises(WeightsError, match="no neck necktool recognises"):
        identify_checkpoint(tmp_path / "broken.pth")
    code, _, stderr = invoke("inspect", str(tmp_path / "notes.txt"))
    assert code == 2 and "supported: .pt, .pth, .onnx" in stderr


def test_the_safe_loader_refusal_is_reported_and_nothing_runs(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "unsafe.pth"
    torch.save({"meta": {"hook": Payload()}, "state_dict": {"a": torch.zeros(1)}}, path)
    for args in (["inspect", str(path)], ["export", "--weights", str(path)],
                 ["export", "fpn", "--weights", str(path), "-o", str(tmp_path / "a.onnx")]):
        code, _, stderr = invoke(*args)
        assert code == 2 and "refused to load" in stderr
        assert "weights_only=True" in stderr and "pathlib.Path" in stderr
        assert "never loads a checkpoint less safely" in stderr
    assert not marker.exists()
    with pytest.raises(WeightsError):
        read_checkpoint(path)


def test_inspect_reads_an_exported_onnx_file(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "fpn.onnx"
    code, _, stderr = invoke("export", "mmdet_fpn", "--extra-convs", "none", "--input-size",
                             SIZE, "-o", str(out), "--no-verify")
    assert code == 0, stderr
    code, stdout, stderr = invoke("inspect", str(out), "--json")
    assert code == 0, stderr
    d = json.loads(stdout)
    assert (d["kind"], d["family"], d["prefix"], d["num_outs"], d["presets"]) == \
        ("onnx", "mmdet_fpn", None, 5, [])
    assert d["extra_levels"] == {"levels": ["P6", "P7"], "extra_convs": "none"}
    assert d["command"] == "necktool profile mmdet_fpn --extra-convs none --input-size 64x96"
    assert d["export"]["input_size"] == [64, 96] and d["export"]["dynamic"] is True
    code, stdout, _ = invoke("inspect", str(out))
    assert code == 0 and "P6, P7 extra, none" in stdout
    bad = tmp_path / "plain.onnx"
    import onnx

    model = onnx.load(str(out))
    del model.metadata_props[:]
    onnx.save(model, str(bad))
    code, _, stderr = invoke("inspect", str(bad))
    assert code == 2 and "carries no necktool metadata" in stderr


def test_mmdet_flags_through_the_cli() -> None:
    code, stdout, stderr = invoke("profile", "mmdet_fpn", "--num-outs", "4", "--extra-convs",
                                  "on_output", "--relu-before-extra-convs", "true",
                                  "--input-size", "128", "--json")
    assert code == 0, stderr
    cfg = json.loads(stdout)["config"]
    assert (cfg["num_outs"], cfg["extra_convs"], cfg["relu_before_extra_convs"]) == \
        (4, "on_output", True)
    for args, message in [
        (["--relu-before-extra-convs", "maybe"], "expected true or false, got 'maybe'"),
        (["--extra-convs", "on_top"], "Invalid value for '--extra-convs'"),
        (["--num-outs", "9"], "up to 6"),
        (["--num-outs", "2"], "num_outs=2 is fewer than the 3 input levels"),
    ]:
        code, stdout, stderr = invoke("profile", "mmdet_fpn", *args)
        assert code == 2 and stdout == "" and message in stderr, stderr
        assert stderr.count("\n") == 1
    code, _, stderr = invoke("profile", "scrfd_2.5g", "--extra-convs", "none")
    assert code == 2 and "families that take it: mmdet_fpn, mmdet_pafpn" in stderr


def test_the_reproduce_command_never_repeats_what_the_rule_gives() -> None:
    """An exported file's spec holds the resolved GroupNorm groups (10 for 40 channels);
    the command that reproduces it must not pin them (--gn-groups 10), but must keep a
    value the rule would not give."""
    from necktool.spec.registry import get_spec, reproduce_command

    spec = get_spec("scrfd_2.5g")
    resolved = dataclasses.replace(spec, gn_groups=spec.resolved_gn_groups)
    assert reproduce_command(resolved, "scrfd_2.5g") == "necktool profile scrfd_2.5g"
    assert reproduce_command(resolved) == \
        "necktool profile pafpn --in-channels 48,48,80 --out-channels 40"
    other = dataclasses.replace(spec, gn_groups=5)
    assert reproduce_command(other, "scrfd_2.5g") == "necktool profile scrfd_2.5g --gn-groups 5"
