"""``--upsample scale2``: a constant x2 Resize and a crop, equal to ``interpolate(size=)``
wherever the levels are ``ceil(H / stride)``, in PyTorch (every level size up to a bound)
and in ONNX Runtime (two files of one neck, compared exactly at odd sizes)."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import necktool.cli
from necktool.analysis.profiling import analyze, profile
from necktool.artifact.metadata import DamagedMetadata, ExportMetadata, read_metadata
from necktool.deploy.export import ExportResult, export_onnx
from necktool.deploy.precision.convert import to_fp16
from necktool.deploy.runtimes.runners import open_session
from necktool.deploy.tolerance import VerifyOptions
from necktool.deploy.verify import verify_onnx
from necktool.errors import InputError
from necktool.necks.build import make_inputs
from necktool.necks.layers import UpsampleAdd, set_upsample
from necktool.necks.weights import seeded_model
from necktool.spec.families import LevelRelation
from necktool.spec.graph_form import Upsample
from necktool.spec.registry import resolve_spec

BOUND = 200  # every image side 1..BOUND
STRIDES = (8, 16, 32)
# A RetinaFace FPN (levels free in a size file) small enough to export in seconds.
NECK = {"in_channels": (8, 16, 32), "out_channels": 8}
SIZE = (61, 47)  # odd, no multiple of 32: levels 8x6, 4x3, 2x2
ODD_SIZES = [(33, 35), (61, 47), (95, 129), (100, 97), (129, 33), (255, 161)]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(necktool.cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


def floor_half_rows(coarse: torch.Tensor, fine: tuple[int, int]) -> torch.Tensor:
    """Nearest x2 then crop, written as the index arithmetic itself: row i, column j of
    the result read source row i // 2, column j // 2 (no interpolate involved)."""
    rows = torch.arange(fine[0]) // 2
    cols = torch.arange(fine[1]) // 2
    return coarse[:, :, rows][:, :, :, cols]


# -- PyTorch: every level size up to the bound ----------------------------------------
def test_scale2_is_size_bit_for_bit_at_every_level_pair_up_to_the_bound() -> None:
    """For every H, W in 1..200 and each stride pair 8/16, 16/32: the fine level is
    ceil(H/s) x ceil(W/s), the coarse one ceil(H/2s) x ceil(W/2s). Both forms of
    UpsampleAdd, interpolate(size=) and the index arithmetic agree exactly."""
    pairs = {((math.ceil(h / s), math.ceil(w / s)), (math.ceil(h / (2 * s)),
                                                    math.ceil(w / (2 * s))))
             for h in range(1, BOUND + 1) for w in range(1, BOUND + 1) for s in STRIDES[:2]}
    # ceil(ceil(H/s)/2) = ceil(H/2s): the coarse side is ceil(fine/2) at every stride, so
    # the pairs are those of fine sides 1..ceil(200/8) = 25 (stride 16's among them).
    assert len(pairs) == 25 * 25
    assert all(c == ((f[0] + 1) // 2, (f[1] + 1) // 2) for f, c in pairs)
    size_form, scale2 = UpsampleAdd(), UpsampleAdd(Upsample.SCALE2)
    gen = torch.Generator().manual_seed(0)
    for fine_hw, coarse_hw in sorted(pairs):
        coarse = torch.randn(2, 3, *coarse_hw, generator=gen)
        fine = torch.randn(2, 3, *fine_hw, generator=gen)
        reference = F.interpolate(coarse, size=list(fine_hw), mode="nearest")
        assert torch.equal(floor_half_rows(coarse, fine_hw), reference), fine_hw
        assert torch.equal(size_form(fine, coarse), fine + reference), fine_hw
        assert torch.equal(scale2(fine, coarse), fine + reference), fine_hw


def test_scale2_is_size_for_every_fine_side_up_to_4096() -> None:
    """One side at a time, far past any image: every fine side f in 1..4096 with coarse
    side ceil(f/2) (the other side 1), both directions."""
    for f in range(1, 4097):
        c = (f + 1) // 2
        coarse = torch.arange(c, dtype=torch.float32).reshape(1, 1, c, 1)
        want = torch.arange(f).div(2, rounding_mode="floor").to(torch.float32)
        for shape, out in (((1, 1, c, 1), (f, 1)), ((1, 1, 1, c), (1, f))):
            src = coarse.reshape(shape)
            size_form = F.interpolate(src, size=list(out), mode="nearest")
            up = F.interpolate(src, scale_factor=2.0, mode="nearest")[:, :, :out[0], :out[1]]
            assert torch.equal(size_form.flatten(), want), f
            assert torch.equal(up.flatten(), want), f


def test_the_forms_differ_when_levels_are_not_of_one_image() -> None:
    """Why a scale2 file ties the levels: a coarse map that is not ceil(fine/2) (6 rows
    from 4) is read differently (size: 0,0,1,2,2,3; scale2: 0,0,1,1,2,2)."""
    coarse = torch.arange(4, dtype=torch.float32).reshape(1, 1, 4, 1)
    fine = torch.zeros(1, 1, 6, 1)
    got_size = UpsampleAdd()(fine, coarse).flatten().tolist()
    got_scale2 = UpsampleAdd(Upsample.SCALE2)(fine, coarse).flatten().tolist()
    assert got_size == [0, 0, 1, 2, 2, 3]
    assert got_scale2 == [0, 0, 1, 1, 2, 2]


def test_set_upsample_reaches_every_fusion_and_leaves_weights_alone() -> None:
    for family, fusions in (("fpn", 2), ("pafpn", 2), ("mmdet_fpn", 2)):
        model = seeded_model(resolve_spec(family, **NECK))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert set_upsample(model, Upsample.SCALE2) == fusions
        assert {m.form for m in model.modules() if isinstance(m, UpsampleAdd)} == {
            Upsample.SCALE2}
        after = model.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_fvcore_counts_the_uncropped_x2_map_so_flops_stay_on_the_size_form() -> None:
    """fvcore counts 1 flop per output element of upsample_nearest2d: the fine map's
    elements for size, the uncropped 2x coarse map's for scale2 (the crop is free). At
    61x47 the levels are 8x6, 4x3, 2x2 with 8 channels: size 8*(8*6 + 4*3) = 480,
    scale2 8*(8*6 + 4*4) = 512. The export's FLOPs are the size form's, i.e. profile's."""
    spec = resolve_spec("fpn", input_size=SIZE, **NECK)
    model = seeded_model(spec)
    size_count = analyze(model, spec, SIZE, 1)
    set_upsample(model, Upsample.SCALE2)
    scale2_count = analyze(model, spec, SIZE, 1)
    assert size_count.operators["upsample_nearest2d"] == 8 * (8 * 6 + 4 * 3) == 480
    assert scale2_count.operators["upsample_nearest2d"] == 8 * (8 * 6 + 4 * 4) == 512
    assert scale2_count.flops - size_count.flops == 32
    assert scale2_count.operators["conv"] == size_count.operators["conv"]
    assert size_count.flops == profile("fpn", input_size=SIZE, **NECK).flops


# -- ONNX: two files of one neck -------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same neck exported twice at 61x47: size through the library, scale2 through
    the CLI (its JSON kept), both verified (one trial per case)."""
    folder = tmp_path_factory.mktemp("upsample")
    size = export_onnx("fpn", folder / "size.onnx", input_size=SIZE,
                       options=VerifyOptions(trials=1), **NECK)
    code, stdout, stderr = invoke(
        "export", "fpn", "--in-channels", "8,16,32", "--out-channels", "8", "--input-size",
        "61x47", "--upsample", "scale2", "--trials", "1", "-o", str(folder / "scale2.onnx"),
        "--json")
    assert code == 0, stderr
    return {"size": size, "scale2": json.loads(stdout), "folder": folder}


def _resizes(path: pathlib.Path) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """Each Resize node with the nodes that consume its output."""
    model = onnx.load(str(path))
    return [(n, [m for m in model.graph.node if n.output[0] in m.input])
            for n in model.graph.node if n.op_type == "Resize"]


def test_scale2_file_holds_constant_x2_resizes_then_a_crop(files: dict[str, Any]) -> None:
    folder: pathlib.Path = files["folder"]
    model = onnx.load(str(folder / "scale2.onnx"))
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    resizes = _resizes(folder / "scale2.onnx")
    assert len(resizes) == 2
    for node, users in resizes:
        assert len(node.input) == 3  # X, roi, scales: no sizes input
        assert constants[node.input[2]].tolist() == [1.0, 1.0, 2.0, 2.0]
        assert [u.op_type for u in users] == ["Slice"]
    for node, _ in _resizes(folder / "size.onnx"):
        assert len(node.input) == 4 and node.input[3] not in constants  # sizes, computed


def test_both_files_give_identical_outputs_in_onnx_runtime(files: dict[str, Any]) -> None:
    folder: pathlib.Path = files["folder"]
    spec = resolve_spec("fpn", **NECK)
    size = open_session(folder / "size.onnx", "CPUExecutionProvider")
    scale2 = open_session(folder / "scale2.onnx", "CPUExecutionProvider")
    for k, image in enumerate(ODD_SIZES):
        feeds = {n: t.numpy() for n, t in zip(spec.input_names,
                                              make_inputs(spec, image, 1 + k % 2, seed=k),
                                              strict=True)}
        for a, b in zip(size.run(None, feeds), scale2.run(None, feeds), strict=True):
            assert a.shape == b.shape
            assert np.array_equal(a, b), (image, float(np.abs(a - b).max()))


def test_the_report_and_metadata_say_the_form_and_what_it_serves(
        files: dict[str, Any]) -> None:
    folder: pathlib.Path = files["folder"]
    size: ExportResult = files["size"]
    scale2: dict[str, Any] = files["scale2"]
    assert size.to_dict()["upsample"] == "size" and scale2["upsample"] == "scale2"
    assert scale2["metadata"]["necktool.upsample"] == "scale2"
    assert size.to_dict()["metadata"]["necktool.upsample"] == "size"
    assert scale2["verification"]["passed"] and size.passed
    meta_size, meta_scale2 = read_metadata(folder / "size.onnx"), read_metadata(
        folder / "scale2.onnx")
    assert meta_size is not None and meta_scale2 is not None
    assert meta_size.upsample is Upsample.SIZE and meta_scale2.upsample is Upsample.SCALE2
    # The crop ties RetinaFace's otherwise free levels to one image.
    assert meta_size.served_shapes.levels is LevelRelation.INDEPENDENT
    assert meta_scale2.served_shapes.levels is LevelRelation.ONE_IMAGE
    assert "scale2 upsample" in scale2["serves"] and "free dimensions" in size.to_dict()[
        "serves"]
    # Same numbers of work: FLOPs (the size form's), params and conv MACs.
    for key in ("flops", "params"):
        assert scale2[key] == size.to_dict()[key]
    assert scale2["conv_macs"] == size.to_dict()["conv_macs"]
    assert scale2["conv_macs"]["match"]
    rows = dict(size.blocks()[0].rows)  # type: ignore[attr-defined]
    assert rows["upsample"].startswith("size: a Resize to the finer level's size")


def test_a_scale2_graph_converts_to_fp16(files: dict[str, Any]) -> None:
    """ONNX Runtime's float16 converter keeps Resize's constant scales float32 but flipped
    their exporter-written value_info to float16, which onnx.checker rejected; converted
    now, the fp16 graph passes the checker and stays within fp16 error of the fp32 file."""
    folder: pathlib.Path = files["folder"]
    fp32 = onnx.load(str(folder / "scale2.onnx"))
    half = to_fp16(fp32)
    onnx.checker.check_model(half, full_check=True)
    scales = [i for i in half.graph.initializer
              if i.name in {n.input[2] for n in half.graph.node if n.op_type == "Resize"}]
    assert [i.data_type for i in scales] == [onnx.TensorProto.FLOAT]
    spec = resolve_spec("fpn", **NECK)
    feeds = {n: t.numpy() for n, t in zip(spec.input_names,
                                          make_inputs(spec, (95, 129), 2, seed=3), strict=True)}
    want = open_session(folder / "scale2.onnx", "CPUExecutionProvider").run(None, feeds)
    got = open_session(half.SerializeToString(), "CPUExecutionProvider").run(None, feeds)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and 0 < float(np.abs(g - w).max()) < 1e-2


def test_verify_rebuilds_the_files_form(files: dict[str, Any],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder: pathlib.Path = files["folder"]
    rebuilt: list[tuple[str, int]] = []

    def spy(model: torch.nn.Module, form: Upsample) -> int:
        count = set_upsample(model, form)
        rebuilt.append((str(form), count))
        return count

    monkeypatch.setattr("necktool.deploy.verify.set_upsample", spy)
    report = verify_onnx(folder / "scale2.onnx", options=VerifyOptions(trials=1))
    assert rebuilt == [("scale2", 2)]  # both fusions of the rebuilt neck, before comparing
    assert report.passed and report.upsample is Upsample.SCALE2
    assert report.to_dict()["upsample"] == "scale2"
    assert [c.case.input_size for c in report.verification.cases][1:] == [(65, 91), (93, 71)]
    code, stdout, stderr = invoke("verify", str(folder / "size.onnx"), "--trials", "1",
                                  "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["upsample"] == "size"


def test_older_files_read_as_size_and_damaged_values_are_refused(
        files: dict[str, Any]) -> None:
    props = dict(files["scale2"]["metadata"])
    assert ExportMetadata.from_props(props).upsample is Upsample.SCALE2
    del props["necktool.upsample"]  # what necktool wrote before --upsample existed
    assert ExportMetadata.from_props(props).upsample is Upsample.SIZE
    props["necktool.upsample"] = "bilinear"
    with pytest.raises(DamagedMetadata, match=r"necktool.upsample is damaged: 'bilinear' is "
                                              r"not one of size, scale2"):
        ExportMetadata.from_props(props)


def test_bad_upsample_values_are_one_line_exit_2(tmp_path: pathlib.Path) -> None:
    code, stdout, stderr = invoke("export", "scrfd_2.5g", "--upsample", "scale3", "-o",
                                  str(tmp_path / "a.onnx"))
    assert code == 2 and stdout == ""
    assert "'scale3'" in stderr and "size" in stderr and "scale2" in stderr
    with pytest.raises(InputError, match="upsample form 'x4' is not one of size, scale2"):
        export_onnx("fpn", tmp_path / "a.onnx", upsample="x4", **NECK)
    assert not list(tmp_path.iterdir())


def test_a_custom_neck_without_upsampleadd_refuses_scale2(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match=r"has none .* leave --upsample at size"):
        export_onnx("examples.custom_neck:BiFPN", tmp_path / "b.onnx", upsample="scale2",
                    in_channels=(8, 16, 32), out_channels=8)
    assert not list(tmp_path.iterdir())


# -- a converter that freezes a size-computed Resize ------------------------------------
def _ncnn_outputs(param: pathlib.Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    ncnn = pytest.importorskip("ncnn")
    net = ncnn.Net()
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = False
    net.opt.use_fp16_arithmetic = False
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(param.with_suffix(".bin"))) == 0
    arrays = [np.ascontiguousarray(x[0]) for x in inputs]  # kept alive: ncnn.Mat borrows
    mats = [ncnn.Mat(a) for a in arrays]
    extractor = net.create_extractor()
    for i, mat in enumerate(mats):
        extractor.input(f"in{i}", mat)
    outs = []
    for i in range(len(inputs)):
        code, mat = extractor.extract(f"out{i}")
        assert code == 0
        outs.append(np.array(mat)[None])
    return outs


def test_pnnx_freezes_size_but_keeps_scale2_at_multiples_of_32(
        files: dict[str, Any], tmp_path: pathlib.Path) -> None:
    """Both dynamic files converted to ncnn by pnnx at 64x64 (ncnn#6332's route): the size
    file's Resize is frozen at 4x4 and 8x8 and reads past its input at 96x128; the scale2
    file's x2 Resize is kept and its crop, a no-op at 64x64, dropped, so it is right at
    every multiple of 32 (here 96x128, against ONNX Runtime on the same file)."""
    pnnx = pytest.importorskip("pnnx")
    spec = resolve_spec("fpn", **NECK)
    at_64 = make_inputs(spec, (64, 64), 1, seed=0)
    inputs = [t.numpy() for t in make_inputs(spec, (96, 128), 1, seed=7)]
    errors = {}
    for form in ("size", "scale2"):
        onnx_file = tmp_path / f"{form}.onnx"
        onnx_file.write_bytes((files["folder"] / f"{form}.onnx").read_bytes())
        pnnx.convert(str(onnx_file), at_64, fp16=False)
        param = tmp_path / f"{form}.ncnn.param"
        interps = [ln.split() for ln in param.read_text().splitlines()
                   if ln.startswith("Interp")]
        frozen = [ln for ln in interps if any(w.startswith(("3=", "4=")) for w in ln)]
        assert len(interps) == 2 and bool(frozen) == (form == "size"), interps
        session = open_session(onnx_file, "CPUExecutionProvider")
        want = session.run(None, dict(zip(spec.input_names, inputs, strict=True)))
        got = _ncnn_outputs(param, inputs)
        # Memory read past the map may hold anything, NaN included: as wrong as inf.
        errors[form] = max(float(np.nan_to_num(np.abs(g - w), nan=math.inf).max())
                           if g.shape == w.shape else math.inf
                           for g, w in zip(got, want, strict=True))
    assert errors["scale2"] < 1e-4
    assert errors["size"] > 1e-2  # wrong numbers (reads past the map), not an error
