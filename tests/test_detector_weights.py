"""--weights DET.onnx and verify --against DET.onnx (necktool.detector.weights/compare).

A neck loaded from a detector file must compute what the torch model the file was
exported from computes (its neck has known weights); a detector with one neck weight
changed must fail verification, naming the level.
"""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import onnx
import pytest
import torch
from detectors import SIZE, VARIANTS, suite
from typer.testing import CliRunner

from necktool.artifact.metadata import read_metadata
from necktool.cli import app
from necktool.deploy.against import verify_against
from necktool.deploy.model import load_weights
from necktool.detector import find_neck, load_detector
from necktool.detector.weights import identity_variance
from necktool.errors import WeightsError
from necktool.necks.build import build_neck

runner = CliRunner()


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "scrfd_2.5g"])
def test_weights_from_a_detector_reproduce_its_neck(name: str) -> None:
    s = suite()
    path = s.files[name]
    spec = find_neck(load_detector(path)).spec
    neck = build_neck(spec)
    source = load_weights(neck, path)
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source.path == str(path.resolve())
    assert ("folded" in (source.note or "")) == (VARIANTS[name][2] == "folded")
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, c, SIZE[0] // st, SIZE[1] // st, generator=gen)
             for c, st in zip(spec.in_channels, (8, 16, 32), strict=True)]
    with torch.no_grad():
        want = s.models[name].neck(feats)
        got = neck(feats)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_folded_batchnorm_is_the_identity_exactly() -> None:
    bn = torch.nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_var.fill_(float(identity_variance(bn.eps)))
        bn.bias.copy_(torch.tensor([0.5, -1.0, 3.0, 0.0]))
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(bn(x), x + bn.bias.view(1, -1, 1, 1))


def test_a_neck_that_does_not_fit_is_one_line() -> None:
    with pytest.raises(WeightsError, match="does not fit"):
        load_weights(build_neck("fpn"), suite().files["scrfd_dedup"])
    with pytest.raises(WeightsError, match="--prefix selects a neck inside a checkpoint"):
        load_weights(build_neck("fpn"), suite().files["retinaface_ts"], prefix="fpn.")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, pathlib.Path]:
    """``necktool export --weights DET.onnx`` (no NECK: the neck the detector holds)."""
    det = suite().files["scrfd_dedup"]
    out = tmp_path_factory.mktemp("export") / "neck.onnx"
    result = runner.invoke(app, ["export", "--weights", str(det), "-o", str(out), "--static",
                                 "--input-size", "128x128"])
    assert result.exit_code == 0, result.output
    return det, out


def test_the_exported_neck_records_the_detector_and_its_hash(
        exported: tuple[pathlib.Path, pathlib.Path]) -> None:
    det, out = exported
    meta = read_metadata(out)
    assert meta is not None and meta.spec.family == "mmdet_pafpn"
    assert meta.weights.path == str(det.resolve())
    assert meta.weights.sha256 == hashlib.sha256(det.read_bytes()).hexdigest()


def _perturbed(det: pathlib.Path, weight: str, target: pathlib.Path) -> pathlib.Path:
    model = onnx.load(str(det))
    init = next(i for i in model.graph.initializer if i.name == weight)
    array = onnx.numpy_helper.to_array(init).copy()
    array[0, 0, 1, 1] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(array, weight))
    onnx.save(model, str(target))
    return target


def test_verify_against_passes_and_a_perturbed_weight_fails_naming_the_level(
        exported: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path) -> None:
    det, neck = exported
    ok = runner.invoke(app, ["verify", str(neck), "--against", str(det), "--format", "json"])
    assert ok.exit_code == 0, ok.output
    report = verify_against(det, neck_file=neck)
    assert report and {r for r, _, _ in report.rows} == {"pytorch", "onnx"}
    assert all(c.max_abs < 1e-4 for _, _, c in report.rows)
    # pafpn_convs.0 makes P4 alone: the neck exported from the original weights now
    # differs there (and only there); PyTorch, taking the weights from the changed file,
    # still matches it.
    bad = _perturbed(det, "neck.pafpn_convs.0.conv.weight", tmp_path / "bad.onnx")
    failed = runner.invoke(app, ["verify", str(neck), "--against", str(bad)])
    assert failed.exit_code == 1
    assert "P4 (onnx) over tolerance" in failed.stderr
    report = verify_against(bad, neck_file=neck)
    assert [c.name for r, _, c in report.rows if not c.passed] == ["P4"]
    assert all(c.passed for r, _, c in report.rows if r == "pytorch")


def test_verify_with_detector_weights_and_no_model(tmp_path: pathlib.Path) -> None:
    det = suite().files["retinaface_bn_dynamic"]
    result = runner.invoke(app, ["verify", "--weights", str(det)])
    assert result.exit_code == 0, result.output
    assert "P5" in result.stdout and "PASS" in result.stdout
    # --images names a directory of images; an empty one is bad input
    other = runner.invoke(app, ["verify", "--weights", str(det), "--images", str(tmp_path)])
    assert other.exit_code == 2 and "holds no .png" in other.stderr


def test_images_are_read_with_the_decompression_bomb_limit_on(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(
            tmp_path / f"face{i}.png")
    det = str(suite().files["seed_bn"])
    result = runner.invoke(app, ["verify", "--against", det, "--images", str(tmp_path),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "face1.png") in result.stdout
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 50x70 is now a "bomb"
    bomb = runner.invoke(app, ["verify", "--against", det, "--images", str(tmp_path)])
    assert bomb.exit_code == 2
    assert "cannot read image" in bomb.stderr and "decompression bomb" in bomb.stderr.lower()


def test_necktools_own_file_keeps_its_metadata_answer(
        exported: tuple[pathlib.Path, pathlib.Path]) -> None:
    _, neck = exported
    result = runner.invoke(app, ["inspect", str(neck), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"kind": "onnx"' in result.stdout and '"export"' in result.stdout


def test_a_static_neck_alone_is_found_too(exported: tuple[pathlib.Path, pathlib.Path],
                                          tmp_path: pathlib.Path) -> None:
    _, neck = exported
    model = onnx.load(str(neck))
    del model.metadata_props[:]
    found = find_neck(model)
    assert (found.inputs, found.outputs) == (("c3", "c4", "c5"), ("p3", "p4", "p5"))
    assert found.spec.to_dict() == suite().models["scrfd_dedup"].neck.spec.to_dict()
    assert found.input_strides == (8, 16, 32)


def test_profile_and_bench_take_the_neck_and_weights_from_a_detector() -> None:
    import json

    det = suite().files["scrfd_dedup"]
    spec = find_neck(load_detector(det)).spec
    result = runner.invoke(app, ["profile", "--weights", str(det), "--input-size", "128x128",
                                 "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["family"] == spec.family == "mmdet_pafpn"
    assert found["config"]["in_channels"] == list(spec.in_channels)
    # 3 laterals, 3 fpn convs, 2 downsample and 2 pafpn convs: weights + biases, by hand
    c3, c4, c5 = spec.in_channels
    out = spec.out_channels
    laterals = (c3 + c4 + c5) * out + 3 * out
    three_by_three = 7 * (9 * out * out + out)
    assert found["params"] == laterals + three_by_three
    both = runner.invoke(app, ["profile", "scrfd_2.5g", "--weights", str(det)])
    assert both.exit_code == 2 and "not both" in both.stderr
    # bench times that neck (the next test checks that the timed model has its weights)
    bench = runner.invoke(app, ["bench", "--weights", str(det), "--input-size", "128x128",
                                "--runtime", "torch", "--repeat", "2", "--warmup", "1",
                                "--json"])
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.stdout)["family"] == "mmdet_pafpn"


def test_bench_loads_the_detector_weights_into_the_timed_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import necktool.latency.bench as bench_mod
    from necktool.latency.plan import BenchPlan
    from necktool.spec.weights import WeightsRequest

    det = suite().files["scrfd_dedup"]
    spec = find_neck(load_detector(det)).spec
    seen = []
    real = bench_mod.make_model

    def spy(spec_, request):  # type: ignore[no-untyped-def]
        model, source = real(spec_, request)
        seen.append(source)
        return model, source

    monkeypatch.setattr(bench_mod, "make_model", spy)
    plan = BenchPlan.build(spec, (128, 128), warmup=1, repeat=1, runtimes=["torch"],
                           weights=WeightsRequest(path=det))
    bench_mod.run_bench(plan)
    assert len(seen) == 1 and seen[0].sha256 == hashlib.sha256(det.read_bytes()).hexdigest()
