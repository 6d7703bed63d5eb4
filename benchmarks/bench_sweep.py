"""``necktool sweep`` cost against the number of sizes: it should grow linearly.

Each extra size is one more fvcore trace (plus one eager forward) of an already built
neck. Sizes are kept small and close together (256 to 480 px) so that the figure is
dominated by the per-trace overhead rather than by the convolutions at large sizes.

Two views: whole commands against the torch + fvcore import floor (what a user waits
for), and, because start-up noise on a shared machine can swamp a few tenths of a
second, the library call timed in one warmed-up process (every shape seen once, so
first-shape JIT and oneDNN set-up are excluded) as the minimum of ``repeat`` round-robin
runs (the minimum is the least disturbed run).
"""

from __future__ import annotations

import json
import subprocess

from common import NECKTOOL, PY, TORCH_FVCORE_FLOOR, row, wall

SIZES = {1: "256", 4: "256:352:32", 8: "256:480:32"}

IN_PROCESS = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from necktool.analysis.sweep import parse_sizes, sweep
repeat, specs = int(sys.argv[1]), json.loads(sys.argv[2])
sweep(["scrfd_2.5g"], parse_sizes(specs["8"]))  # warm-up: imports, JIT, every shape once
out = {count: float("inf") for count in specs}
for _ in range(repeat):  # round-robin, so a burst of load hits every count alike
    for count, text in specs.items():
        start = time.perf_counter()
        sweep(["scrfd_2.5g"], parse_sizes(text))
        out[count] = min(out[count], time.perf_counter() - start)
print(json.dumps(out))
"""


def run(repeat: int) -> None:
    floor = wall(TORCH_FVCORE_FLOOR, repeat)
    print(row("floor: python -c 'import torch, fvcore.nn'", floor))
    for count, sizes in SIZES.items():
        t = wall([*NECKTOOL, "sweep", "scrfd_2.5g", "--sizes", sizes, "--json"], repeat)
        print(row(f"necktool sweep scrfd_2.5g --sizes {sizes} ({count})", t, floor))

    proc = subprocess.run([PY, "-W", "ignore", "-c", IN_PROCESS, str(repeat), json.dumps(SIZES)],
                          capture_output=True, text=True, check=True)
    best = {int(k): v for k, v in json.loads(proc.stdout).items()}
    for count, seconds in best.items():
        print(row(f"sweep() in process, {count} size(s), min of {repeat}", seconds)
              + f"  {seconds / count:.3f} s/size")
    early, late = (best[4] - best[1]) / 3, (best[8] - best[4]) / 4
    verdict = "linear" if late <= 1.5 * early + 0.02 else "SUPERLINEAR"
    print(f"per-size increment: 1->4 sizes {early:.3f} s/size, 4->8 sizes {late:.3f} s/size: "
          f"{verdict} (the later sizes are larger, so their increment is somewhat larger)")
