"""``necktool inspect`` of a ~3 MB detector ONNX file against ``python -c "import onnx"``
(target: ratio <= 2x), and whether it imports torch (it must not).

The detector is built like the test suite's (tests/detectors.py): a strided-conv backbone,
mmdetection's PAFPN on SCRFD_10G's backbone channels (88,88,224) widened to 72 so the
file is about the size of a released det_2.5g.onnx (~3 MB), a per-level head, exported by
the TorchScript exporter at opset 11 with BatchNorm folded.
"""

from __future__ import annotations

import pathlib
import statistics
import sys
import tempfile

from common import NECKTOOL, PY, imports_torch, interleaved, row

ONNX_FLOOR = [PY, "-c", "import onnx"]


def build(directory: pathlib.Path) -> pathlib.Path:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    from detectors import Detector, export_torchscript, save

    from necktool.spec.registry import PRESETS

    spec = PRESETS["insightface_scrfd_10g"].spec.replace(input_size=(640, 640),
                                                        out_channels=72)
    model = Detector(spec)
    return save(export_torchscript(model, size=(640, 640)), directory / "det.onnx")


def run(repeat: int) -> None:
    repeat = max(repeat, 7)
    with tempfile.TemporaryDirectory() as tmp:
        path = build(pathlib.Path(tmp))
        size = path.stat().st_size / 2**20
        cmd = [*NECKTOOL, "inspect", str(path)]
        print(f"(interleaved: {repeat} rounds; detector {size:.1f} MiB)")
        times = interleaved({"floor": ONNX_FLOOR, "inspect": cmd}, repeat)
        floor = statistics.median(times["floor"])
        ratio = statistics.median(x / y for x, y in zip(times["inspect"], times["floor"],
                                                          strict=True))
        print(row("floor: python -c 'import onnx'", floor))
        print(row(f"necktool inspect det.onnx ({size:.1f} MiB)",
                  statistics.median(times["inspect"]), floor,
                  f"paired ratio {ratio:.2f}x (target: ratio <= 2x)")
              + f"  imports torch: {imports_torch(cmd)}")
