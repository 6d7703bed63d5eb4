"""Start-up and profile latency of the core commands, each against its floor.

``--help`` and ``list`` against the smallest Typer app's ``--help`` (targets: 1.15x and
1.25x); ``profile`` against ``import torch, fvcore.nn`` (target: within 0.15 s).
"""

from __future__ import annotations

import statistics

from common import (
    NECKTOOL,
    TORCH_FVCORE_FLOOR,
    TYPER_FLOOR,
    imports_torch,
    interleaved,
    paired,
    row,
)


def run(repeat: int) -> None:
    repeat = max(repeat, 9)  # start-up figures are small: take more samples
    print(f"(interleaved: {repeat} rounds of each group's commands in turn; medians, and "
          "the median of the per-round differences from the floor)")
    times = interleaved({"floor": TYPER_FLOOR, "--help": [*NECKTOOL, "--help"],
                         "list": [*NECKTOOL, "list"]}, repeat)
    floor = statistics.median(times["floor"])
    print(row("floor: a minimal Typer app's --help", floor))
    for args, target in ((["--help"], "(target: ratio <= 1.15x)"),
                         (["list"], "(target: ratio <= 1.25x)")):
        seconds = times[args[0]]
        ratio = statistics.median(x / y for x, y in zip(seconds, times["floor"], strict=True))
        print(row(f"necktool {' '.join(args)}", statistics.median(seconds), floor,
                  f"paired ratio {ratio:.2f}x {target}")
              + f"  imports torch: {imports_torch([*NECKTOOL, *args])}")
    necks = ("scrfd_2.5g", "retinaface_r50")
    times = interleaved({"floor": TORCH_FVCORE_FLOOR,
                         **{n: [*NECKTOOL, "profile", n] for n in necks}}, repeat)
    floor = statistics.median(times["floor"])
    print(row("floor: python -c 'import torch, fvcore.nn'", floor))
    for neck in necks:
        delta = paired(times[neck], times["floor"])
        print(row(f"necktool profile {neck}", statistics.median(times[neck]), floor,
                  f"paired delta {delta:+.3f} s (target: < 0.150 s)"))
