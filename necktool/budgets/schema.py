"""A JSON Schema (draft-07) for the ``[tool.necktool]`` table, generated (torch-free).

Generated, never written by hand, from the same descriptions the loader checks against:
the build flags' kinds and ranges (:data:`necktool.spec.fields.FIELDS`), the metrics'
limit keys (:data:`necktool.budgets.config.METRICS`) and the presets
(:data:`necktool.spec.registry.PRESETS`). It describes the table itself, as SchemaStore's
``partial-<tool>.json`` schemas do (validate-pyproject applies one to ``tool.<tool>``), so
it validates a ``[tool.necktool]`` table and a standalone ``necktool.toml`` written with
top-level keys alike.

A schema checks each value on its own. What the loader checks across values or against
the neck is not in it (:data:`NOT_EXPRESSIBLE`); ``necktool check`` remains the judge.

Example:
    >>> schema = config_schema()
    >>> schema["required"], "max-gflops" in schema["definitions"]["entry"]["properties"]
    (['budget'], True)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from necktool.budgets.config import LEVEL_LIMIT_KEYS, METRICS
from necktool.report import Block, Heading, Note, table
from necktool.spec.fields import (
    FIELDS,
    MAX_LEVELS,
    BoolKind,
    ChannelsKind,
    ChoiceKind,
    FloatKind,
    IntKind,
    Kind,
    SizeKind,
)
from necktool.spec.registry import PRESETS
from necktool.version import __version__

SCHEMA_ID = "https://json.schemastore.org/partial-necktool.json"
DRAFT = "http://json-schema.org/draft-07/schema#"
MAX_LIMIT = 1e15  # as config._limit
MAX_PERCENT = 1e6  # as config.parse_percent
IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"  # registry's, for package.module:factory

#: What the loader rejects that no schema here can: each depends on another value or on
#: the neck, or is a range inside text.
NOT_EXPRESSIBLE = (
    "rules of the neck spec across fields (gn-groups dividing out-channels, num-outs at "
    "least the input levels, leaky-slope only with act = leaky_relu, which keys a family "
    "takes)",
    "a per-level table naming a level the entry's neck does not have (P6 on a 3-level neck)",
    "duplicate budget names (names may repeat only across entries, which JSON Schema "
    "cannot compare)",
    "the range of a percentage written as text (\"2000000%\" is over 1e6) and \"-0%\"",
    "a custom neck (package.module:factory) that cannot be imported or built",
    "a whole number written as a float where an integer is due (out-channels = 64.0): "
    "JSON Schema counts 64.0 as an integer, TOML and the loader do not",
    "a pyproject.toml without [tool.necktool], or a necktool.toml mixing top-level keys "
    "with a [tool.necktool] table (the file's shape, outside the table)",
)


def _upto(high: int) -> str:
    """A regex for the decimal integers 1..``high``, no leading zeros."""
    digits = str(high)
    parts = [f"[1-9][0-9]{{{n - 1}}}" if n > 1 else "[1-9]" for n in range(1, len(digits))]
    for i, d in enumerate(digits):  # same length: a prefix of high, then one digit below
        rest = len(digits) - i - 1
        low = "1" if i == 0 else "0"
        if int(d) > int(low):
            below = f"[{low}-{int(d) - 1}]"
            parts.append(digits[:i] + below + (f"[0-9]{{{rest}}}" if rest else ""))
    parts.append(digits)
    return "(?:" + "|".join(parts) + ")"


def kind_schema(kind: Kind[Any]) -> dict[str, Any]:
    """The JSON Schema of the values a field's kind accepts in TOML."""
    if isinstance(kind, BoolKind):
        return {"type": "boolean"}
    if isinstance(kind, IntKind):
        return {"type": "integer", "minimum": kind.low, "maximum": kind.high}
    if isinstance(kind, FloatKind):
        return {"type": "number", "minimum": kind.low, "maximum": kind.high}
    if isinstance(kind, ChoiceKind):
        return {"type": "string", "enum": [c.value for c in kind.choices]}
    if isinstance(kind, ChannelsKind):
        return {"type": "array", "maxItems": kind.max_count,
                "items": {"type": "integer", "minimum": 1, "maximum": kind.high}}
    if isinstance(kind, SizeKind):
        side = rf"\s*\+?0*{_upto(kind.high)}\s*"
        number = {"type": "integer", "minimum": 1, "maximum": kind.high}
        return {"anyOf": [
            {"type": "string", "pattern": rf"^\s*{side}(?:[xX]{side})?\s*$"},
            number,
            {"type": "array", "items": number, "minItems": 2, "maxItems": 2},
        ]}
    raise TypeError(f"no JSON Schema for {type(kind).__name__}")  # a new kind: add it here


def _settings() -> dict[str, Any]:
    return {f.key: {**kind_schema(f.kind), "description": f.help} for f in FIELDS}


def _limit(metric_label: str, unit: str, scale: str) -> dict[str, Any]:
    return {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LIMIT,
            "description": f"Fail when the {metric_label} exceed this many {unit} "
                           f"({scale}); actual > limit fails, equal passes."}


_SCALES = {"gflops": "fvcore flops / 1e9; 1 fused multiply-add = 1 flop",
           "mparams": "parameters / 1e6"}


def _limits(keys: tuple[str, ...]) -> dict[str, Any]:
    return {m.key: _limit(m.base_label, m.unit_label,
                          _SCALES.get(m.name, "MiB = 2^20 bytes, fp32"))
            for m in METRICS if m.key in keys}


def _percent() -> dict[str, Any]:
    return {"description": "Allowed growth against --baseline, in percent: \"2%\", \"2\" or "
                           "2 (default 0: any growth fails).",
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": MAX_PERCENT},
                {"type": "string", "maxLength": 40,
                 "pattern": r"^\s*\+?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?\s*%?\s*$"},
            ]}


def config_schema() -> dict[str, Any]:
    """The draft-07 JSON Schema of a ``[tool.necktool]`` table (a SchemaStore partial)."""
    level_names = [f"P{3 + i}" for i in range(MAX_LEVELS)]  # NeckSpec.level_names' rule
    entry_props: dict[str, Any] = {
        "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S",
                 "description": "Unique name of the entry (default: neck); baselines and "
                                "exports (<name>.onnx) are keyed by it."},
        "neck": {"type": "string", "minLength": 1, "maxLength": 200,
                 "description": "A preset (see 'necktool list'), a family to vary with the "
                                "build keys, or a custom neck as package.module:factory.",
                 "anyOf": [{"enum": list(PRESETS)}, {"pattern": IMPORT_PATH}]},
        **_settings(),
        **_limits(tuple(m.key for m in METRICS)),
        "levels": {
            "type": "object",
            "description": "Per-level limits by output level name (P3 = stride 8, P4, ...).",
            "propertyNames": {"enum": level_names},
            "additionalProperties": {"$ref": "#/definitions/level"},
        },
        "max-increase": _percent(),
    }
    entry = {
        "type": "object",
        "description": "One budget: a neck, how to build and size it, and its limits.",
        "required": ["neck"],
        "properties": entry_props,
        "additionalProperties": False,
        # The loader's rule: an entry gates something.
        "anyOf": [*({"required": [m.key]} for m in METRICS),
                  {"required": ["levels"], "properties": {"levels": {"minProperties": 1}}}],
    }
    level = {
        "type": "object",
        "description": "Limits of one output level.",
        "properties": _limits(LEVEL_LIMIT_KEYS),
        "additionalProperties": False,
        "minProperties": 1,
    }
    top = {**_settings(), "max-increase": _percent(), "budget": {
        "type": "array", "minItems": 1, "items": {"$ref": "#/definitions/entry"},
        "description": "The budget entries ([[tool.necktool.budget]] in pyproject.toml, "
                       "[[budget]] in necktool.toml)."}}
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID,
        "title": "necktool",
        "description": f"FLOP, parameter and memory budgets for 'necktool check' "
                       f"([tool.necktool] in pyproject.toml, or necktool.toml); generated by "
                       f"necktool {__version__}. Top-level keys are defaults for every entry.",
        "type": "object",
        "required": ["budget"],
        "properties": top,
        "additionalProperties": False,
        "definitions": {"entry": entry, "level": level},
    }


def _type(node: dict[str, Any]) -> str:
    if "anyOf" in node and "type" not in node:
        return " | ".join(_type(n) for n in node["anyOf"])
    if "enum" in node:
        return " | ".join(map(str, node["enum"])) if len(node["enum"]) <= 4 else "string"
    return str(node.get("type", "object"))


@dataclasses.dataclass(frozen=True)
class SchemaDocument:
    """The schema as a result: ``to_dict()`` is the schema itself (``--format json``); the
    table lists every key, where it goes, its type and its description."""

    schema: dict[str, Any] = dataclasses.field(default_factory=config_schema)

    def __bool__(self) -> bool:
        return True

    def failure(self) -> str | None:
        return None

    def to_dict(self) -> dict[str, Any]:
        return self.schema

    def blocks(self) -> list[Block]:
        rows = []
        places = (("top level", self.schema["properties"]),
                  ("budget entry", self.schema["definitions"]["entry"]["properties"]),
                  ("levels.<P3...>", self.schema["definitions"]["level"]["properties"]))
        for place, props in places:
            for key, node in props.items():
                if place == "budget entry" and key in self.schema["properties"] \
                        and key != "max-increase":
                    continue  # a default at the top and an override per entry: shown once
                rows.append((key, place, _type(node), re.sub(r"\s+", " ",
                                                              node.get("description", ""))))
        return [
            Heading(f"[tool.necktool] keys (JSON Schema {self.schema['$id']})"),
            table(None, ["key", "where", "type", "description"], rows),
            Note("top-level build keys are defaults every entry may override; "
                 "'necktool schema --format json' prints the schema itself"),
        ]
