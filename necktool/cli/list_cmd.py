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

    table = Table(title="necktool presets (details: --json)")
    for col in ("name", "family", "in_channels", "out", "norm", "act", "input"):
        table.add_column(col, no_wrap=True, justify="right" if col == "out" else "left")
    for p, s in rows:
        act = f"leaky({s.leaky_slope:g})" if s.act.value == "leaky_relu" else s.act.value
        table.add_row(p.name, s.family.value, ",".join(map(str, s.in_channels)),
                      str(s.out_channels), s.norm.value, act, "x".join(map(str, s.input_size)))
    stdout().print(table)
