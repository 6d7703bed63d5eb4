"""Every mismatch between a neck file, a detector file, calibration data and images is one
``necktool: error:`` line (exit 2) naming what each side holds; the fuzz-found cases of the
issue, each of which was an internal error (exit 70) or noise on stderr."""

from __future__ import annotations

import pathlib
import warnings
import zipfile
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from _cli import run
from detectors import SIZE, Detector, export_torchscript, save, spec_of
from fuzzing import mark_zip_member

from necktool.deploy.data import default_preprocess, features_from_images, load_npz, read_image
from necktool.deploy.export import export_onnx
from necktool.errors import InputError
from necktool.spec.registry import resolve_spec

NECK = "scrfd_0.5g"  # 72,152,288 -> 16 channels, GroupNorm


@pytest.fixture(scope="module")
def neck_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("neck") / "neck.onnx"
    export_onnx(NECK, out, input_size=(64, 64), verify=False)
    return out


@pytest.fixture(scope="module")
def scrfd_detector(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A detector whose neck (16,24,32 -> 16 channels) is not the file's."""
    return save(export_torchscript(Detector(spec_of("scrfd3"))),
                tmp_path_factory.mktemp("det") / "det.onnx")


def one_line_error(code: int, stderr: str) -> str:
    assert code == 2, stderr
    assert stderr.startswith("necktool: error: ") and stderr.count("\n") == 1, stderr
    return stderr


# -- a neck file and a detector file -----------------------------------------------------------
def test_verify_against_a_detector_with_another_neck_names_both(
        neck_file: pathlib.Path, scrfd_detector: pathlib.Path) -> None:
    """Was ORT's 'Got invalid dimensions for input: c5 ... Got: 32 Expected: 288' (exit 70)."""
    err = one_line_error(*run("verify", str(neck_file), "--against", str(scrfd_detector))[::2])
    assert "holds another neck" in err
    assert "takes 3 level(s) of 72,152,288 channels and gives 3 level(s) of 16,16,16" in err
    assert "takes 3 level(s) of 16,24,32 and gives 3 level(s) of 16,16,16" in err


def test_a_build_flag_that_contradicts_the_file_is_refused_naming_both(
        neck_file: pathlib.Path) -> None:
    """``verify FILE --out-channels 32`` on a 16-channel file: a broadcast error before."""
    err = one_line_error(*run("verify", str(neck_file), "--out-channels", "32",
                              "--trials", "1")[::2])
    assert "--out-channels contradicts the file" in err
    assert "gives 3 level(s) of 16,16,16 channels" in err
    assert "gives 3 level(s) of 32,32,32 channels" in err


# -- data for a static file ----------------------------------------------------------------------
def _features(path: pathlib.Path, sizes: list[tuple[int, int]], channels: tuple[int, ...]
              ) -> pathlib.Path:
    rng = np.random.default_rng(0)
    np.savez(path, **{f"c{3 + i}": rng.random((1, c, h, w), dtype=np.float32)
                      for i, (c, (h, w)) in enumerate(zip(channels, sizes, strict=True))})
    return path


def test_a_static_export_refuses_features_of_other_sizes_before_any_work(
        tmp_path: pathlib.Path) -> None:
    """Features of a 128x128 image for a file exported static at 64x64: was ORT's dimension
    error from the fp16 stage (exit 70)."""
    data = _features(tmp_path / "f.npz", [(16, 16), (8, 8), (4, 4)], (72, 152, 288))
    err = one_line_error(*run("export", NECK, "--static", "--input-size", "64",
                              "--precision", "fp16", "--calibration-data", str(data),
                              "--holdout", "0", "-o", str(tmp_path / "n.onnx"))[::2])
    assert "level sizes 16x16, 8x8, 4x4" in err and "takes 8x8, 4x4, 2x2" in err
    assert "--input-size 128x128" in err
    assert not (tmp_path / "n.onnx").exists()


def test_one_by_one_features_for_a_groupnorm_neck_are_refused() -> None:
    """1x1 pictures through a backbone give 1x1 levels: one value per GroupNorm group
    (PyTorch's ValueError 'Expected more than 1 value per channel', exit 70)."""
    from necktool.deploy.data import check_set

    spec = resolve_spec(NECK)
    arrays = [np.ones((1, c, 1, 1), np.float32) for c in spec.in_channels]
    with pytest.raises(InputError, match=r"face\.png: level sizes 1x1, 1x1, 1x1 are those of "
                                         r"a 1x1 image, and input size 1x1 is smaller"):
        check_set(spec, arrays, "face.png")


# -- archives with odd members ---------------------------------------------------------------
def _odd_member(path: pathlib.Path, *, flags: int = 0, method: int | None = None
                ) -> pathlib.Path:
    """A stored .npz whose one member is marked encrypted (flag bit 0) or compressed with
    another method, in both the local and the central header."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        buffer = __import__("io").BytesIO()
        np.save(buffer, np.ones((1, 72, 8, 8), np.float32))
        archive.writestr("c3.npy", buffer.getvalue())
    mark_zip_member(path, flags=flags, method=method)
    return path


@pytest.mark.parametrize(("how", "said"), [({"flags": 1}, "encrypted"),
                                           ({"method": 9}, "compression method")])
def test_an_npz_with_an_encrypted_or_oddly_compressed_member_is_one_line(
        tmp_path: pathlib.Path, how: dict[str, int], said: str) -> None:
    path = _odd_member(tmp_path / "x.npz", **how)
    with pytest.raises(InputError, match=f"cannot read .*x.npz.* as .npz feature arrays: .*{said}"):
        load_npz(path, resolve_spec(NECK))
    err = one_line_error(*run("export", NECK, "--precision", "int8", "--calibration-data",
                              str(path), "-o", str(tmp_path / "n.onnx"))[::2])
    assert said in err


# -- images ----------------------------------------------------------------------------------------
def test_an_odd_picture_says_nothing_on_stderr(tmp_path: pathlib.Path) -> None:
    """A palette PNG with transparency as bytes: Pillow warns on convert('RGB')."""
    from PIL import Image

    image = Image.new("P", (40, 40))
    image.putpalette([0, 0, 0, 255, 0, 0] * 128)
    image.info["transparency"] = b"\x00\xff" + b"\xff" * 254
    image.save(tmp_path / "odd.png", transparency=b"\x00\xff")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        pixels = read_image(tmp_path / "odd.png", default_preprocess("pafpn"))
    assert pixels.shape == (1, 3, 40, 40) and said == []


class ThreeHeads(Detector):
    """RetinaFace as released: one output per level (score and box side by side), three in
    all: as many as the neck has input levels."""

    def __init__(self, spec: object) -> None:
        super().__init__(spec)  # type: ignore[arg-type]
        self.fused = True  # export_torchscript then names one output; the others keep theirs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        feats = self.neck(self.backbone(x))
        out = []
        for i, f in enumerate(feats):
            h = self.head.convs[i](f)
            out.append(torch.cat([self.head.scores[i](h), self.head.boxes[i](h)], 1))
        return tuple(out)


@pytest.fixture
def images(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)).save(
            folder / f"face{i}.png")
    yield folder


def test_a_retinaface_detector_with_three_head_outputs_serves_as_backbone(
        tmp_path: pathlib.Path, images: pathlib.Path) -> None:
    """Its three head outputs were taken for the neck's three levels ('c3 has 6 channels');
    the neck's inputs are found by structure, and equal the torch backbone's maps."""
    model = ThreeHeads(spec_of("retinaface"))
    det = save(export_torchscript(model), tmp_path / "retinaface.onnx")
    spec = spec_of("retinaface")
    pre = default_preprocess(spec.family)
    sets = features_from_images(images, det, spec, pre)
    assert [s.name for s in sets] == ["face0.png", "face1.png"]
    for found in sets:
        with torch.no_grad():
            want = model.backbone(torch.from_numpy(read_image(images / found.name, pre)))
        for got, ref in zip(found.arrays, want, strict=True):
            np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)


# -- the rest -------------------------------------------------------------------------------------
def test_save_baseline_into_a_directory_writes_a_file_in_it(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "necktool.toml").write_text(
        '[[budget]]\nneck = "scrfd_0.5g"\ninput-size = 64\nmax-gflops = 1\n')
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    code, _, err = run("check", "--no-cache", "--save-baseline", "out/")
    assert code == 0, err
    assert (tmp_path / "out").is_dir()
    assert '"scrfd_0.5g"' in (tmp_path / "out" / "necktool-baseline.json").read_text()


def test_an_openvino_failure_gives_its_reason_not_its_cpp_location(
        tmp_path: pathlib.Path) -> None:
    pytest.importorskip("openvino")
    from necktool.deploy.runtimes.runners import OpenVinoRunner

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07" + bytes(range(200)))
    with pytest.raises(InputError) as caught:
        OpenVinoRunner(bad)
    said = str(caught.value)
    assert "Exception from src/" not in said and "Unable to read the model" in said
