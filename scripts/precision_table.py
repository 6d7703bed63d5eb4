"""Measure the verification errors of every preset at every precision (the figures behind
the default tolerances that docs/explanation/verification.md quotes).

    python scripts/precision_table.py                 # every preset, fp32/fp16/int8
    python scripts/precision_table.py scrfd_2.5g mmdet_fpn --precision int8

Each preset is exported at its default size (dynamic, so verification runs at the export
size and the two odd sizes), 3 trials per case, with the precision's default tolerances.
Prints, per preset and precision: PASS/FAIL, max abs error, the smallest atol that would
pass at the default rtol, lowest SQNR and cosine over the outputs, the largest output's
RMS, and the file size; then the worst figures per precision. Takes about 4 minutes.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from necktool import PRESETS, VerifyOptions
from necktool.deploy.export import ExportResult, export_onnx
from necktool.deploy.tolerance import PRECISION_DEFAULTS
from necktool.spec.precision import Precision


def measure(name: str, precision: Precision, where: Path) -> ExportResult:
    """The export's result, passed or not (a failed verification is a falsy result)."""
    return export_onnx(name, where / f"{name}.{precision.value}.onnx", precision=precision,
                       options=VerifyOptions(trials=3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("necks", nargs="*", default=list(PRESETS))
    parser.add_argument("--precision", action="append", choices=[p.value for p in Precision])
    args = parser.parse_args()
    precisions = [Precision(p) for p in (args.precision or [p.value for p in Precision])]
    worst: dict[Precision, dict[str, tuple[float, str]]] = {p: {} for p in precisions}
    print(f"{'preset':<24} {'prec':<5} {'ok':<4} {'max abs':>9} {'min atol':>9} "
          f"{'SQNR dB':>8} {'cosine':>10} {'out RMS':>9} {'MB':>6} {'s':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.necks:
            for precision in precisions:
                start = time.perf_counter()
                result = measure(name, precision, Path(tmp))
                v = result.verification
                assert v is not None
                rms = max(math.sqrt(o.signal / o.elements) for _, o in v.checks if o.elements)
                row = {"max abs": (v.max_abs, "max"), "min atol": (v.min_atol, "max"),
                       "SQNR": (v.min_sqnr_db, "min"), "cosine": (v.min_cosine, "min"),
                       "output RMS": (rms, "max")}
                for key, (value, how) in row.items():
                    old = worst[precision].get(key)
                    better = (lambda a, b: a > b) if how == "max" else (lambda a, b: a < b)
                    if old is None or (math.isfinite(value) and better(value, old[0])):
                        worst[precision][key] = (value, name)
                print(f"{name:<24} {precision.value:<5} {'PASS' if v.passed else 'FAIL':<4} "
                      f"{v.max_abs:>9.2e} {v.min_atol:>9.2e} {v.min_sqnr_db:>8.1f} "
                      f"{v.min_cosine:>10.7f} {rms:>9.2f} {result.nbytes / 1e6:>6.2f} "
                      f"{time.perf_counter() - start:>5.1f}", flush=True)
    print("\nworst per precision (default atol, rtol):")
    for precision in precisions:
        atol, rtol = PRECISION_DEFAULTS[precision]
        text = ", ".join(f"{key} {value:.3g} ({name})"
                         for key, (value, name) in worst[precision].items())
        print(f"  {precision.value} ({atol:g}, {rtol:g}): {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
