"""The JSON Schema of [tool.necktool] (necktool/budgets/schema.py) against the loader.

The loader (necktool/budgets/config.py) is the judge: every config it accepts must pass
the schema, and every bad config it rejects must fail the schema too, except the cases
:data:`NOT_EXPRESSIBLE` names, which are listed here one by one as such.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from _cli import run_without
from hypothesis import given, settings
from hypothesis import strategies as st

from necktool.budgets.config import ENTRY_KEYS, TOP_KEYS, load_config
from necktool.budgets.schema import NOT_EXPRESSIBLE, SCHEMA_ID, _upto, config_schema
from necktool.errors import ConfigError
from necktool.spec.fields import FIELDS, BadValue, field_for_key

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[1]
SCHEMA = config_schema()
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)


def schema_accepts(table: dict[str, Any]) -> bool:
    return VALIDATOR.is_valid(table)


def loader_accepts(tmp_path: Path, text: str) -> bool:
    path = tmp_path / "necktool.toml"
    path.write_text(text)
    try:
        load_config(path, tmp_path)
    except ConfigError:
        return False
    return True


def entry(body: str, neck: str = "scrfd_2.5g") -> str:
    return f'[[budget]]\nneck = "{neck}"\n{textwrap.dedent(body)}\n'


def test_the_schema_is_draft_07_and_a_schemastore_partial() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert SCHEMA["$id"] == SCHEMA_ID == "https://json.schemastore.org/partial-necktool.json"
    # One source of truth: exactly the keys the loader knows, each described.
    assert set(SCHEMA["properties"]) == set(TOP_KEYS)
    entry_props = SCHEMA["definitions"]["entry"]["properties"]
    assert set(entry_props) == set(ENTRY_KEYS)
    assert all(node.get("description") for node in [*SCHEMA["properties"].values(),
                                                    *entry_props.values()])


def test_the_example_configs_validate() -> None:
    example = tomllib.loads((REPO / "examples" / "necktool.toml").read_text())
    VALIDATOR.validate(example)
    # Every TOML block of the README and docs that the loader accepts passes the schema.
    checked = 0
    for doc in (REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))):
        for block in re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S):
            try:
                data = tomllib.loads(block)
            except tomllib.TOMLDecodeError:
                continue
            table = data.get("tool", {}).get("necktool", data)
            if "budget" in table:
                VALIDATOR.validate(table)
                checked += 1
    assert checked >= 2


# Each bad config the loader rejects (tests/test_check.py has them), as TOML.
REJECTED_BY_BOTH = [
    entry("max-gflops = 1.0") + entry("max-gflop = 0.3"),        # a typo key
    entry('max-gflops = "0.3"'),
    entry("max-gflops = -1"),
    entry("max-gflops = true"),
    entry("max-gflops = 0"),
    entry("max-gflops = 1e16"),
    entry('max-gflops = 1\nin-channels = "48,48,80"'),
    entry("max-gflops = 1\nin-channels = [48, 0, 80]"),
    entry("max-gflops = 1\nout-channels = 4.5"),
    entry("max-gflops = 1\nout-channels = 20000"),
    entry('max-gflops = 1\nnorm = "layer"'),
    entry('max-gflops = 1\ninput-size = "64by64"'),
    entry('max-gflops = 1\ninput-size = "0x64"'),
    entry('max-gflops = 1\ninput-size = "9000"'),
    entry("max-gflops = 1\ninput-size = [64, 64, 64]"),
    entry("max-gflops = 1\nbatch = 0"),
    entry("max-gflops = 1\nbatch = 2000"),
    entry("max-gflops = 1\nleaky-slope = 1.5"),
    entry('max-gflops = 1\nrelu-before-extra-convs = "yes"', neck="mmdet_fpn"),
    entry("max-gflops = 1\nlevels = { P3 = 0.2 }"),
    entry("max-gflops = 1\nlevels = { P3 = { max-gflop = 0.2 } }"),
    entry("max-gflops = 1\nlevels = { P3 = { max-peak-mb = 0.2 } }"),  # no per-level peak
    entry("max-gflops = 1\nlevels = { P3 = {} }"),
    entry("max-gflops = 1\nlevels = { P9 = { max-gflops = 0.2 } }"),
    entry("max-gflops = 1\nlevels = { p3 = { max-gflops = 0.2 } }"),
    entry('max-gflops = 1\nmax-increase = "lots"'),
    entry("max-gflops = 1\nmax-increase = -1"),
    entry("max-gflops = 1", neck=""),
    entry("max-gflops = 1", neck="scrfd_25g"),                    # an unknown neck
    entry("max-gflops = 1", neck="not a:path"),
    entry('max-gflops = 1\nname = " "'),
    entry("max-gflops = 1\nname = 3"),
    entry(""),                                                     # no limit
    entry("levels = {}"),                                          # still no limit
    "max-gflops = 1\n" + entry("max-gflops = 1"),                  # a limit at the top
    "[budget]\nneck = 'scrfd_2.5g'\nmax-gflops = 1\n",             # a table, not an array
    "budget = []\n",
    'input-size = "64x64"\n',                                      # no budget entries
    '[[budget]]\nmax-gflops = 1\n',                                # no neck
]

# What the loader rejects and no schema can: NOT_EXPRESSIBLE, case by case.
REJECTED_BY_LOADER_ONLY = [
    (entry("max-gflops = 1\ngn-groups = 7"), "rules of the neck spec across fields"),
    (entry("max-gflops = 1\ninput-size = 16"), "rules of the neck spec across fields"),
    (entry("max-gflops = 1\nin-channels = [8]"), "rules of the neck spec across fields"),
    (entry("max-gflops = 1\nlevels = { P7 = { max-gflops = 0.2 } }"),
     "a per-level table naming a level"),
    (entry("max-gflops = 1") * 2, "duplicate budget names"),
    (entry('max-gflops = 1\nmax-increase = "2000000%"'), "the range of a percentage"),
    (entry("max-gflops = 1", neck="nosuchmodule:make"), "a custom neck"),
    (entry("max-gflops = 1\nout-channels = 64.0"), "a whole number written as a float"),
]


@pytest.mark.parametrize("text", REJECTED_BY_BOTH)
def test_bad_configs_the_loader_rejects_fail_the_schema(tmp_path: Path, text: str) -> None:
    assert not loader_accepts(tmp_path, text)
    assert not schema_accepts(tomllib.loads(text))


@pytest.mark.parametrize(("text", "reason"), REJECTED_BY_LOADER_ONLY)
def test_what_a_schema_cannot_express_is_named(tmp_path: Path, text: str, reason: str) -> None:
    assert not loader_accepts(tmp_path, text)
    assert schema_accepts(tomllib.loads(text))  # the gap is real, and named:
    assert any(item.startswith(reason) for item in NOT_EXPRESSIBLE)


def test_a_pyproject_table_validates_like_a_standalone_file(tmp_path: Path) -> None:
    text = ('[project]\nname = "x"\n\n[tool.necktool]\ninput-size = 640\n\n'
            '[[tool.necktool.budget]]\nneck = "scrfd_2.5g"\nmax-gflops = 0.3\n'
            'levels = { P3 = { max-activation-mb = 8 } }\n')
    (tmp_path / "pyproject.toml").write_text(text)
    load_config(tmp_path / "pyproject.toml", tmp_path)
    assert schema_accepts(tomllib.loads(text)["tool"]["necktool"])


# -- values, any of them: the schema agrees with the loader ---------------------------
def _agree(tmp_path: Path, line: str) -> None:
    text = entry(f"max-gflops = 1\n{line}" if not line.startswith("max-gflops") else line)
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError):
        return
    assert loader_accepts(tmp_path, text) == schema_accepts(data), line


def kind_accepts(key: str, value: Any) -> bool:
    field = field_for_key(key)
    assert field is not None
    try:
        field.check(value)
    except BadValue:
        return False
    return True


@settings(max_examples=80, deadline=None)
@given(st.one_of(
    st.integers(-5, 9000),
    st.from_regex(r"\A ?[+-]?0?[0-9]{1,4} ?[xX]? ?[+]?[0-9]{0,4} ?\Z"),
    st.lists(st.integers(-2, 9000), max_size=3),
))
def test_any_input_size_is_judged_alike(value: Any) -> None:
    # The size's own rule (the spec's rule that it covers the coarsest stride is not).
    node = {"properties": {"input-size": SCHEMA["properties"]["input-size"]}}
    assert kind_accepts("input-size", value) == jsonschema.Draft7Validator(node).is_valid(
        {"input-size": value}), value


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([f.key for f in FIELDS if f.key != "input-size"]),
       st.one_of(st.integers(-3, 20000), st.floats(-1, 2, allow_nan=False), st.booleans(),
                 st.text(max_size=8), st.lists(st.integers(-1, 20000), max_size=4)))
def test_any_build_value_is_judged_alike(key: str, value: Any) -> None:
    if isinstance(value, float) and value.is_integer():
        return  # named in NOT_EXPRESSIBLE: JSON Schema counts 1.0 as an integer
    node = {"properties": {key: SCHEMA["properties"][key]}}
    assert kind_accepts(key, value) == jsonschema.Draft7Validator(node).is_valid(
        {key: value}), (key, value)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.floats(-1, 2e15, allow_nan=False), st.integers(-3, 10**16),
                 st.booleans()).map(lambda v: json.dumps(v).replace("Infinity", "inf")))
def test_any_limit_is_judged_alike(tmp_path_factory: pytest.TempPathFactory,
                                   value: str) -> None:
    _agree(tmp_path_factory.mktemp("limit"), f"max-gflops = {value}")


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.from_regex(r"\A ?\+?[0-9]{0,3}\.?[0-9]{0,2}(e[+-]?[0-9])? ?%? ?\Z"),
                 st.floats(0, 2e6, allow_nan=False)).map(json.dumps))
def test_any_growth_tolerance_is_judged_alike(tmp_path_factory: pytest.TempPathFactory,
                                              value: str) -> None:
    if '"' in value and re.search(r"[0-9]", value):
        number = float(re.sub(r"[^0-9.e+-]", "", value) or "nan") if re.fullmatch(
            r'" ?\+?([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9])? ?%? ?"', value) else 0
        if number > 1e6:
            return  # named in NOT_EXPRESSIBLE: the range of a percentage written as text
    _agree(tmp_path_factory.mktemp("pct"), f"max-increase = {value}")


@pytest.mark.parametrize("high", [1, 9, 10, 64, 100, 999, 1024, 8192, 16384])
def test_the_range_pattern_matches_exactly_one_to_high(high: int) -> None:
    pattern = re.compile(rf"^{_upto(high)}$")
    matched = [n for n in range(0, high * 2 + 20) if pattern.match(str(n))]
    assert matched == list(range(1, high + 1))


def test_cli_prints_the_schema_without_importing_torch() -> None:
    proc = run_without(["schema", "--format", "json"])
    assert json.loads(proc.stdout) == SCHEMA
    table = subprocess.run([sys.executable, "-m", "necktool", "schema", "--format", "markdown"],
                           capture_output=True, text=True, check=True).stdout
    assert "| max-peak-mb | budget entry | number |" in table
    assert "[[tool.necktool.budget]]" in table
