"""Run every benchmark section and print the figures (``python benchmarks/run.py``).

Each section is a module ``benchmarks/bench_*.py`` with a ``run(repeat: int) -> None``.
Pass section names to run only some: ``python benchmarks/run.py core export``.
"""

from __future__ import annotations

import importlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str]) -> None:
    repeat = 5
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    wanted = [a for a in argv if not a.startswith("-")] or names
    for name in wanted:
        print(f"== {name} ==", flush=True)
        importlib.import_module(f"bench_{name}").run(repeat)


if __name__ == "__main__":
    main(sys.argv[1:])
