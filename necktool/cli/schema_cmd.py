"""``necktool schema``: the JSON Schema of ``[tool.necktool]`` (without importing torch)."""

from __future__ import annotations

from necktool.budgets.schema import SchemaDocument


def schema_command() -> SchemaDocument:
    """Print the JSON Schema of the budget config ([tool.necktool]); --format json for the file.

    The schema is draft-07, a SchemaStore partial (partial-necktool.json) describing the
    [tool.necktool] table, and validates a standalone necktool.toml too.
    """
    return SchemaDocument()
