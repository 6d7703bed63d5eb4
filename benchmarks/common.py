"""Timing helpers shared by the benchmark sections.

Machines here are shared and noisy, so every figure is quoted next to a floor measured
in the same run (as a ratio), and each command is timed as the median of several fresh
processes. Bytecode caching is on (an environment with PYTHONDONTWRITEBYTECODE would
recompile necktool on every start and measure the compiler instead).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

PY = sys.executable
NECKTOOL = [PY, "-m", "necktool"]
TORCH_FVCORE_FLOOR = [PY, "-W", "ignore", "-c", "import torch, fvcore.nn"]
# The smallest Typer app: one command, one option; its --help is the start-up floor.
MINIMAL_TYPER = """
import typer
app = typer.Typer()
@app.command()
def main(name: str = "x") -> None:
    \"\"\"Say hello.\"\"\"
app()
"""
TYPER_FLOOR = [PY, "-c", MINIMAL_TYPER, "--help"]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONWARNINGS"] = "ignore"


def wall(cmd: Sequence[str], repeat: int = 5, cwd: str | None = None) -> float:
    """Median wall time in seconds of ``cmd`` run ``repeat`` times as a fresh process
    (after one untimed run that warms the file cache and writes bytecode)."""
    times = []
    for i in range(repeat + 1):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, cwd=cwd, env=ENV, check=False)
        if i:
            times.append(time.perf_counter() - start)
        if proc.returncode != 0:  # a crash is fast: never let it pass for a timing
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: "
                               f"{proc.stderr.decode()[-500:]}")
    return statistics.median(times)


def interleaved(cmds: dict[str, Sequence[str]], repeat: int = 5,
                cwd: str | None = None) -> dict[str, list[float]]:
    """Wall times of several commands run in alternating rounds (one untimed round first):
    on a shared machine, load that drifts over minutes then falls on every command alike,
    so per-round differences (:func:`paired`) are steadier than separate medians."""
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for i in range(repeat + 1):
        for label, cmd in cmds.items():
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, cwd=cwd, env=ENV, check=False)
            if i:
                times[label].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: "
                                   f"{proc.stderr.decode()[-500:]}")
    return times


def paired(a: list[float], b: list[float]) -> float:
    """Median of the per-round differences ``a - b`` (see :func:`interleaved`)."""
    return statistics.median(x - y for x, y in zip(a, b, strict=True))


def imports_torch(cmd: Sequence[str]) -> bool:
    """Whether running ``cmd`` (a ``python -m necktool ...`` line) imports torch."""
    probe = ("import runpy, sys; sys.argv = ['necktool', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('necktool', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "sys.stderr.write('TORCH=%s' % ('torch' in sys.modules))")
    proc = subprocess.run([PY, "-c", probe, *cmd[3:]], capture_output=True, text=True,
                          check=False, env=ENV)
    return "TORCH=True" in proc.stderr


def row(label: str, seconds: float, floor: float | None = None, target: str = "") -> str:
    extra = f"  floor {floor:.3f} s  delta {seconds - floor:+.3f} s  ratio {seconds / floor:.2f}x" \
        if floor else ""
    return f"{label:<48} {seconds:7.3f} s{extra}  {target}".rstrip()
