"""Start-up and profile latency of the core commands."""

from __future__ import annotations

from common import NECKTOOL, TORCH_FVCORE_FLOOR, imports_torch, row, wall


def run(repeat: int) -> None:
    bare = wall([NECKTOOL[0], "-c", "pass"], repeat)
    print(row("python -c pass (interpreter floor)", bare))
    for args in (["--help"], ["list"]):
        cmd = [*NECKTOOL, *args]
        print(row(f"necktool {' '.join(args)}", wall(cmd, repeat), target="(target < 0.300 s)")
              + f"  imports torch: {imports_torch(cmd)}")
    floor = wall(TORCH_FVCORE_FLOOR, repeat)
    print(row("floor: python -c 'import torch, fvcore.nn'", floor))
    for neck in ("scrfd_2.5g", "retinaface_r50"):
        t = wall([*NECKTOOL, "profile", neck], repeat)
        print(row(f"necktool profile {neck}", t, floor, "(target: delta < 0.300 s)"))
