"""Latency of the budget gate: ``necktool check`` on the example config (six entries)."""

from __future__ import annotations

import statistics
from pathlib import Path

from common import NECKTOOL, TORCH_FVCORE_FLOOR, interleaved, paired, row

REPO = Path(__file__).resolve().parents[1]
CONFIG = "examples/necktool.toml"


def run(repeat: int) -> None:
    commands = {"floor": TORCH_FVCORE_FLOOR,
                "check": [*NECKTOOL, "check", "--config", CONFIG],
                "check --json": [*NECKTOOL, "check", "--config", CONFIG, "--json"]}
    times = interleaved(commands, repeat, cwd=str(REPO))
    floor = statistics.median(times["floor"])
    print(f"(interleaved: {repeat} rounds of the three commands in turn)")
    print(row("floor: python -c 'import torch, fvcore.nn'", floor))
    for label in ("check", "check --json"):
        delta = paired(times[label], times["floor"])
        print(row(f"necktool {label} --config {CONFIG}", statistics.median(times[label]), floor,
                  f"paired delta {delta:+.3f} s (target: < 1.000 s)"))
