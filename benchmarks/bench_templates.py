"""Re-exports at the speed of the weights: an export whose graph is in the template cache
against the cold export of the same neck (target: at most 0.4x), for one neck and for the
example config (six entries) after a weights-only change (a new ``--seed``), in the same
run; then where a warm export's seconds go.

Cold runs pass ``--no-cache`` (the exporter runs, fvcore counts). Warm runs use a cache
folder of their own (``$NECKTOOL_CACHE_DIR``), filled by the untimed first round, and each
gives other weights than the ones the templates were made with (``--seed 1`` against the
default 0), so only the graph and the counts are reused; ``--force`` makes the config export
re-export entries whose files are already there.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import common
from common import NECKTOOL, PY, interleaved, row

REPO = Path(__file__).resolve().parents[1]
NECK = "scrfd_2.5g"
CONFIG = "examples/necktool.toml"
TARGET = 0.4
IMPORTS = [PY, "-W", "ignore", "-c",
           "import necktool.cli.export_cmd, necktool.deploy.export, onnxruntime"]


def _ratio_line(label: str, warm: list[float], cold: list[float]) -> None:
    ratio = statistics.median(w / c for w, c in zip(warm, cold, strict=True))
    mark = "ok" if ratio <= TARGET else "OVER"
    print(row(label, statistics.median(warm), statistics.median(cold),
              f"paired ratio {ratio:.2f}x (target <= {TARGET}x: {mark})"))


def run(repeat: int) -> None:
    repeat = max(3, repeat // 2)
    with tempfile.TemporaryDirectory(prefix="necktool-bench-templates-") as tmp:
        common.ENV["NECKTOOL_CACHE_DIR"] = f"{tmp}/cache"
        try:
            _run(repeat, tmp)
        finally:
            common.ENV.pop("NECKTOOL_CACHE_DIR", None)


def _run(repeat: int, tmp: str) -> None:
    one = [*NECKTOOL, "export", NECK, "--onnx", "-o", f"{tmp}/n.onnx"]
    times = interleaved({"cold": [*one, "--no-cache"], "warm": [*one, "--seed", "1"],
                         "imports": IMPORTS}, repeat, cwd=str(REPO))
    print(f"(interleaved: {repeat} rounds of each command in turn; medians; 'floor' is the "
          "cold export of the same run)")
    _ratio_line(f"necktool export {NECK}, graph cached", times["warm"], times["cold"])

    out = f"{tmp}/config"
    config = [*NECKTOOL, "export", "--config", CONFIG, "--onnx", "-o", out, "--force"]
    # The untimed round fills the cache with seed 0's export; the timed warm rounds export
    # other weights (--seed 1) into the same structures.
    prime = subprocess.run([*config, "--seed", "0"], cwd=str(REPO), env=common.ENV,
                           capture_output=True, check=False)
    if prime.returncode != 0:
        raise RuntimeError(prime.stderr.decode()[-500:])
    cfg = interleaved({"cold": [*config, "--no-cache"], "warm": [*config, "--seed", "1"]},
                      repeat, cwd=str(REPO))
    _ratio_line("export of the 6-entry config, new weights", cfg["warm"], cfg["cold"])

    # Where a warm export's time goes: the imports, then each step (one run, --format json).
    proc = subprocess.run([*one, "--seed", "2", "--format", "json"], cwd=str(REPO),
                          env=common.ENV, capture_output=True, text=True, check=True)
    d = json.loads(proc.stdout)
    assert d["template"]["reused"] and d["counts_from_cache"], d["template"]
    steps = ", ".join(f"{k} {v:.2f}" for k, v in d["seconds"].items())
    print(row("imports (necktool's export path, onnxruntime)",
              statistics.median(times["imports"])))
    print(f"warm export {NECK}, its steps (s): {steps} (export: the template filled and "
          "the ONNX optimizer run; count: read from the result cache)")
