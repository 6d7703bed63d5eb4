"""The package's shape: layers point one way, the core is torch-free, things are described
once. These tests read the source and run fresh interpreters, so they fail when a change
adds an import cycle or pulls torch into a torch-free module."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import necktool
from necktool.cli import COMMANDS, app

PACKAGE = Path(necktool.__file__).parent
TORCH_FREE = [
    "necktool", "necktool.version", "necktool.errors", "necktool.units", "necktool.report",
    "necktool.files", "necktool.quiet",
    "necktool.spec", "necktool.spec.fields", "necktool.spec.families", "necktool.spec.neck_spec",
    "necktool.spec.registry", "necktool.spec.precision", "necktool.spec.graph_form",
    "necktool.spec.weights", "necktool.spec.runtimes", "necktool.spec.resources",
    "necktool.artifact", "necktool.artifact.serving", "necktool.artifact.stages",
    "necktool.deploy.runtimes.ncnn_pair", "necktool.latency.plan", "necktool.user_cache",
    "necktool.deploy", "necktool.deploy.tolerance", "necktool.artifact.metadata",
    "necktool.deploy.plan", "necktool.budgets.export",
    "necktool.deploy.runtimes.runners",
    "necktool.deploy.data", "necktool.deploy.precision.loss", "necktool.cli.data_params",
    "necktool.analysis", "necktool.latency.timing", "necktool.analysis.sweep",
    "necktool.analysis.plan",
    "necktool.budgets", "necktool.budgets.config", "necktool.budgets.baseline",
    "necktool.budgets.check", "necktool.budgets.cache", "necktool.budgets.schema",
    "necktool.budgets.hints",
    "necktool.cli",
    *(target.partition(":")[0] for target, _ in COMMANDS.values()),
    "necktool.cli.params", "necktool.cli.render",
    "necktool.detector", "necktool.detector.loading", "necktool.detector.graph",
    "necktool.detector.neck", "necktool.detector.inspect", "necktool.detector.merges",
    "necktool.detector.merge_spec",
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _import_sites(path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """Every necktool module ``path`` imports, with the line: at any depth (function bodies
    and ``if TYPE_CHECKING:`` blocks included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # 'from necktool.analysis import profiling' names a module; 'from necktool import X' not
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        found.extend((node.lineno, n) for n in names if n in modules)
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    return {name for _, name in _import_sites(path, modules)}


#: The layers, lowest first: a module may import its own layer and those before it, never
#: one after it. "base" is the top-level modules (errors, units, files, report, ...); "entry"
#: is the package's facade (``necktool/__init__.py``, the lazy public names) and ``__main__``.
LAYERS = ("base", "spec", "necks", "analysis", "artifact", "detector", "deploy", "latency",
          "budgets", "cli", "entry")


def _layer(module: str) -> str:
    parts = module.split(".")
    if module in ("necktool", "necktool.__main__"):
        return "entry"
    return parts[1] if (PACKAGE / parts[1]).is_dir() else "base"


def test_the_packages_import_only_downwards_in_the_declared_order() -> None:
    modules = _modules()
    assert {_layer(m) for m in modules} == set(LAYERS), "a package is missing from LAYERS"
    upward = []
    for name, path in sorted(modules.items()):
        here = LAYERS.index(_layer(name))
        for line, target in _import_sites(path, modules):
            if LAYERS.index(_layer(target)) > here:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} "
                              f"({_layer(name)} -> {_layer(target)})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from necktool.cli import app\n")
    modules = _modules()
    assert _import_sites(bad, modules) == [(2, "necktool.cli")]
    assert LAYERS.index(_layer("necktool.cli")) > LAYERS.index(_layer("necktool.necks.build"))


def test_no_import_cycles_between_necktool_modules() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert len(graph) > 30  # the walk really saw the package


def test_the_core_imports_no_torch() -> None:
    code = (f"import importlib, sys\nfor m in {TORCH_FREE!r}:\n    importlib.import_module(m)\n"
            "heavy = [m for m in ('torch', 'fvcore', 'onnx', 'onnxruntime') if m in sys.modules]\n"
            "print(heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


@pytest.mark.parametrize(("config", "says"), [
    ('[[budget]]\nneck = "scrfd_2.5g"\nmax-gflop = 1\n', "unknown key"),
    ('[[budget]]\nneck = "scrfd_25g"\nmax-gflops = 1\n', "did you mean 'scrfd_2.5g'"),
    ('[[budget]]\nneck = "scrfd_2.5g"\nout-channels = "wide"\nmax-gflops = 1\n',
     "expected a positive integer"),
])
def test_config_errors_never_import_torch(tmp_path: Path, config: str, says: str) -> None:
    (tmp_path / "necktool.toml").write_text(config)
    code = textwrap.dedent(f"""
        import sys
        from necktool.cli import app
        try:
            app(["check", "--config", {str(tmp_path / "necktool.toml")!r}])
        except SystemExit as e:
            assert e.code == 2, e.code
        assert "torch" not in sys.modules, "torch was imported"
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert says in proc.stderr


def test_each_command_summary_is_its_docstring() -> None:
    for name, (target, summary) in COMMANDS.items():
        module, _, attr = target.partition(":")
        doc = getattr(importlib.import_module(module), attr).__doc__
        assert doc.strip().splitlines()[0] == summary, name


def test_no_module_over_600_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 600, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_every_error_type_the_docs_name_is_importable() -> None:
    page = (PACKAGE.parent / "docs" / "reference" / "exit-codes.md").read_text()
    names = {n for n in dir(necktool.errors) if n.endswith(("Error", "Failed"))}
    named = {n for n in names if f"`{n}`" in page}
    assert {"WeightsError", "CustomNeckError", "VerificationFailed", "ExportError"} <= named
    for name in named:
        assert issubclass(getattr(necktool, name), necktool.NecktoolError), name


# -- build flags, described once ----------------------------------------------------------
def test_build_flags_are_built_by_keyword_only() -> None:
    from necktool.cli.params import BuildFlags

    flags = BuildFlags(out_channels=32, gn_groups=4, batch=2, norm=None)
    assert flags.overrides() == {"out_channels": 32, "gn_groups": 4} and flags.batch == 2
    with pytest.raises(TypeError):
        BuildFlags(32, 4)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unknown build flag"):
        BuildFlags(out_chanels=32)


def test_every_field_is_an_option_and_a_toml_key() -> None:
    from necktool.budgets.config import ENTRY_KEYS, TOP_KEYS
    from necktool.spec.fields import FIELDS

    result = CliRunner().invoke(app, ["profile", "--help"], env={"COLUMNS": "200"})
    for field in FIELDS:
        assert field.flag in result.stdout
        assert field.key in ENTRY_KEYS and field.key in TOP_KEYS


def test_a_flag_the_family_does_not_take_names_the_families_that_do(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from necktool.errors import SpecError
    from necktool.spec import families
    from necktool.spec.neck_spec import NeckSpec

    toy = families.FamilyInfo("toy", "a family without norms", "necktool.necks.pafpn:PAFPN",
                              ("in_channels", "out_channels", "input_size"))
    monkeypatch.setitem(families.FAMILIES, "toy", toy)
    spec = NeckSpec("toy", (8, 16), 8)
    with pytest.raises(SpecError, match=r"--norm does not apply to toy .*take it: fpn, pafpn"):
        spec.replace(norm="bn")
    with pytest.raises(SpecError, match="--gn-groups does not apply"):
        NeckSpec("toy", (8, 16), 8, gn_groups=2)
    assert "norm" not in spec.to_dict() and spec.to_dict()["out_channels"] == 8


def test_the_top_of_the_package_holds_at_most_ten_modules_and_each_subpackage_says_its_purpose(
        ) -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top
    subpackages = sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))
    names = {p.name for p in subpackages}
    assert {"spec", "necks", "analysis", "deploy", "budgets", "cli"} <= names, names
    for package in subpackages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc, f"{package.name}/__init__.py says nothing of its purpose"


def test_the_wheel_ships_py_typed(tmp_path: Path) -> None:
    """PEP 561: a non-editable install carries ``necktool/py.typed``, so users' type
    checkers read necktool's annotations."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(PACKAGE.parent)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("necktool-*.whl")
    assert "necktool/py.typed" in zipfile.ZipFile(wheel).namelist()


def test_the_public_names_are_the_lazy_table_and_the_typing_imports_agree() -> None:
    """The lazy table is the one list of the torch-side public names: ``__all__`` is it plus
    the eager imports (errors, version), and the ``if TYPE_CHECKING:`` imports, for type
    checkers, name exactly its modules (ruff needs a literal ``__all__``, so it is checked
    here rather than derived)."""
    init = ast.parse((PACKAGE / "__init__.py").read_text())
    eager = {a.asname or a.name for node in init.body if isinstance(node, ast.ImportFrom)
             and (node.module or "").startswith("necktool.") for a in node.names}
    typing_block = next(n for n in init.body if isinstance(n, ast.If)
                        and getattr(n.test, "id", "") == "TYPE_CHECKING")
    typed = {a.name: node.module for node in typing_block.body
             if isinstance(node, ast.ImportFrom) for a in node.names}
    assert typed == necktool._LAZY
    assert sorted(necktool.__all__) == sorted({*eager, *necktool._LAZY})
    assert len(necktool.__all__) == len(set(necktool.__all__))
    for name in necktool._LAZY:  # each entry really is where the table says
        assert getattr(necktool, name) is getattr(importlib.import_module(typed[name]), name)
