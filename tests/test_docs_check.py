"""scripts/docs.py, the check that keeps the pages true: a page whose sample output or exit
code differs from what its command does fails, and --write regenerates it."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def docs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("necktool_docs", ROOT / "scripts" / "docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["necktool_docs"] = module
    spec.loader.exec_module(module)
    return module


PAGE = """# A page
<!-- docs: printf 'a\\nb\\n' -->
```text
a
b
```
<!-- docs: echo took 12.5 ms  # vary=timings -->
```text
took 3.1 ms
```
```bash
necktool --version
```
```python
print(sum([1, 2]))
```
"""


def test_a_true_page_passes(docs, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    assert docs.process(str(page), write=False, only=None) == []


def test_a_stale_output_fails_and_write_regenerates_it(docs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    page = tmp_path / "page.md"
    page.write_text(PAGE.replace("a\nb\n```", "a\nc\n```"))
    problems = docs.process(str(page), write=False, only=None)
    assert len(problems) == 1 and "output differs" in problems[0] and "+b" in problems[0]
    assert docs.process(str(page), write=True, only=None) == []
    assert page.read_text() == PAGE


def test_a_wrong_exit_code_and_a_failing_python_block_fail(docs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    page = tmp_path / "page.md"
    page.write_text(PAGE.replace("necktool --version", "necktool nosuchcommand")
                    .replace("print(sum([1, 2]))", "raise SystemExit(3)"))
    problems = docs.process(str(page), write=False, only=None)
    assert len(problems) == 2
    assert "exit 2, the page says 0" in problems[0]
    assert "exit 3, the page says 0" in problems[1]


def test_a_documented_exit_code_and_skip_are_honoured(docs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    page = tmp_path / "page.md"
    page.write_text(PAGE.replace("necktool --version",
                                 "necktool nosuchcommand  # exit=2\n"
                                 "necktool export --weights absent.pth  # docs: skip (a file)"))
    assert docs.process(str(page), write=False, only=None) == []


def test_vary_latency_ignores_decimal_figures_and_their_column_widths(docs) -> None:  # type: ignore[no-untyped-def]
    shown = ("┏━━━━━━┳━━━━━━━━━━┓\n│ fp32 │    1.093 │\n│ int8 │   12.345 │\n"
             "73,380,000 FLOPs; 2.19x faster")
    measured = ("┏━━━━━━┳━━━━━━━━━━━┓\n│ fp32 │    1093.5 │\n│ int8 │     0.996 │\n"
                "73,380,000 FLOPs; 646.83x faster")
    assert docs.normalise(shown, ("latency",)) == docs.normalise(measured, ("latency",))
    # counts are not decimal figures: a changed one still fails, and so does a changed word
    assert (docs.normalise(shown, ("latency",))
            != docs.normalise(measured.replace("73,380,000", "73,380,001"), ("latency",)))
    assert (docs.normalise(shown, ("latency",))
            != docs.normalise(measured.replace("faster", "slower"), ("latency",)))
    # without vary= the layout is compared exactly
    assert docs.normalise(shown, ()) != docs.normalise(shown.replace("│    1", "│     1"), ())


def test_a_continued_bash_line_is_one_command(docs) -> None:  # type: ignore[no-untyped-def]
    lines = ["```bash", "necktool sweep scrfd_2.5g \\", "    --sizes 320  # exit=2", "echo hi",
             "```"]
    (example,) = docs.examples("page.md", lines)
    assert example.command.split() == ["necktool", "sweep", "scrfd_2.5g", "--sizes", "320"]
    assert example.exit_code == 2 and example.line == 2


def test_the_readme_is_a_front_door() -> None:
    """The README says what necktool is and links on; the manual lives in docs/."""
    assert len((ROOT / "README.md").read_bytes()) <= 10 * 1024


@pytest.fixture(scope="module")
def hooks():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("necktool_docs_hooks",
                                                  ROOT / "scripts" / "docs_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_generated_from_every_command_and_option(hooks) -> None:  # type: ignore[no-untyped-def]
    """The page the build writes names every command and every one of its options, from
    the very app ``necktool`` runs; literal brackets survive as text."""
    from necktool.cli import COMMANDS, load_command

    page = hooks.cli_reference()
    for name in COMMANDS:
        assert f"## `necktool {name}`" in page, name
        for param in load_command(name).params:
            for opt in param.opts if param.param_type_name == "option" else ():
                assert opt in page, (name, opt)
    assert "necktool[ncnn]" in page and "rtol\\*|torch|" in page


def test_the_config_reference_is_generated_from_the_schema(hooks) -> None:  # type: ignore[no-untyped-def]
    from necktool.budgets.schema import config_schema

    schema = config_schema()
    page = hooks.config_reference()
    keys = {*schema["properties"], *schema["definitions"]["entry"]["properties"],
            *schema["definitions"]["level"]["properties"]}
    for key in keys:
        assert f"| {key} |" in page, key
    assert "levels.&lt;P3...>" in page and "<P3" not in page


def test_each_generated_page_has_its_marker(hooks) -> None:  # type: ignore[no-untyped-def]
    for page in hooks.GENERATED:
        assert hooks.MARKER in (ROOT / "docs" / page).read_text(), page
