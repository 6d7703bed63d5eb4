"""Latency of the budget gate: ``necktool check`` on the example config (six entries),
measured (``--no-cache``) against the torch + fvcore import floor, and answered from a
warm result cache against a minimal Typer app's ``--help`` (target: at most 1.5x). Then
``export --onnx`` over a config whose files are all up to date (target: under 2 s).

The warm runs use a cache folder of their own (``$NECKTOOL_CACHE_DIR``), filled by one
untimed run first, so the benchmark neither reads nor disturbs the project's cache.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
from pathlib import Path

import common
from common import (
    NECKTOOL,
    TORCH_FVCORE_FLOOR,
    TYPER_FLOOR,
    imports_torch,
    interleaved,
    paired,
    row,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = "examples/necktool.toml"
WARM_TARGET = 1.5  # warm check / minimal Typer --help


def run(repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="necktool-bench-cache-") as cache:
        common.ENV["NECKTOOL_CACHE_DIR"] = cache
        try:
            _run(repeat)
            run_export(repeat)
        finally:
            common.ENV.pop("NECKTOOL_CACHE_DIR", None)


def _run(repeat: int) -> None:
    measured = {"floor": TORCH_FVCORE_FLOOR,
                "check": [*NECKTOOL, "check", "--config", CONFIG, "--no-cache"],
                "check --json": [*NECKTOOL, "check", "--config", CONFIG, "--no-cache",
                                 "--format", "json"]}
    times = interleaved(measured, repeat, cwd=str(REPO))
    floor = statistics.median(times["floor"])
    print(f"(interleaved: {repeat} rounds of the three commands in turn)")
    print(row("floor: python -c 'import torch, fvcore.nn'", floor))
    for label in ("check", "check --json"):
        delta = paired(times[label], times["floor"])
        print(row(f"necktool {label} --no-cache", statistics.median(times[label]), floor,
                  f"paired delta {delta:+.3f} s (target: < 1.000 s)"))

    # The untimed first round of interleaved() fills the cache; every timed round is warm.
    warm_cmd = [*NECKTOOL, "check", "--config", CONFIG]
    warm = interleaved({"typer": TYPER_FLOOR, "warm": warm_cmd}, repeat, cwd=str(REPO))
    typer_floor = statistics.median(warm["typer"])
    ratio = statistics.median(w / t for w, t in zip(warm["warm"], warm["typer"], strict=True))
    torch = imports_torch([*NECKTOOL, "check", "--config", str(REPO / CONFIG)])
    print(row("floor: minimal Typer app --help", typer_floor))
    print(row(f"necktool check (warm cache) --config {CONFIG}",
              statistics.median(warm["warm"]), typer_floor,
              f"paired ratio {ratio:.2f}x (target: <= {WARM_TARGET}x); imports torch: {torch}"))


UP_TO_DATE_CONFIG = """input-size = "64x64"
[[budget]]
neck = "scrfd_0.5g"
max-gflops = 1
[[budget]]
name = "wide"
neck = "pafpn"
out-channels = 96
max-gflops = 5
"""


def run_export(repeat: int) -> None:
    """A second ``export --onnx`` over an unchanged config: metadata read, nothing made."""
    with tempfile.TemporaryDirectory(prefix="necktool-bench-export-") as tmp:
        Path(tmp, "necktool.toml").write_text(UP_TO_DATE_CONFIG)
        export = [*NECKTOOL, "export", "--onnx", "--trials", "1"]
        subprocess.run(export, cwd=tmp, env=common.ENV, check=True, capture_output=True)
        times = interleaved({"typer": TYPER_FLOOR, "export": export}, repeat, cwd=tmp)
        median = statistics.median(times["export"])
        print(row("floor: minimal Typer app --help", statistics.median(times["typer"])))
        print(row("necktool export --onnx (2 entries, up to date)", median,
                  statistics.median(times["typer"]),
                  f"(target: < 2.000 s: {'met' if median < 2 else 'MISSED'})"))
