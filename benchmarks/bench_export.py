"""ONNX export wall time against the bare exporter, and ONNX Runtime vs PyTorch latency.

The floor is a script that imports torch and calls ``torch.onnx.export`` with the settings
necktool uses (dynamo=True, tied dynamic shapes, opset 18, named inputs/outputs) on the
same module, writing the file. ``necktool export`` adds fvcore counting, the checks, and
(by default) verification in ONNX Runtime; it is timed with and without ``--no-verify``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from common import NECKTOOL, PY, row, wall

NECK = "scrfd_2.5g"

FLOOR_SCRIPT = f"""
import sys, torch
from necktool.build import build_neck, make_inputs
from necktool.export import _dynamic_shapes
model = build_neck({NECK!r})
spec = model.spec
torch.onnx.export(model, (make_inputs(spec),), sys.argv[1], dynamo=True, opset_version=18,
                  input_names=spec.input_names,
                  output_names=spec.output_names,
                  dynamic_shapes=_dynamic_shapes(spec), optimize=True, verbose=False)
"""


def _latency(fn: object, repeat: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    assert callable(fn)
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _runtime_table(repeat: int) -> None:
    import torch

    from necktool.build import make_inputs
    from necktool.export import export_onnx
    from necktool.registry import PRESETS
    from necktool.verify import open_session
    from necktool.weights import seeded_model

    print(f"ONNX Runtime (CPU) vs PyTorch eager, batch 1, static export at the preset's size, "
          f"median of {repeat}, torch threads {torch.get_num_threads()}")
    print(f"{'neck':<16} {'size':>9} {'torch ms':>9} {'ort ms':>9} {'ort/torch':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, preset in PRESETS.items():
            spec = preset.spec
            path = f"{tmp}/{name}.onnx"
            export_onnx(name, path, dynamic=False, verify=False)
            model = seeded_model(spec)
            inputs = make_inputs(spec)
            session = open_session(path, "CPUExecutionProvider")
            feeds = {n: t.numpy() for n, t in zip(spec.input_names, inputs, strict=True)}

            def eager(model: object = model, inputs: object = inputs) -> None:
                with torch.no_grad():
                    model(inputs)  # type: ignore[operator]

            t_torch = _latency(eager, repeat)
            t_ort = _latency(lambda s=session, f=feeds: s.run(None, f), repeat)
            h, w = spec.input_size
            print(f"{name:<16} {f'{h}x{w}':>9} {t_torch * 1e3:9.1f} {t_ort * 1e3:9.1f} "
                  f"{t_ort / t_torch:9.2f}")


def run(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        floor = wall([PY, "-W", "ignore", "-c", FLOOR_SCRIPT, f"{tmp}/floor.onnx"], repeat)
        print(row("floor: import torch + torch.onnx.export(dynamo)", floor))
        for extra, label in (([], "(verification on)"), (["--no-verify"], "--no-verify")):
            cmd = [*NECKTOOL, "export", NECK, "--onnx", "-o", f"{tmp}/n.onnx", *extra]
            t = wall(cmd, repeat)
            print(row(f"necktool export {NECK} {label}", t, floor, "(target: ratio < 1.5x)"))
    sys.stdout.flush()
    _runtime_table(max(repeat, 3))
