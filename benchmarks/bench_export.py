"""ONNX export wall time against the bare exporter, the seconds fp16 and int8 add, and
ONNX Runtime vs PyTorch latency.

The floor is a script that imports torch and calls ``torch.onnx.export`` with the settings
necktool uses (dynamo=True, the same dynamic shapes: each input level's own ``H_div{s}`` /
``W_div{s}`` dims, opset 18, named inputs/outputs) on the same module, writing the file.
``necktool export`` adds fvcore counting, the checks, and (by default) verification in
ONNX Runtime; it is timed with and without ``--no-verify``, and with ``--precision fp16``
and ``int8`` (the extra seconds against the fp32 export of the same run).

Per preset, in one process: the seconds the fp16 and int8 conversions take on the exported
fp32 graph, and how much longer verification of the converted file takes than that of the
fp32 one; their sum is what ``--precision`` adds to an export.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from common import NECKTOOL, PY, interleaved, paired, row

NECK = "scrfd_2.5g"

FLOOR_SCRIPT = f"""
import sys, torch
from torch.export import Dim
from necktool.necks.build import build_neck, make_inputs
model = build_neck({NECK!r})
spec = model.spec
batch = Dim("batch", min=1)
shapes = ([{{0: batch, 2: Dim(f"H_div{{s}}", min=1), 3: Dim(f"W_div{{s}}", min=1)}}
           for s in spec.input_strides],)
torch.onnx.export(model, (make_inputs(spec),), sys.argv[1], dynamo=True, opset_version=18,
                  input_names=spec.input_names,
                  output_names=spec.output_names,
                  dynamic_shapes=shapes, optimize=True, verbose=False)
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

    from necktool.deploy.export import export_onnx
    from necktool.deploy.runtimes.runners import open_session
    from necktool.necks.build import make_inputs
    from necktool.necks.weights import seeded_model
    from necktool.spec.registry import PRESETS

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


def _precision_table(repeat: int) -> None:
    """Per preset at its default size: conversion seconds and the verification delta."""
    from necktool.artifact.serving import calibration_shapes, default_cases
    from necktool.deploy.export import export_model, served_by
    from necktool.deploy.precision.convert import convert
    from necktool.deploy.tolerance import VerifyOptions
    from necktool.deploy.verify import compare_onnx
    from necktool.necks.build import make_inputs
    from necktool.necks.weights import seeded_model
    from necktool.spec.precision import DEFAULT_CALIBRATION, Precision
    from necktool.spec.registry import PRESETS

    print(f"\nWhat --precision adds per preset at its default size (in process; min of "
          f"{repeat} conversions; verification: 3 cases x 3 trials, min of 2; int8 "
          f"calibration {DEFAULT_CALIBRATION} batches)")
    print(f"{'neck':<16} {'size':>9} {'fp16 conv':>9} {'fp16 +ver':>9} {'fp16 +s':>8} "
          f"{'int8 conv':>9} {'int8 +ver':>9} {'int8 +s':>8}")
    for name, preset in PRESETS.items():
        spec = preset.spec
        model = seeded_model(spec)
        served = served_by(spec)
        proto = export_model(model, spec, make_inputs(spec), dynamic=True, opset=18,
                             served=served)
        cases = default_cases(spec, spec.input_size, 1, served)
        verify_s: dict[Precision, float] = {}
        convert_s: dict[Precision, float] = {}
        for precision in Precision:
            times = []
            for _ in range(repeat if precision is not Precision.FP32 else 1):
                start = time.perf_counter()
                converted = convert(proto, precision, spec=spec,
                                    shapes=calibration_shapes(spec, spec.input_size, 1, served))
                times.append(time.perf_counter() - start)
            convert_s[precision] = min(times)
            data = converted.SerializeToString()
            runs = []
            for _ in range(2):
                start = time.perf_counter()
                compare_onnx(data, model, spec, cases=cases, options=VerifyOptions(),
                             precision=precision)
                runs.append(time.perf_counter() - start)
            verify_s[precision] = min(runs)
        cells = []
        for precision in (Precision.FP16, Precision.INT8):
            delta = verify_s[precision] - verify_s[Precision.FP32]
            cells += [f"{convert_s[precision]:9.2f}", f"{delta:+9.2f}",
                      f"{convert_s[precision] + delta:+8.2f}"]
        h, w = spec.input_size
        print(f"{name:<16} {f'{h}x{w}':>9} " + " ".join(cells), flush=True)


def run(repeat: int) -> None:
    repeat = max(3, repeat // 2)
    with tempfile.TemporaryDirectory() as tmp:
        base = [*NECKTOOL, "export", NECK, "--onnx", "-o", f"{tmp}/n.onnx"]
        variants = {
            "floor": [PY, "-W", "ignore", "-c", FLOOR_SCRIPT, f"{tmp}/floor.onnx"],
            "(verification on)": base,
            "--no-verify": [*base, "--no-verify"],
            "--precision fp16": [*base, "--precision", "fp16"],
            "--precision int8": [*base, "--precision", "int8"],
        }
        times = interleaved(variants, repeat)
    floor = statistics.median(times["floor"])
    print(f"(interleaved: {repeat} rounds of the five commands in turn; medians, and the "
          "median of the per-round differences)")
    print(row("floor: import torch + torch.onnx.export(dynamo)", floor))
    for label, seconds in times.items():
        if label == "floor":
            continue
        t = statistics.median(seconds)
        if label.startswith("--precision"):
            extra = paired(seconds, times["(verification on)"])
            target = f"(+{extra:.2f} s over the fp32 export, paired; target <= 1 s)"
        else:
            ratio = statistics.median(x / y for x, y in zip(seconds, times["floor"],
                                                            strict=True))
            target = f"(paired ratio {ratio:.2f}x" + ("; target <= 1.05x)" if label.startswith(
                "(") else ")")
        print(row(f"necktool export {NECK} {label}", t, floor, target))
    sys.stdout.flush()
    _precision_table(repeat)
    _runtime_table(max(repeat, 3))
