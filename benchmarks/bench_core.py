"""Start-up and profile latency of the core commands, each against its floor.

``--help`` and ``list`` against the smallest Typer app's ``--help`` (targets: 1.15x and
1.25x); ``profile`` against ``import torch, fvcore.nn`` (target: within 0.15 s).
"""

from __future__ import annotations

from common import NECKTOOL, TORCH_FVCORE_FLOOR, TYPER_FLOOR, imports_torch, row, wall


def run(repeat: int) -> None:
    repeat = max(repeat, 9)  # start-up figures are small: take more samples
    typer_floor = wall(TYPER_FLOOR, repeat)
    print(row("floor: a minimal Typer app's --help", typer_floor))
    for args, target in ((["--help"], "(target: ratio <= 1.15x)"),
                         (["list"], "(target: ratio <= 1.25x)")):
        cmd = [*NECKTOOL, *args]
        print(row(f"necktool {' '.join(args)}", wall(cmd, repeat), typer_floor, target)
              + f"  imports torch: {imports_torch(cmd)}")
    floor = wall(TORCH_FVCORE_FLOOR, repeat)
    print(row("floor: python -c 'import torch, fvcore.nn'", floor))
    for neck in ("scrfd_2.5g", "retinaface_r50"):
        t = wall([*NECKTOOL, "profile", neck], repeat)
        print(row(f"necktool profile {neck}", t, floor, "(target: delta < 0.150 s)"))
