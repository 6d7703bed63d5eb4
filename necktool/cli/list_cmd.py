"""``necktool list``: the presets, without importing torch."""

from __future__ import annotations

from typing import Annotated

import typer

from necktool.cli.options import Json
from necktool.cli.output import print_json, stdout
from necktool.registry import PRESETS, list_necks


def list_command(
    pattern: Annotated[str, typer.Argument(help="Shell wildcard, e.g. 'scrfd_*'.")] = "*",
    json_out: Json = False,
) -> None:
    """List the neck presets with their family, channels and default input size."""
    names = list_necks(pattern)
    rows = [(PRESETS[n], PRESETS[n].spec) for n in names]
    if json_out:
        print_json([{"name": p.name, "family": s.family.value, "in_channels": list(s.in_channels),
                     "out_channels": s.out_channels, "norm": s.norm.value, "act": s.act.value,
                     "input_size": list(s.input_size), "description": p.description}
                    for p, s in rows])
        return
    from rich.table import Table

    table = Table(title="necktool presets")
    for col in ("name", "family", "in -> out", "norm", "act", "input", "description"):
        table.add_column(col)
    for p, s in rows:
        act = s.act.value + (f"({s.leaky_slope:g})" if s.act.value == "leaky_relu" else "")
        table.add_row(p.name, s.family.value,
                      f"{','.join(map(str, s.in_channels))} -> {s.out_channels}",
                      s.norm.value, act, "x".join(map(str, s.input_size)), p.description)
    stdout().print(table)
