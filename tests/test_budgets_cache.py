"""The result cache of ``necktool check`` (necktool/budgets/cache.py).

One small config (two tiny necks at 64x64) is measured for real once per module; every
test then works on a copy of that warm cache, so only the tests that must recompute pay
for a trace.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import necktool.analysis.profiling
from necktool.budgets import cache as cache_mod
from necktool.budgets.cache import CACHE_DIR_ENV, CachedFigures, ResultCache, cache_dir
from necktool.budgets.check import CheckReport, check_budgets
from necktool.budgets.config import load_config
from necktool.cli import app

REPO = Path(__file__).resolve().parents[1]
CONFIG = """\
input-size = "64x64"

[[budget]]
neck = "scrfd_0.5g"
max-gflops = 1.0

[[budget]]
name = "narrow"
neck = "scrfd_2.5g"
out-channels = 16
max-mparams = 1.0
levels = { P3 = { max-gflops = 1.0 } }
"""
runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CheckReport]:
    """A project whose cache was filled by one real, cold check; and that check's report."""
    root = tmp_path_factory.mktemp("project")
    (root / "necktool.toml").write_text(CONFIG)
    report = check_budgets(load_config(None, root), cache=ResultCache(root / ".necktool_cache"))
    return root, report


@pytest.fixture
def project(tmp_path: Path, measured: tuple[Path, CheckReport]) -> Path:
    """A fresh copy of the warm project."""
    shutil.copytree(measured[0], tmp_path / "p")
    return tmp_path / "p"


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every real profile run (``run_profile`` of a plan), recorded by its spec."""
    calls: list[Any] = []
    real = necktool.analysis.profiling.run_profile

    def run_profile(plan: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(plan.spec)
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(necktool.analysis.profiling, "run_profile", run_profile)
    return calls


def check(root: Path, **kwargs: Any) -> CheckReport:
    cache = ResultCache(root / ".necktool_cache")
    return check_budgets(load_config(None, root), cache=cache, **kwargs)


def entries(root: Path) -> list[Path]:
    return sorted((root / ".necktool_cache").glob("check-*.json"))


def without_cache_marks(report: CheckReport) -> list[dict[str, Any]]:
    out = []
    for entry in report.to_dict()["entries"]:
        entry.pop("from_cache")
        out.append(entry)
    return out


# -- hits -----------------------------------------------------------------------------
def test_cold_check_fills_the_cache_with_a_gitignore(measured: tuple[Path, CheckReport]) -> None:
    root, report = measured
    assert report.from_cache == 0 and report.cache == str(root / ".necktool_cache")
    assert len(entries(root)) == 2  # one per distinct (spec, batch)
    assert (root / ".necktool_cache" / ".gitignore").read_text().splitlines()[-1] == "*"
    stored = json.loads(entries(root)[0].read_text())
    assert stored["schema"] == cache_mod.CACHE_SCHEMA
    assert entries(root)[0].name == f"check-{stored['key']}.json"
    assert set(stored["versions"]) == {"necktool", "torch", "fvcore"}


def test_warm_check_reads_every_entry_and_reports_the_same_figures(
        project: Path, measured: tuple[Path, CheckReport], counting: list[Any]) -> None:
    warm = check(project)
    assert counting == []  # nothing traced
    assert warm.from_cache == 2 and all(e.from_cache for e in warm.entries)
    # Every figure, check and verdict equals the cold run's, field for field.
    assert without_cache_marks(warm) == without_cache_marks(measured[1])
    assert warm.to_dict()["cache"] == {"directory": str(project / ".necktool_cache"),
                                       "from_cache": 2}


def test_entries_differing_only_in_name_share_one_cache_entry(
        project: Path, counting: list[Any]) -> None:
    text = (project / "necktool.toml").read_text()
    (project / "necktool.toml").write_text(
        text + '\n[[budget]]\nname = "again"\nneck = "scrfd_0.5g"\nmax-gflops = 2.0\n')
    report = check(project)
    assert counting == [] and report.from_cache == 3 and len(entries(project)) == 2


# -- misses ---------------------------------------------------------------------------
@pytest.mark.parametrize(("old", "new"), [
    ("out-channels = 16", "out-channels = 24"),                    # a build field
    ('input-size = "64x64"', 'input-size = "96x64"'),              # the size
    ('name = "narrow"', 'name = "narrow"\nbatch = 2'),             # the batch
])
def test_a_changed_field_size_or_batch_is_a_miss(project: Path, counting: list[Any],
                                                 old: str, new: str) -> None:
    config = project / "necktool.toml"
    config.write_text(config.read_text().replace(old, new))
    report = check(project)
    changed = [e for e in report.entries if not e.from_cache]
    assert changed and len(counting) == len(changed)
    # The recomputed figures are the fresh truth: equal to an uncached check's.
    assert without_cache_marks(report) == without_cache_marks(
        check_budgets(load_config(None, project)))
    assert len(entries(project)) == 2 + len(changed)  # stored under new keys


def test_a_changed_version_is_a_miss(project: Path, counting: list[Any],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = cache_mod.versions
    monkeypatch.setattr(cache_mod, "versions", lambda: {**real(), "torch": "99.0"})
    report = check(project)
    assert report.from_cache == 0 and len(counting) == 2


def test_a_changed_cache_schema_is_a_miss(project: Path, counting: list[Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod, "CACHE_SCHEMA", cache_mod.CACHE_SCHEMA + 1)
    report = check(project)
    assert report.from_cache == 0 and len(counting) == 2


def test_versions_are_read_without_importing_torch() -> None:
    code = ("import sys\nfrom necktool.budgets.cache import versions\nv = versions()\n"
            "assert 'torch' not in sys.modules\nprint(v['torch'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    import torch

    assert proc.stdout.strip() == torch.__version__


# -- damaged, foreign, concurrent -----------------------------------------------------
def _damage(path: Path, how: str, other: Path) -> None:
    data = json.loads(path.read_text())
    if how == "truncated":
        path.write_text(path.read_text()[:100])
    elif how == "not json":
        path.write_bytes(b"\x00\xff garbage")
    elif how == "foreign":  # another entry's file under this key's name
        path.write_text(other.read_text())
    elif how == "other schema":
        path.write_text(json.dumps({**data, "schema": 0}))
    elif how == "negative count":
        data["figures"]["flops"] = -1
        path.write_text(json.dumps(data))
    elif how == "boolean count":
        data["figures"]["levels"][0]["params"] = True
        path.write_text(json.dumps(data))
    elif how == "wrong levels":
        data["figures"]["levels"] = data["figures"]["levels"][:-1]
        path.write_text(json.dumps(data))
    elif how == "disagreeing cross-check":
        data["figures"]["cross_check"]["fvcore_conv_macs"] += 1
        path.write_text(json.dumps(data))
    elif how == "a directory":
        path.unlink()
        path.mkdir()


@pytest.mark.parametrize("how", ["truncated", "not json", "foreign", "other schema",
                                 "negative count", "boolean count", "wrong levels",
                                 "disagreeing cross-check"])
def test_a_damaged_or_foreign_entry_is_ignored_and_rewritten(
        project: Path, measured: tuple[Path, CheckReport], counting: list[Any],
        how: str) -> None:
    target, other = entries(project)
    good = target.read_bytes()
    _damage(target, how, other)
    report = check(project)
    assert report.from_cache == 1 and len(counting) == 1  # only the damaged one measured
    assert without_cache_marks(report) == without_cache_marks(measured[1])
    assert json.loads(target.read_bytes()) == json.loads(good)  # rewritten whole
    assert check(project).from_cache == 2


def test_an_unreadable_entry_is_a_miss_and_never_an_error(
        project: Path, measured: tuple[Path, CheckReport], counting: list[Any]) -> None:
    target, other = entries(project)
    _damage(target, "a directory", other)  # cannot be read, nor replaced
    report = check(project)
    assert report.from_cache == 1 and len(counting) == 1
    assert without_cache_marks(report) == without_cache_marks(measured[1])


def _hammer(args: tuple[str, int]) -> list[str]:
    """Store and read one key many times from one process; what every read saw."""
    directory, seed = args
    cache = ResultCache(Path(directory))
    source = json.loads(next(Path(directory).glob("check-*.json")).read_text())
    figures = CachedFigures.from_json(source["figures"],
                                      [lv["name"] for lv in source["figures"]["levels"]])
    assert figures is not None
    seen = []
    for i in range(40):
        if (i + seed) % 2:
            cache.put(source["key"], source["plan"], figures)
        got = cache.get(source["key"], [lv.name for lv in figures.levels])
        seen.append("whole" if got == figures else "missing" if got is None else "other")
    return seen


def test_concurrent_writers_never_leave_a_torn_entry(project: Path) -> None:
    directory = str(project / ".necktool_cache")
    with concurrent.futures.ProcessPoolExecutor(4) as pool:
        seen = [s for part in pool.map(_hammer, [(directory, i) for i in range(4)])
                for s in part]
    # Atomic replacement: a reader finds the whole entry, every time.
    assert seen == ["whole"] * 160
    assert not [p for p in Path(directory).iterdir() if p.name.endswith(".tmp")]


# -- a cache that cannot be used ------------------------------------------------------
def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_an_uncreatable_cache_folder_degrades_to_no_cache(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "file").write_text("")
    monkeypatch.setenv(CACHE_DIR_ENV, str(project / "file" / "cache"))
    monkeypatch.chdir(project)
    code, out, err = run("check", "--format", "json")
    assert code == 0 and err == ""
    # $NECKTOOL_CACHE_DIR moves the user's cache too: no key can be made there, so no cache
    assert json.loads(out)["cache"] is None


READ_ONLY = """
import json, os, sys
from pathlib import Path
from necktool.budgets.cache import CachedFigures, ResultCache
directory = Path(sys.argv[1])
cache, fresh = ResultCache(directory), ResultCache(directory / "new")
cache.found_versions, fresh.found_versions  # read before dropping privileges
cache.secret, fresh.secret  # the MAC key too (it lives in root's private user cache)
if os.geteuid() == 0:  # root writes through any mode: become nobody for the rest
    os.setgid(65534)
    os.setuid(65534)
entry = json.loads(next(directory.glob("check-*.json")).read_text())
names = [lv["name"] for lv in entry["figures"]["levels"]]
figures = cache.get(entry["key"], names)
stored = cache.put("0" * 64, entry["plan"], figures)
made = fresh.put("1" * 64, entry["plan"], figures)
print(json.dumps([figures is not None, stored, made]))
"""


def test_a_read_only_cache_folder_still_serves_and_never_errors(project: Path) -> None:
    """Root writes through chmod, so the child drops to an unprivileged user (nobody) once
    its imports are done; the cache folder stays root's, 0755 (read-only to nobody). It
    lives in a folder of /tmp that nobody may enter (pytest's own tmp folders are 0700)."""
    with tempfile.TemporaryDirectory() as top:
        directory = Path(top) / ".necktool_cache"
        shutil.copytree(project / ".necktool_cache", directory)
        _read_only_child(Path(top), directory)


def _read_only_child(top: Path, directory: Path) -> None:
    if os.geteuid() == 0:
        for path in (top, directory, *directory.iterdir()):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    else:
        os.chmod(directory, 0o555)
    try:
        proc = subprocess.run([sys.executable, "-c", READ_ONLY, str(directory)],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.chmod(directory, 0o755)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    # Read: a hit. Write into it, or make a folder in it: refused, quietly.
    assert json.loads(proc.stdout) == [True, False, False]
    assert not (directory / f"check-{'0' * 64}.json").exists()
    assert not (directory / "new").exists()


# -- the command line -----------------------------------------------------------------
def test_cli_reports_the_cache_in_table_and_json(project: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    code, out, _ = run("check")
    assert code == 0 and "2 of 2 entries from the cache .necktool_cache" in out
    code, out, _ = run("check", "--format", "json")
    data = json.loads(out)
    assert data["cache"] == {"directory": ".necktool_cache", "from_cache": 2}
    assert [e["from_cache"] for e in data["entries"]] == [True, True]


def test_no_cache_measures_and_touches_no_folder(tmp_path: Path, counting: list[Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "necktool.toml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    code, out, _ = run("check", "--no-cache", "--format", "json")
    assert code == 0 and json.loads(out)["cache"] is None and len(counting) == 2
    assert not (tmp_path / ".necktool_cache").exists()


def test_cache_dir_is_beside_the_config_or_the_environment_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir(tmp_path / "sub" / "pyproject.toml") == tmp_path / "sub" / ".necktool_cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "elsewhere"))
    assert cache_dir(tmp_path / "pyproject.toml") == tmp_path / "elsewhere"


def test_warm_cli_check_does_not_import_torch(project: Path) -> None:
    code = ("import sys\nfrom necktool.cli import app\n"
            "try:\n    app(['check'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules and 'fvcore' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, cwd=project, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "2 of 2 entries from the cache" in proc.stdout


def test_a_custom_neck_is_never_cached(tmp_path: Path) -> None:
    spec = load_config(None, _write(tmp_path, CONFIG)).budgets[0].spec
    from necktool.budgets.check import _plan

    assert _plan(spec, 1) is not None
    custom = types.SimpleNamespace(factory="examples.custom_neck:make")  # what it reads
    assert _plan(custom, 1) is None  # type: ignore[arg-type]


def _write(root: Path, text: str) -> Path:
    (root / "necktool.toml").write_text(text)
    return root


# -- the gate cannot be forged ----------------------------------------------------------
OVER_BUDGET = '[[budget]]\nneck = "scrfd_2.5g"\nmax-gflops = 0.2\n'  # 0.2935 GFLOPs at 640


def _forge(entry: Path, key: bytes) -> None:
    """Every count a tenth, consistently (levels sum to the total), under ``key``'s MAC."""
    data = json.loads(entry.read_text())
    figures = data["figures"]
    for level in figures["levels"]:
        level["flops"] //= 10
    figures["flops"] = sum(level["flops"] for level in figures["levels"])
    data["mac"] = cache_mod.entry_mac(key, data)
    entry.write_text(json.dumps(data, indent=1))


@pytest.mark.parametrize("forger", ["edited here", "written on another machine"])
def test_a_forged_entry_for_an_over_budget_neck_cannot_pass_the_gate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forger: str) -> None:
    """The issue's reproduction: a committed .necktool_cache entry with a tenth of the
    figures made 'check' PASS (exit 0) and still claim a cross-check it never ran. Here the
    forger gives it a MAC too: under a guessed key, or under the key of the machine it was
    written on (their own necktool's, which they can read)."""
    (tmp_path / "necktool.toml").write_text(OVER_BUDGET)
    monkeypatch.chdir(tmp_path)
    ci = os.environ["XDG_CACHE_HOME"]
    theirs = tmp_path / "their_cache"
    if forger == "written on another machine":
        monkeypatch.setenv("XDG_CACHE_HOME", str(theirs))
    code, out, _ = run("check", "--format", "json")
    measured = json.loads(out)["entries"][0]["checks"][0]["count"]
    assert code == 1 and round(measured / 1e9, 4) == 0.2935  # the figure
    (entry,) = entries(tmp_path)
    key = (theirs / "necktool" / "keys" / cache_mod.KEY_FILE).read_bytes() \
        if forger != "edited here" else b"k" * cache_mod.KEY_BYTES
    _forge(entry, key)
    monkeypatch.setenv("XDG_CACHE_HOME", ci)  # CI: this machine's user cache
    if forger != "edited here":  # on their machine the forgery would pass: it is well made
        monkeypatch.setenv("XDG_CACHE_HOME", str(theirs))
        assert run("check")[0] == 0
        monkeypatch.setenv("XDG_CACHE_HOME", ci)
        _forge(entry, key)  # the run above rewrote nothing (a hit); forge afresh regardless
    code, out, _ = run("check", "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["passed"] is False and data["cache"]["from_cache"] == 0
    assert data["entries"][0]["checks"][0]["count"] == measured  # measured again
    code, out, _ = run("check")  # now this machine's own entry: a hit, still failing
    assert code == 1 and "1 of 1 entries from the cache" in " ".join(out.split())


def test_the_key_is_private_made_once_and_one_not_private_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    key = cache_mod.mac_key()
    path = tmp_path / "cache" / "necktool" / "keys" / cache_mod.KEY_FILE
    assert key is not None and len(key) == cache_mod.KEY_BYTES
    assert path.read_bytes() == key and (path.stat().st_mode & 0o777) == 0o600
    assert cache_mod.mac_key() == key  # read back, not made again
    assert [p.name for p in path.parent.iterdir()] == [cache_mod.KEY_FILE]  # no debris
    path.chmod(0o644)  # as a checkout or an unpacked archive would have it
    assert cache_mod.mac_key() is None
    assert ResultCache(tmp_path / "entries").put("0" * 64, "plan", _figures()) is False


def test_no_key_means_no_cache_and_never_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counting: list[Any]) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file: no folder in it
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "necktool.toml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path / "p")
    code, out, err = run("check", "--format", "json")
    assert (code, err) == (0, "") and json.loads(out)["cache"] is None
    assert len(counting) == 2 and not (tmp_path / "p" / ".necktool_cache").exists()


def _figures() -> CachedFigures:
    figures = CachedFigures.from_json(
        {"flops": 10, "params": 2, "memory": {f: 1 for f in cache_mod.MEMORY_FIELDS},
         "levels": [{"name": "P3", "flops": 10, "params": 2, "activation_bytes": 4}],
         "cross_check": {"fvcore_conv_macs": 5, "flop_counter_conv_macs": 5}}, ["P3"])
    assert figures is not None
    return figures


def test_the_cache_keeps_at_most_max_entries_the_least_recently_used_go_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod, "MAX_ENTRIES", 3)
    cache = ResultCache(tmp_path / "c")
    keys = [f"{i:064x}" for i in range(5)]
    for i, key in enumerate(keys[:3]):
        assert cache.put(key, "plan", _figures())
        os.utime(cache.path(key), ns=(i * 10**9, i * 10**9))  # written at t = 0, 1, 2 s
    assert cache.get(keys[0], ["P3"]) is not None  # used now: the newest
    assert cache.put(keys[3], "plan", _figures())  # one too many: the oldest goes (keys[1])
    assert sorted(p.name for p in (tmp_path / "c").glob("check-*.json")) == sorted(
        f"check-{k}.json" for k in (keys[0], keys[2], keys[3]))
    assert cache.put(keys[4], "plan", _figures())
    assert not cache.path(keys[2]).exists() and len(list((tmp_path / "c").glob("*.json"))) == 3
    assert cache_mod.MAX_ENTRIES == 3 and (tmp_path / "c" / ".gitignore").exists()


def test_a_warm_report_says_its_entries_were_cross_checked_when_written(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    code, out, _ = run("check")
    assert code == 0 and "for every entry" not in out
    assert "the 2 entries from the cache were cross-checked with torch.utils.flop_counter " \
           "when their entries were written (equal)" in " ".join(out.split())
