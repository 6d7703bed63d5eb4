"""What stage profiling costs: whole-run medians with and without it, side by side.

For each runtime the two are measured in the same process, interleaved run by run (plain,
profiled, plain, ...) so that load on a shared machine falls on both alike, each call
timed from outside with ``perf_counter``: PyTorch eager without and with the stage hooks
(:func:`necktool.latency.stages.stage_hooks`, on a copy of the module), ONNX
Runtime on two sessions set up alike, one with ``enable_profiling``
(:func:`necktool.latency.stages.ort_session`).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

SIZE = (640, 640)
NECKS = ("scrfd_2.5g", "retinaface_mnet", "insightface_scrfd_10g")


def _interleaved(plain: Callable[[], Any], profiled: Callable[[], Any],
                 runs: int) -> tuple[float, float]:
    for _ in range(3):  # warm-up of both
        plain()
        profiled()
    a, b = [], []
    for _ in range(runs):
        for call, out in ((plain, a), (profiled, b)):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def _measure(name: str, runs: int) -> list[tuple[str, float, float]]:
    import torch

    from necktool.deploy.export import export_model
    from necktool.latency.stages import ort_session, stage_hooks
    from necktool.necks.build import build_neck, make_inputs
    from necktool.spec.registry import resolve_spec

    spec = resolve_spec(name, input_size=SIZE)
    model = build_neck(spec)
    inputs = make_inputs(spec, SIZE, 1, seed=0)
    watched = copy.deepcopy(model)  # the same weights; only this copy carries hooks
    with torch.inference_mode(), stage_hooks(watched) as cells:
        def hooked() -> None:
            cells.clear()
            watched(inputs)
        eager = _interleaved(lambda: model(inputs), hooked, runs)
    data = export_model(model, spec, inputs, dynamic=False, opset=18).SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        plain, profiled = ort_session(data, 1), ort_session(data, 1, tmp)
        feeds = {m.name: t.numpy() for m, t in zip(plain.get_inputs(), inputs, strict=True)}
        ort = _interleaved(lambda: plain.run(None, feeds), lambda: profiled.run(None, feeds),
                           runs)
        profiled.end_profiling()
    return [("torch", *eager), ("onnxruntime", *ort)]


def run(repeat: int) -> None:
    import torch

    runs = max(repeat * 6, 30)
    print(f"(whole-run medians in ms over {runs} interleaved runs each, 1 thread, {SIZE[0]}x"
          f"{SIZE[1]}; overhead = profiled / plain - 1)")
    torch.set_num_threads(1)
    for name in NECKS:
        for runtime, plain, profiled in _measure(name, runs):
            overhead = 100 * (profiled / plain - 1)
            print(f"  {name:24s} {runtime:12s} plain {plain * 1e3:8.3f}  with stage "
                  f"profiling {profiled * 1e3:8.3f}  overhead {overhead:+6.1f}%", flush=True)
