"""Latency of the budget gate: ``necktool check`` on the example config (six entries)."""

from __future__ import annotations

from pathlib import Path

from common import NECKTOOL, TORCH_FVCORE_FLOOR, row, wall

REPO = Path(__file__).resolve().parents[1]
CONFIG = "examples/necktool.toml"


def run(repeat: int) -> None:
    floor = wall(TORCH_FVCORE_FLOOR, repeat)
    print(row("floor: python -c 'import torch, fvcore.nn'", floor))
    for args, target in (
        (["check", "--config", CONFIG], "(target: delta < 1.000 s)"),
        (["check", "--config", CONFIG, "--json"], "(target: delta < 1.000 s)"),
    ):
        t = wall([*NECKTOOL, *args], repeat, cwd=str(REPO))
        print(row(f"necktool {' '.join(args)}", t, floor, target))
