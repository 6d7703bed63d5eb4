"""Real data through int8: feature sets from .npz and from images through a backbone, the
held-out split, calibration methods on sets of different sizes, and real-feature
calibration beating random-input calibration on held-out real features."""

from __future__ import annotations

import pathlib
import zipfile

import backbones
import numpy as np
import pytest
from typer.testing import CliRunner

from necktool.artifact.serving import Served, calibration_shapes
from necktool.cli import app
from necktool.deploy import data as D
from necktool.deploy.precision.convert import to_int8
from necktool.deploy.precision.loss import Reference
from necktool.errors import InputError
from necktool.spec.precision import CalibrationMethod
from necktool.spec.registry import resolve_spec

NECK = "insightface_scrfd_500m"
SIZE = (96, 96)


@pytest.fixture(scope="module")
def spec():
    return resolve_spec(NECK, input_size=SIZE)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> pathlib.Path:
    return backbones.write_photos(tmp_path_factory.mktemp("photos"), scale=0.2)[0].parent


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, spec) -> pathlib.Path:
    return backbones.export_backbone(tmp_path_factory.mktemp("bb") / "bb.onnx",
                                     spec.in_channels)


@pytest.fixture(scope="module")
def data(spec, photos, backbone) -> D.Data:
    loaded = D.load_data(spec, images=photos, backbone=backbone)
    assert loaded is not None
    return loaded


@pytest.fixture(scope="module")
def fp32(spec):
    from necktool.deploy.export import export_model
    from necktool.necks.build import make_inputs
    from necktool.necks.weights import seeded_model

    model = seeded_model(spec, seed=0)
    proto = export_model(model, spec, make_inputs(spec, SIZE, 1, seed=0), dynamic=True, opset=18)
    return model, proto


def _npz(path: pathlib.Path, **arrays: np.ndarray) -> pathlib.Path:
    np.savez(path, **arrays)
    return path


def _levels(spec, side: int, batch: int | None = None, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (batch,) if batch else ()
    return [rng.random((*shape, c, -(-side // s), -(-side // s)), dtype=np.float32)
            for c, s in zip(spec.in_channels, spec.input_strides, strict=True)]


# -- features from images ---------------------------------------------------------------
def test_images_through_the_backbone_match_the_backbone_run_by_hand(spec, photos, backbone,
                                                                    data) -> None:
    """Each feature set is the backbone's output on the image preprocessed as SCRFD does:
    RGB (x - 127.5) / 128, recomputed here with torch from the PNG's pixels."""
    import torch
    from PIL import Image

    assert data.origin == "images" and len(data.calibration) + len(data.holdout) == 8
    model = backbones.TinyBackbone(spec.in_channels).eval()
    chosen = data.holdout[0]
    pixels = np.asarray(Image.open(photos / chosen.name).convert("RGB"), np.float32)
    image = torch.from_numpy(((pixels - 127.5) / 128).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        expected = [t.numpy() for t in model(image)]
    for got, want in zip(chosen.arrays, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
        assert got.min() >= 0  # ReLU features: non-negative, unlike the synthetic normal
    sides = {s.sizes[0] for s in data.calibration}
    assert len(sides) > 1  # the photos keep their own, different sizes


def test_retinaface_preprocessing_is_bgr_minus_means() -> None:
    pre = D.default_preprocess("fpn")
    assert pre.bgr and pre.mean == (104.0, 117.0, 123.0) and pre.std == (1.0, 1.0, 1.0)
    scrfd = D.default_preprocess("mmdet_pafpn")
    assert not scrfd.bgr and scrfd.mean == (127.5,) * 3 and scrfd.std == (128.0,) * 3


def test_read_image_applies_order_mean_std_and_size(tmp_path) -> None:
    from PIL import Image

    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[..., 0], pixels[..., 2] = 200, 10  # red 200, blue 10
    Image.fromarray(pixels).save(tmp_path / "a.png")
    bgr = D.read_image(tmp_path / "a.png", D.Preprocess((104.0, 117.0, 123.0), (1.0,) * 3,
                                                         bgr=True))
    assert bgr.shape == (1, 3, 10, 20)
    assert bgr[0, 0, 0, 0] == 10 - 104 and bgr[0, 2, 0, 0] == 200 - 123
    small = D.read_image(tmp_path / "a.png", D.Preprocess((0.0,) * 3, (2.0,) * 3, False, (4, 6)))
    assert small.shape == (1, 3, 4, 6) and small[0, 0, 0, 0] == pytest.approx(100)


def test_a_decompression_bomb_is_refused(tmp_path, monkeypatch) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > the limit
    with pytest.raises(InputError, match=r"bomb\.png"):
        D.read_image(tmp_path / "bomb.png", D.default_preprocess("pafpn"))


def test_a_file_with_more_outputs_and_no_neck_is_refused(spec, backbone) -> None:
    import onnx

    model = onnx.load(str(backbone))
    model.graph.output.append(onnx.helper.make_tensor_value_info("score", 1, None))
    with pytest.raises(InputError, match="holds no neck and has 4 output"):
        D.neck_input_names(model, spec)


def test_a_detector_is_cut_at_the_neck_it_holds(tmp_path) -> None:
    """--backbone DET.onnx: the features are the detector's own backbone outputs, found by
    the graph's structure (issue 18's find_neck), equal to the torch backbone's."""
    import numpy as np
    import torch
    from detectors import SIZE, suite
    from PIL import Image

    s = suite()
    det, model = s.files["scrfd_dedup"], s.models["scrfd_dedup"]
    (tmp_path / "img").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "img" / "a.png")
    spec = model.neck.spec
    pre = D.Preprocess((127.5,) * 3, (128.0,) * 3, bgr=False)
    (features,) = D.features_from_images(tmp_path / "img", det, spec, pre)
    x = torch.from_numpy(((pixels.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1))
    with torch.no_grad():
        want = model.backbone(x[None])
    for got, ref in zip(features.arrays, want, strict=True):
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)


# -- .npz ------------------------------------------------------------------------------
def test_npz_by_name_in_order_and_directory(tmp_path, spec) -> None:
    levels = _levels(spec, 100)
    named = _npz(tmp_path / "named.npz", **dict(zip(spec.input_names, levels, strict=True)))
    ordered = _npz(tmp_path / "ordered.npz", a=levels[0], b=levels[1], c=levels[2])
    for path in (named, ordered):
        (got,) = D.load_features(path, spec)
        assert got.sizes == ((13, 13), (7, 7), (4, 4)) and got.batch == 1
        np.testing.assert_array_equal(got.arrays[2][0], levels[2])
    assert [s.name for s in D.load_features(tmp_path, spec)] == ["named.npz", "ordered.npz"]


@pytest.mark.parametrize(("make", "says"), [
    (lambda spec, lv: {"c3": lv[0], "c4": lv[1]}, "expected c3, c4, c5"),
    (lambda spec, lv: {"c3": lv[0][:5], "c4": lv[1], "c5": lv[2]}, "5 channels"),
    (lambda spec, lv: {"c3": lv[0], "c4": lv[1][:, :5], "c5": lv[2]},
     "not the ceil\\(H/s\\) sizes of one image"),
    (lambda spec, lv: {"c3": lv[0].astype(np.int32), "c4": lv[1], "c5": lv[2]},
     "not a float array"),
    (lambda spec, lv: {"c3": lv[0] * np.nan, "c4": lv[1], "c5": lv[2]}, "NaN or Inf"),
    (lambda spec, lv: {"c3": lv[0][None, None], "c4": lv[1], "c5": lv[2]},
     "expected \\(batch, 72, H, W\\)"),
])
def test_bad_npz_is_a_one_line_error(tmp_path, spec, make, says) -> None:
    path = _npz(tmp_path / "bad.npz", **make(spec, _levels(spec, 100)))
    with pytest.raises(InputError, match=says):
        D.load_features(path, spec)


def test_hostile_npz_files_are_input_errors(tmp_path, spec) -> None:
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, c3=np.array([{"x": 1}], dtype=object), c4=np.zeros(1), c5=np.zeros(1))
    with pytest.raises(InputError, match="cannot read"):
        D.load_features(pickled, spec)  # allow_pickle=False refuses the object array
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="cannot read"):
        D.load_features(tmp_path / "junk.npz", spec)
    with zipfile.ZipFile(tmp_path / "trunc.npz", "w") as z:
        z.writestr("c3.npy", b"\x93NUMPY garbage")
    with pytest.raises(InputError, match=r"cannot read|expected"):
        D.load_features(tmp_path / "trunc.npz", spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \.npz"):
        D.load_features(tmp_path / "empty", spec)


def test_independent_levels_need_no_common_image(tmp_path) -> None:
    spec = resolve_spec("retinaface_mnet", input_size=SIZE)
    levels = _levels(spec, 100)
    levels[1] = levels[1][:, :3, :5]  # 3x5 at stride 16 next to 13x13 at stride 8
    (got,) = D.load_features(_npz(tmp_path / "x.npz", c3=levels[0], c4=levels[1],
                                  c5=levels[2]), spec)
    assert got.sizes[1] == (3, 5)


def test_image_side_is_exact() -> None:
    assert D.image_side([13, 7, 4], [8, 16, 32]) == 97  # ceil(97/8)=13, /16=7, /32=4
    assert D.image_side([13, 7, 5], [8, 16, 32]) is None


# -- the split ---------------------------------------------------------------------------
def test_split_is_deterministic_disjoint_and_covers_everything(spec) -> None:
    sets = [D.FeatureSet(f"s{i:02d}", tuple(_levels(spec, 64, 1, i))) for i in range(12)]
    calib, held = D.split(sets, 0.25)
    assert len(held) == 3 and len(calib) == 9
    assert {s.name for s in calib} | {s.name for s in held} == {s.name for s in sets}
    assert not {s.name for s in calib} & {s.name for s in held}
    assert D.split(list(reversed(sets)), 0.25) == (calib, held)  # order of the files: none
    assert D.split(sets, 0.0) == (tuple(sets), ())
    with pytest.raises(InputError, match="leaves none"):
        D.split(sets[:1], 0.5)


def test_held_out_data_is_really_held_out(spec, data, fp32, monkeypatch) -> None:
    """The calibrator is fed exactly the calibration sets (the held-out ones never) and
    verification runs exactly on the held-out ones."""
    from necktool.deploy.precision import convert

    _, proto = fp32
    seen: list[str] = []
    original = convert._Batches.__getitem__

    def spy(self, i):
        feeds = original(self, i)
        seen.append(next(s.name for s in data.calibration + data.holdout
                         if s.arrays[0] is feeds["c3"]))
        return feeds

    monkeypatch.setattr(convert._Batches, "__getitem__", spy)
    to_int8(proto, spec, [], feeds=[s.feeds(spec.input_names) for s in data.calibration])
    assert set(seen) == {s.name for s in data.calibration}
    assert not set(seen) & {s.name for s in data.holdout}
    assert {s.name for s in data.verification} == {s.name for s in data.holdout}
    assert "8 images" in data.describe() and "2 held out" in data.describe()


# -- calibration -------------------------------------------------------------------------
def test_histogram_methods_work_on_sets_of_different_sizes(spec, data, fp32, tmp_path,
                                                          monkeypatch) -> None:
    """ONNX Runtime's own quantize_static stacks a call's batches into one array, which fails
    for the photos' different sizes; necktool feeds them one per call."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization import CalibrationMethod as Ort

    _, proto = fp32
    feeds = [s.feeds(spec.input_names) for s in data.calibration]
    assert len({f["c3"].shape for f in feeds}) > 1

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    import onnx

    monkeypatch.chdir(tmp_path)  # ORT writes and reads its temporary files beside it
    onnx.save(proto, "fp32.onnx")
    with pytest.raises(ValueError, match="inhomogeneous"):
        quantize_static("fp32.onnx", "q.onnx", Reader(), calibrate_method=Ort.Percentile)
    reference = Reference(proto, [s.feeds(spec.input_names) for s in data.holdout],
                          lambda _p: None)
    for method in (CalibrationMethod.PERCENTILE, CalibrationMethod.ENTROPY,
                   CalibrationMethod.MINMAX):
        q = to_int8(proto, spec, [], feeds=feeds, method=method)
        assert min(reference.output_sqnr(q).values()) > 15


def test_real_feature_calibration_beats_random_on_held_out_real_features(spec, data,
                                                                          fp32) -> None:
    _, proto = fp32
    reference = Reference(proto, [s.feeds(spec.input_names) for s in data.holdout],
                          lambda _p: None)
    shapes = calibration_shapes(spec, SIZE, 1, Served.legacy(True))
    real = to_int8(proto, spec, shapes, feeds=[s.feeds(spec.input_names)
                                                for s in data.calibration])
    random = to_int8(proto, spec, shapes, 8)
    real_db = min(reference.output_sqnr(real).values())
    random_db = min(reference.output_sqnr(random).values())
    assert real_db > random_db + 3, (real_db, random_db)
    # and a calibration on the wrong data entirely (features 100x too large) is far worse
    scaled = [{k: v * 100 for k, v in s.feeds(spec.input_names).items()}
              for s in data.calibration]
    wrong = to_int8(proto, spec, shapes, feeds=scaled)
    assert min(reference.output_sqnr(wrong).values()) < real_db - 10


# -- the CLI ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, photos, backbone):
    import json

    out = tmp_path_factory.mktemp("export") / "q.onnx"
    result = CliRunner().invoke(app, [
        "export", NECK, "--input-size", "96", "-o", str(out), "--precision", "int8",
        "--images", str(photos), "--backbone", str(backbone), "--calibration-method", "auto",
        "--format", "json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_export_with_images_reports_what_it_measured_on(exported) -> None:
    _, got = exported
    said = "real features from 8 images"
    assert said in got["reduced_precision"]["measured_on"]
    assert said in got["verification"]["measured_on"]
    assert [c["label"] for c in got["verification"]["cases"]] == \
        got["calibration"]["data"]["holdout"]
    assert got["calibration"]["batches"] == 6 and len(got["calibration"]["data"]["holdout"]) == 2
    methods = got["reduced_precision"]["methods"]
    assert {m["method"] for m in methods} == {"minmax", "percentile", "entropy"}
    assert methods[0]["worst_sqnr_db"] == max(m["worst_sqnr_db"] for m in methods)
    assert got["reduced_precision"]["calibration_method"] == methods[0]["method"]


def test_verify_runs_on_the_same_held_out_sets_and_shows_stages(exported, photos,
                                                                backbone) -> None:
    import json

    path, got = exported
    result = CliRunner().invoke(app, ["verify", str(path), "--images", str(photos),
                                      "--backbone", str(backbone), "--stages",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    cases = again["verification"]["cases"]
    assert [c["label"] for c in cases] == got["calibration"]["data"]["holdout"]
    assert [c["outputs"][0]["sqnr_db"] for c in cases] == pytest.approx(
        [c["outputs"][0]["sqnr_db"] for c in got["verification"]["cases"]], abs=1e-6)
    stages = again["reduced_precision"]["stages"]
    assert {s["stage"] for s in stages} == {"lateral", "top-down", "fpn", "bottom-up", "pafpn"}
    assert "2 held out" in again["reduced_precision"]["measured_on"]


def test_export_without_data_says_synthetic(tmp_path) -> None:
    import json

    result = CliRunner().invoke(app, ["export", NECK, "--input-size", "64", "-o",
                                      str(tmp_path / "q.onnx"), "--precision", "int8",
                                      "--trials", "1", "--format", "json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)["reduced_precision"]
    assert got["measured_on"].startswith("synthetic normal inputs")
    assert "calibrate int8 on real features" in got["note"]


@pytest.mark.parametrize(("args", "says"), [
    (["--images", "nowhere"], "--images and --backbone go together"),
    (["--calibration-data", "missing.npz"], "does not exist"),
    (["--holdout", "1.5"], "--holdout"),
    (["--mean", "1,2"], "three comma-separated"),
    (["--calibration-method", "magic"], "magic"),
    (["--keep-fp32", "nosuch", "--precision", "int8"], "no stage 'nosuch'"),
    (["--stages"], "add --precision fp16 or int8"),
])
def test_bad_data_flags_exit_2_with_one_line(tmp_path, args, says) -> None:
    result = CliRunner().invoke(app, ["export", NECK, "--input-size", "64", "-o",
                                      str(tmp_path / "x.onnx"), *args])
    assert result.exit_code == 2, result.output
    assert says in result.output.replace("\n", " ") or says in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_export_calibrated_on_npz_verifies_on_the_held_out_files(tmp_path, spec,
                                                                  data) -> None:
    """The library call: .npz files (the photos' features saved by name), int8 calibrated
    on the calibration files, verified on exactly the held-out ones."""
    from necktool.deploy.export import export_onnx
    from necktool.deploy.precision.reduce import Reduction
    from necktool.deploy.tolerance import VerifyOptions

    folder = tmp_path / "feats"
    folder.mkdir()
    for s in data.calibration + data.holdout:
        np.savez(folder / f"{s.name}.npz", **s.feeds(spec.input_names))
    loaded = D.DataRequest(calibration_data=folder).load(spec)
    assert loaded is not None and loaded.origin == "npz"
    assert [s.name for s in loaded.holdout] == [f"{s.name}.npz" for s in data.holdout]
    result = export_onnx(NECK, tmp_path / "q.onnx", input_size=SIZE, precision="int8",
                         options=VerifyOptions(trials=1), reduction=Reduction(loaded))
    assert result.written and result.verification is not None
    assert [c.case.label for c in result.verification.cases] == \
        [s.name for s in loaded.holdout]
    assert "2 held out" in result.verification.summary()
    assert result.metadata.calibration == 6  # the calibration sets, as the file records
    row = dict(result.blocks()[0].rows)["precision"]
    assert "6 real feature set(s)" in row and "per-channel" in row


def test_bench_calibrates_its_static_file_on_features_of_its_size(spec, photos,
                                                                   backbone, data) -> None:
    from necktool.latency.bench import bench

    pre = D.DataRequest(images=photos, backbone=backbone,
                        image_size=SIZE).preprocess(spec.family)
    assert pre is not None and pre.size == SIZE
    sized = D.load_data(spec, images=photos, backbone=backbone, preprocess=pre)
    assert sized is not None
    result = bench(NECK, SIZE, warmup=1, repeat=2, precisions=["int8"], data=sized)
    (timing,) = result.timings
    assert timing.sqnr_db is not None and timing.sqnr_db > 15  # on the held-out photos
    assert "2 held out" in result.to_dict()["calibrated_on"]
    with pytest.raises(InputError, match="bench times a static file at 96x96"):
        bench(NECK, SIZE, warmup=1, repeat=1, precisions=["int8"], data=data)


def test_an_npz_whose_header_lies_is_refused_before_allocation(tmp_path, spec) -> None:
    """A 100-byte member whose header claims 10**12 floats: refused from the header, before
    numpy would allocate 4 TB."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 6, 10 ** 6)})
    with zipfile.ZipFile(tmp_path / "liar.npz", "w") as z:
        z.writestr("c3.npy", header.getvalue() + b"\0" * 100)
    with pytest.raises(InputError, match="claims shape"):
        D.load_features(tmp_path / "liar.npz", spec)
