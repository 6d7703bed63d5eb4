"""Export templates: a graph exported before is reused, only the new weights written in.

The file made from a template must be the file a cold export of the same weights makes
(byte for byte, so the same metadata and the same numbers), verified as a cold one is; any
change of what shapes the graph is a miss; a damaged or foreign entry is never trusted; a
cache that cannot be written costs nothing but the time.
"""

from __future__ import annotations

import dataclasses
import datetime
import getpass
import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import pytest
import torch
from _cli import run
from onnx import helper

import necktool.deploy.templates as templates
from necktool.artifact.metadata import read_metadata
from necktool.artifact.serving import default_cases
from necktool.deploy.export import export_onnx
from necktool.deploy.plan import ExportPlan
from necktool.deploy.runtimes.runners import open_session
from necktool.deploy.templates import MAGIC, Template, TemplateCache, template_key
from necktool.necks.build import make_inputs
from necktool.necks.weights import seeded_model
from necktool.spec.registry import resolve_spec
from necktool.spec.weights import WeightsRequest

SIZE = (64, 64)
#: GroupNorm (the optimizer folds each GN weight into a new (C, 1, 1) initializer) and
#: BatchNorm (running statistics as initializers of their own).
GN, BN = "scrfd_0.5g", "retinaface_mnet"
#: Three sizes each file serves (PAFPN levels are tied to one image: any H x W).
SIZES = [(64, 64), (96, 128), (65, 91)]


@dataclasses.dataclass(frozen=True)
class Made:
    """One cold export (seed 1) and the cache it filled."""

    neck: str
    cache: pathlib.Path
    path: pathlib.Path
    key: str


@pytest.fixture(scope="module", params=[GN, BN])
def made(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Made:
    neck = request.param
    cache = tmp_path_factory.mktemp("shared_cache")
    out = tmp_path_factory.mktemp("first") / "first.onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NECKTOOL_CACHE_DIR", str(cache))
        first = export_onnx(neck, out, seed=1, input_size=SIZE)
        key = template_key(ExportPlan.build(neck, out, input_size=SIZE))
    assert first.passed and first.template.stored and not first.template.reused
    assert key is not None
    return Made(neck, cache, out, key)


def own_copy(made: Made, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
             ) -> pathlib.Path:
    """A private copy of the shared cache, made the user's cache for this test."""
    cache = tmp_path / "cache"
    shutil.copytree(made.cache, cache)
    monkeypatch.setenv("NECKTOOL_CACHE_DIR", str(cache))
    return cache


def outputs(path: pathlib.Path, neck: str, size: tuple[int, int]) -> list[np.ndarray]:
    spec = resolve_spec(neck, input_size=SIZE)
    session = open_session(str(path), "CPUExecutionProvider")
    feeds = {n: t.numpy() for n, t in
             zip(spec.input_names, make_inputs(spec, size, 2, seed=7), strict=True)}
    return list(session.run(None, feeds))


# -- a hit: the new weights, the cold export's file --------------------------------------
def test_new_weights_reuse_the_graph_and_make_the_cold_exports_file(
        made: Made, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own_copy(made, tmp_path, monkeypatch)
    warm = export_onnx(made.neck, tmp_path / "warm.onnx", seed=2, input_size=SIZE)
    assert warm.template.reused and warm.passed and warm.written
    made_at = datetime.datetime.fromisoformat(str(warm.template.made))
    assert made_at <= datetime.datetime.now(datetime.UTC)
    cold = export_onnx(made.neck, tmp_path / "cold.onnx", seed=2, input_size=SIZE, cache=False)
    assert not cold.template.reused and cold.template.note == "--no-cache"

    # Verified exactly as the cold one: the same cases and tolerances, and passed.
    assert warm.verification is not None and cold.verification is not None
    assert warm.plan is not None
    assert [c.case for c in warm.verification.cases] == \
        [c.case for c in cold.verification.cases] == \
        default_cases(warm.metadata.spec, SIZE, 1, warm.metadata.served_shapes)
    assert warm.verification.options == cold.verification.options
    assert warm.verification.max_abs == cold.verification.max_abs
    # The same file: graph, weights and metadata.
    warm_bytes, cold_bytes = (tmp_path / "warm.onnx").read_bytes(), \
        (tmp_path / "cold.onnx").read_bytes()
    assert warm_bytes == cold_bytes
    assert read_metadata(onnx.load(tmp_path / "warm.onnx")) == \
        read_metadata(onnx.load(tmp_path / "cold.onnx"))
    for size in SIZES:
        got, want = outputs(tmp_path / "warm.onnx", made.neck, size), \
            outputs(tmp_path / "cold.onnx", made.neck, size)
        assert max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True)) <= 1e-6
        # ... and the new weights are in it, not the template's first ones (seed 1), and
        # it computes what PyTorch computes with them.
        first = outputs(made.path, made.neck, size)
        assert max(float(np.abs(g - f).max()) for g, f in zip(got, first, strict=True)) > 1e-3
        spec = resolve_spec(made.neck, input_size=SIZE)
        with torch.no_grad():
            torch_out = seeded_model(spec, 2)(make_inputs(spec, size, 2, seed=7))
        for g, t in zip(got, torch_out, strict=True):
            np.testing.assert_allclose(g, t.numpy(), rtol=1e-4, atol=1e-4)


def test_weights_that_change_what_the_optimizer_folds_still_make_the_cold_file(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GroupNorm weights of exactly 1 and biases of 0 (as trained necks start) let the
    optimizer drop work a template made from other weights still holds; the template is
    refilled before the optimizer runs, so the file is the cold export's all the same."""
    monkeypatch.setenv("NECKTOOL_CACHE_DIR", str(tmp_path / "cache"))
    spec = resolve_spec(GN, input_size=SIZE)
    state = seeded_model(spec, 3).state_dict()
    for name, value in state.items():
        if ".gn." in name:
            state[name] = torch.ones_like(value) if name.endswith("weight") \
                else torch.zeros_like(value)
    torch.save(state, tmp_path / "w.pt")
    first = export_onnx(GN, tmp_path / "a.onnx", seed=1, input_size=SIZE)
    assert first.template.stored
    weights = WeightsRequest(path=tmp_path / "w.pt")
    warm = export_onnx(GN, tmp_path / "warm.onnx", weights=weights, input_size=SIZE)
    cold = export_onnx(GN, tmp_path / "cold.onnx", weights=weights, input_size=SIZE,
                       cache=False)
    assert warm.template.reused and warm.passed and cold.passed
    assert (tmp_path / "warm.onnx").read_bytes() == (tmp_path / "cold.onnx").read_bytes()


def test_fp16_from_a_template_is_converted_from_the_fp32_graph_and_verified(
        made: Made, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own_copy(made, tmp_path, monkeypatch)
    warm = export_onnx(made.neck, tmp_path / "h.onnx", seed=4, input_size=SIZE,
                       precision="fp16")
    assert warm.template.reused and warm.passed
    convs = [i for i in onnx.load(tmp_path / "h.onnx").graph.initializer if len(i.dims) == 4]
    assert convs and {i.data_type for i in convs} == {onnx.TensorProto.FLOAT16}


# -- what is in the key ---------------------------------------------------------------------
BASE: dict = {"input_size": SIZE}


def _key(neck: str = GN, **changes: object) -> str | None:
    return template_key(ExportPlan.build(neck, "x.onnx", **{**BASE, **changes}))


@pytest.mark.parametrize("change", [
    {"out_channels": 24},  # a spec field
    {"gn_groups": 8},  # a spec field
    {"input_size": (96, 96)},  # the traced size
    {"batch": 2},
    {"dynamic": False},
    {"opset": 19},
    {"upsample": "scale2"},
])
def test_each_field_that_shapes_the_graph_is_in_the_key(change: dict) -> None:
    assert _key(**change) != _key()


def test_the_versions_are_in_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _key()
    real = templates.graph_versions()
    for name in real:
        monkeypatch.setattr(templates, "graph_versions",
                            lambda name=name: {**real, name: real[name] + ".post1"})
        assert _key() != before, name


def test_what_does_not_shape_the_graph_is_not_in_the_key(tmp_path: pathlib.Path) -> None:
    base = _key()
    assert _key(weights=WeightsRequest(seed=9)) == base
    assert _key(precision="fp16") == _key(precision="int8") == base
    assert _key(verify=False) == base
    assert template_key(ExportPlan.build(GN, tmp_path / "elsewhere.onnx", **BASE)) == base
    # A preset and the family with the same resolved fields share one graph.
    assert _key("retinaface_mnet") == _key("fpn")


def test_an_export_files_its_counts_where_check_looks_for_them() -> None:
    from necktool.analysis.plan import ProfilePlan
    from necktool.budgets.cache import profile_key

    for neck, batch in (("retinaface_mnet", 1), ("fpn", 2), (GN, 1)):
        spec = resolve_spec(neck, input_size=SIZE)
        assert profile_key(spec, batch) == \
            ProfilePlan(dataclasses.replace(spec, name=None), batch).content_hash()
    assert profile_key(resolve_spec(GN, input_size=SIZE), 1) != \
        profile_key(resolve_spec(GN, input_size=(96, 96)), 1)
    assert profile_key(resolve_spec("examples.custom_neck:BiFPN", in_channels=(8, 16, 32),
                                    out_channels=8), 1) is None


def test_a_custom_neck_is_never_cached(tmp_path: pathlib.Path) -> None:
    assert _key("examples.custom_neck:BiFPN", in_channels=(8, 16, 32), out_channels=8) is None
    cache = pathlib.Path(os.environ["NECKTOOL_CACHE_DIR"])
    for _ in range(2):
        r = export_onnx("examples.custom_neck:BiFPN", tmp_path / "c.onnx", input_size=SIZE,
                        in_channels=(8, 16, 32), out_channels=8)
        assert r.passed and not r.template.reused and not r.template.stored
        assert r.template.note == "custom necks are never cached"
    assert not (cache / "templates").exists()


def test_a_changed_field_misses_end_to_end(made: Made, tmp_path: pathlib.Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if made.neck != GN:
        pytest.skip("one neck shows it")
    cache = own_copy(made, tmp_path, monkeypatch)
    r = export_onnx(GN, tmp_path / "o.onnx", seed=2, input_size=SIZE, opset=19)
    assert not r.template.reused and r.template.stored and r.passed
    assert len(list((cache / "templates").glob("*.template"))) == 2
    # Other versions: the entry of the same structure is not this one's any more.
    real = templates.graph_versions()
    monkeypatch.setattr(templates, "graph_versions", lambda: {**real, "torch": "0.0.1"})
    assert TemplateCache(cache / "templates").get(made.key) is None


# -- damage: never trusted, rebuilt ----------------------------------------------------------
def _split(raw: bytes) -> tuple[dict, bytes]:
    head, _, body = raw[len(MAGIC):].partition(b"\n")
    return json.loads(head), body


def _join(header: dict, body: bytes, *, seal: bool = True) -> bytes:
    if seal:
        header = {**header, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return MAGIC + json.dumps(header).encode() + b"\n" + body


def _damage(raw: bytes, kind: str, other_key: str) -> bytes:
    header, body = _split(raw)
    if kind == "truncated":
        return raw[: len(raw) * 2 // 3]
    if kind == "bad checksum":
        return _join(header, body[:100] + bytes([body[100] ^ 1]) + body[101:], seal=False)
    if kind == "foreign key":
        return _join({**header, "key": other_key}, body)
    if kind == "wrong version":
        return _join({**header, "versions": {**header["versions"], "torch": "1.0"}}, body)
    if kind == "wrong schema":
        return _join({**header, "schema": 99}, body)
    if kind == "header not JSON":
        return MAGIC + b"{not json\n" + body
    if kind == "body not protobuf":
        return _join(header, b"\xff" * 64 + body[:50])
    if kind == "a weight missing from the body":
        proto = onnx.ModelProto.FromString(body)
        del proto.graph.initializer[0]
        return _join(header, proto.SerializeToString())
    if kind == "no format line":
        return raw[len(MAGIC):]
    assert kind == "empty"
    return b""


DAMAGE = ["truncated", "bad checksum", "foreign key", "wrong version", "wrong schema",
          "header not JSON", "body not protobuf", "a weight missing from the body",
          "no format line", "empty"]


def test_every_kind_of_damage_is_a_miss(made: Made, tmp_path: pathlib.Path) -> None:
    good = TemplateCache(made.cache / "templates").path(made.key).read_bytes()
    assert TemplateCache(made.cache / "templates").get(made.key) is not None
    store = TemplateCache(tmp_path)
    for kind in DAMAGE:
        store.path(made.key).write_bytes(_damage(good, kind, "0" * 64))
        assert store.get(made.key) is None, kind
    # An entry intact but filed under another key is foreign too.
    store.path("1" * 64).write_bytes(good)
    assert store.get("1" * 64) is None


@pytest.mark.parametrize("kind", ["bad checksum", "body not protobuf"])
def test_a_damaged_entry_is_rebuilt_by_a_cold_export(made: Made, kind: str,
                                                     tmp_path: pathlib.Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if made.neck != GN:
        pytest.skip("one neck shows it")
    cache = own_copy(made, tmp_path, monkeypatch)
    store = TemplateCache(cache / "templates")
    store.path(made.key).write_bytes(_damage(store.path(made.key).read_bytes(), kind, ""))
    r = export_onnx(GN, tmp_path / "d.onnx", seed=5, input_size=SIZE)
    assert r.passed and not r.template.reused and r.template.stored
    assert store.get(made.key) is not None  # whole again
    again = export_onnx(GN, tmp_path / "e.onnx", seed=6, input_size=SIZE)
    assert again.template.reused and again.passed


def test_an_entry_holds_no_path_user_or_host(made: Made) -> None:
    raw = TemplateCache(made.cache / "templates").path(made.key).read_bytes()
    header, body = _split(raw)
    proto = onnx.ModelProto.FromString(body)
    assert all(not i.raw_data for i in proto.graph.initializer)  # no weights either
    text = json.dumps(header) + str(proto)
    for word in ("/tmp", "/root", "/home", "/work", "site-packages", ".py",
                 str(pathlib.Path.cwd()), str(made.cache)):
        assert word not in text, word
    for word in (getpass.getuser(), socket.gethostname()):
        assert not re.search(rf"\b{re.escape(word)}\b", text), word


# -- the bound --------------------------------------------------------------------------------
def _tiny(n: int) -> Template:
    init = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[n])
    graph = helper.make_graph([], "g", [], [], [init], doc_string="x" * n)
    return Template(helper.make_model(graph), ("w",), "2026-01-01T00:00:00+00:00")


def test_the_cache_keeps_its_bound_least_recently_used_out_first(tmp_path: pathlib.Path
                                                                 ) -> None:
    store = TemplateCache(tmp_path)
    keys = ["a" * 64, "b" * 64, "c" * 64]
    assert store.put(keys[0], _tiny(1000))
    store.max_bytes = 2 * store.path(keys[0]).stat().st_size + 100  # room for two entries
    assert store.put(keys[1], _tiny(1000))
    os.utime(store.path(keys[0]), (1_000, 1_000))
    os.utime(store.path(keys[1]), (2_000, 2_000))
    assert store.get(keys[0]) is not None  # a use: now the most recent
    assert store.put(keys[2], _tiny(1000))
    assert sorted(p.name[:1] for p in tmp_path.glob("*.template")) == ["a", "c"]
    assert sum(p.stat().st_size for p in tmp_path.glob("*.template")) <= store.max_bytes
    assert not store.put("d" * 64, _tiny(5000))  # larger than the whole cache: not kept
    assert store.get(keys[2]) is not None


# -- concurrent writers, unwritable caches, --no-cache ---------------------------------------
def test_two_exports_writing_one_template_at_once(tmp_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "NECKTOOL_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "necktool", "export", GN, "--input-size", "64", "--seed",
         str(i), "-o", str(tmp_path / f"{i}.onnx"), "--json"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out)["verification"]["passed"] is True
    entries = list((cache / "templates").iterdir())
    assert [p.suffix for p in entries] == [".template"]  # one entry, no temporary debris
    key = template_key(ExportPlan.build(GN, "x.onnx", input_size=SIZE))
    assert entries[0].name == f"{key}.template"
    assert TemplateCache(cache / "templates").get(str(key)) is not None
    code, out, err = run("export", GN, "--input-size", "64", "--seed", "3", "-o",
                         str(tmp_path / "3.onnx"), "--json", env={"NECKTOOL_CACHE_DIR":
                                                                  str(cache)})
    assert code == 0, err
    assert json.loads(out)["template"]["reused"] is True


def _open_to_others(path: pathlib.Path, bits: int = 0o001) -> bool:
    """``path`` has ``bits`` for other users, and every directory above it lets them pass."""
    return path.stat().st_mode & bits == bits and all(d.stat().st_mode & 0o001
                                                      for d in path.parents)


def _runnable_by_anyone(path: str) -> bool:
    """``path`` is a file that other users can run."""
    p = pathlib.Path(path)
    return p.is_file() and _open_to_others(p)


def _interpreter_for_anyone() -> str | None:
    """This Python (its major.minor: the installed packages' ABI) as another user can run
    it: the venv's own, else the system's (a venv made from ~/.pyenv lives in root's home)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{version}",
                      f"/usr/local/bin/python{version}"):
        if _runnable_by_anyone(candidate):
            return candidate
    return None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="dropping to another user needs root")
def test_a_read_only_cache_as_another_user_exports_cold_without_a_word(
        request: pytest.FixtureRequest) -> None:
    import pwd
    import sysconfig

    python = _interpreter_for_anyone()
    if python is None:
        pytest.skip("no Python interpreter other users can run")
    site = sysconfig.get_paths()["purelib"]
    repo = pathlib.Path(templates.__file__).resolve().parents[2]
    for needed in (pathlib.Path(site), repo):
        if not _open_to_others(needed, 0o005):  # a folder to list and enter
            pytest.skip(f"{needed} is closed to other users")
    nobody = pwd.getpwnam("nobody")
    base = pathlib.Path(tempfile.mkdtemp())  # pytest's own tmp_path is root's alone (0700)
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    base.chmod(0o755)
    cache = base / "cache"
    (cache / "templates").mkdir(parents=True)  # root's, 0755: readable, not writable
    out = base / "out"
    out.mkdir()
    out.chmod(0o777)

    def drop() -> None:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    env = {**os.environ, "NECKTOOL_CACHE_DIR": str(cache), "HOME": str(out),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
           "PYTHONPATH": os.pathsep.join([str(repo), site])}
    proc = subprocess.run(
        [python, "-m", "necktool", "export", GN, "--input-size", "64", "-o",
         str(out / "n.onnx"), "--json"], env=env, capture_output=True, text=True,
        preexec_fn=drop, timeout=600, check=False, cwd=out)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["written"] and d["verification"]["passed"]
    assert d["template"] == {"reused": False, "made": None, "stored": False,
                             "note": "the template cache is not writable"}
    assert proc.stderr == ""
    assert list(cache.rglob("*")) == [cache / "templates"]
    assert (out / "n.onnx").stat().st_uid == nobody.pw_uid


def test_an_unusable_cache_directory_costs_nothing_but_time(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    env = {"NECKTOOL_CACHE_DIR": str(tmp_path / "file" / "cache")}
    code, out, err = run("export", GN, "--input-size", "64", "-o", str(tmp_path / "n.onnx"),
                         "--json", env=env)
    assert code == 0 and err == ""
    d = json.loads(out)
    assert d["written"] and not d["template"]["reused"] and not d["template"]["stored"]
    assert not d["counts_from_cache"]


def test_no_cache_reads_and_writes_nothing(tmp_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    code, out, err = run("export", GN, "--input-size", "64", "-o", str(tmp_path / "n.onnx"),
                         "--json", "--no-cache", env={"NECKTOOL_CACHE_DIR": str(cache)})
    assert code == 0, err
    assert json.loads(out)["template"] == {"reused": False, "made": None, "stored": False,
                                           "note": "--no-cache"}
    assert not cache.exists()


# -- the report, and counts from the result cache -------------------------------------------
def test_the_report_says_the_graph_was_reused_and_the_counts_came_from_the_cache(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"NECKTOOL_CACHE_DIR": str(tmp_path / "cache")}
    args = ["export", GN, "--input-size", "64", "-o", str(tmp_path / "n.onnx")]
    code, out, err = run(*args, "--json", env=env)
    assert code == 0, err
    cold = json.loads(out)
    assert not cold["counts_from_cache"] and cold["template"]["stored"]
    assert list((tmp_path / "cache").glob("check-*.json"))  # the counts, in check's format

    import necktool.analysis.profiling as profiling

    def no_count(*args: object, **kwargs: object) -> None:
        raise AssertionError("counted again")

    monkeypatch.setattr(profiling, "analyze", no_count)
    code, out, err = run(*args, "--seed", "2", "--json", env=env)
    assert code == 0, err
    warm = json.loads(out)
    assert warm["template"]["reused"] and warm["counts_from_cache"]
    for field in ("flops", "params", "conv_macs"):
        assert warm[field] == cold[field], field
    made = datetime.datetime.fromisoformat(warm["template"]["made"])
    code, out, err = run(*args, "--seed", "3", env=env)
    assert code == 0, err
    assert f"reused: the graph exported on {made:%Y-%m-%d at %H:%M} UTC (template cache)" \
        in " ".join(out.split())
    assert "the first two from the result cache" in " ".join(out.split())
