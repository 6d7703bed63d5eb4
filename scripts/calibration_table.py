"""int8 on real features: calibration on seeded random inputs vs on real features, per
calibration method, measured on held-out real features (the figures README.md's "Real data
through reduced precision" quotes).

    python scripts/calibration_table.py                  # every preset
    python scripts/calibration_table.py scrfd_2.5g retinaface_mnet

Real photos from scikit-image's data module (tests/backbones.PHOTOS, a quarter of their
size, so their sizes differ) are turned into each neck's input features by a small
backbone with seeded weights (tests/backbones.py), with the family's preprocessing; a
quarter of them are held out (necktool.deploy.data.split). Each neck (seed 0, dynamic
export) is quantized with per-channel weights (and, for MinMax, per-tensor too) and its
worst-level SQNR against the fp32 graph printed for the held-out features.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import backbones

from necktool import PRESETS
from necktool.artifact.serving import Served, calibration_shapes
from necktool.deploy.data import DEFAULT_HOLDOUT, load_data
from necktool.deploy.export import export_model
from necktool.deploy.precision.convert import to_int8
from necktool.deploy.precision.loss import Reference
from necktool.necks.build import make_inputs
from necktool.necks.weights import seeded_model
from necktool.spec.precision import CalibrationMethod
from necktool.spec.registry import resolve_spec

METHODS = (CalibrationMethod.MINMAX, CalibrationMethod.PERCENTILE, CalibrationMethod.ENTROPY)
SIZE = (128, 128)  # the export's traced size; the features keep the photos' own sizes


def measure(name: str, photos: Path, where: Path) -> dict[str, tuple[float, float]]:
    spec = resolve_spec(name, input_size=SIZE)
    backbone = backbones.export_backbone(where / f"{name}.backbone.onnx", spec.in_channels)
    data = load_data(spec, images=photos, backbone=backbone, holdout=DEFAULT_HOLDOUT)
    assert data is not None
    model = seeded_model(spec, seed=0)
    served = Served.legacy(True) if spec.info.levels is None else None
    proto = export_model(model, spec, make_inputs(spec, SIZE, 1, seed=0), dynamic=True,
                         opset=18, served=served)
    held = [s.feeds(spec.input_names) for s in data.holdout]
    calib = [s.feeds(spec.input_names) for s in data.calibration]
    reference = Reference(proto, held, model.part_of)  # type: ignore[arg-type]
    shapes = calibration_shapes(spec, SIZE, 1, Served.legacy(True))
    row: dict[str, tuple[float, float]] = {}
    for method in METHODS:
        for per_channel in (True, False) if method is CalibrationMethod.MINMAX else (True,):
            random = to_int8(proto, spec, shapes, 8, method=method, per_channel=per_channel)
            real = to_int8(proto, spec, shapes, feeds=calib, method=method,
                           per_channel=per_channel)
            key = f"{method.value}{' per-tensor' if not per_channel else ''}"
            row[key] = (min(reference.output_sqnr(random).values()),
                        min(reference.output_sqnr(real).values()))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("necks", nargs="*", default=list(PRESETS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        backbones.write_photos(photos)
        print(f"held-out worst-level int8 SQNR (dB) vs the fp32 graph; {len(backbones.PHOTOS)} "
              f"photos, {DEFAULT_HOLDOUT:g} held out; calibrated on 8 seeded random batches "
              "('random') or the other photos' features ('real')", flush=True)
        header = None
        for name in args.necks:
            start = time.perf_counter()
            row = measure(name, photos, Path(tmp))
            if header is None:
                header = list(row)
                print(f"{'preset (random / real)':<24}" + "".join(f"{h:>22}" for h in header))
            cells = "".join(f"{f'{a:.1f} / {b:.1f}':>22}" for a, b in (row[h] for h in header))
            print(f"{name:<24}{cells}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
