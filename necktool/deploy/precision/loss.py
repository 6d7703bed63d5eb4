"""Where a reduced-precision graph loses precision, and what to do about it (torch-free).

* :func:`stage_outputs`: per ``(stage, level)`` of the neck (:mod:`necktool.artifact.stages`
  maps nodes to them), the tensor that leaves the stage: the last one, in graph order,
  that a node outside the stage (or the graph's outputs) reads.
* :func:`measure`: the fp32 and the converted graph with those tensors exposed as extra
  outputs, each run once per input in ONNX Runtime; per stage, level and output the SQNR
  ``10 log10(sum fp32^2 / sum (converted - fp32)^2)`` over every input. In an int8 (QDQ)
  graph a stage's tensor is read after its QuantizeLinear/DequantizeLinear pair, as the
  next stage sees it.
* :func:`choose_method` (``--calibration-method auto``) and :func:`suggest_keep_fp32`
  (``--min-sqnr``): each candidate converted and measured on the held-out inputs; the
  smallest set of stages kept in fp32 that meets the floor (fewest stages first, then the
  best SQNR) is measured, never guessed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from necktool.artifact.stages import PartOf, node_parts
from necktool.deploy.comparison import sqnr_db
from necktool.errors import InputError
from necktool.report import Block, Note, Table, num, table
from necktool.spec.precision import CalibrationMethod, Precision

if TYPE_CHECKING:
    import onnx

    from necktool.deploy.data import Data

Feeds = dict[str, np.ndarray]
Part = tuple[str, int]
MAX_SUGGESTION_TRIALS = 64


def stages_of(proto: onnx.ModelProto, part_of: PartOf) -> list[str]:
    """The neck's stages, in graph order."""
    return list(dict.fromkeys(s for s, _ in node_parts(proto.graph.node, part_of).values()))


def check_stages(stages: Sequence[str], have: Sequence[str]) -> None:
    """Raise unless every name in ``stages`` is one of the neck's (``have``)."""
    unknown = [s for s in stages if s not in have]
    if unknown:
        raise InputError(f"--keep-fp32: this neck has no stage {unknown[0]!r}; its stages: "
                         f"{', '.join(have) or 'none'}")


def stage_nodes(proto: onnx.ModelProto, part_of: PartOf, stages: Sequence[str]) -> list[str]:
    """The names of the nodes in ``stages`` (``--keep-fp32``).

    Raises:
        InputError: a stage the neck does not have.
    """
    parts = node_parts(proto.graph.node, part_of)
    check_stages(stages, list(dict.fromkeys(s for s, _ in parts.values())))
    return [n for n, (s, _) in parts.items() if s in stages]


def stage_outputs(proto: onnx.ModelProto, part_of: PartOf) -> dict[Part, str]:
    """``(stage, level) -> tensor`` leaving that part (see the module doc)."""
    parts = node_parts(proto.graph.node, part_of)
    producer: dict[str, Part | None] = {}
    for node in proto.graph.node:
        for out in node.output:
            producer[out] = parts.get(node.name)
    leaving: dict[Part, str] = {}
    graph_outputs = {o.name for o in proto.graph.output}
    readers: dict[str, set[Part | None]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(parts.get(node.name))
    for node in proto.graph.node:
        part = parts.get(node.name)
        if part is None:
            continue
        for out in node.output:
            if out in graph_outputs or readers.get(out, set()) - {part}:
                leaving[part] = out  # graph order: the last one wins
    return leaving


def _as_read(proto: onnx.ModelProto, tensor: str) -> str | None:
    """``tensor`` as the next node reads it in ``proto``: after a Quantize/DequantizeLinear
    pair when the quantizer put one there; ``None`` when the graph has no such tensor."""
    produced = {o for n in proto.graph.node for o in n.output}
    if tensor not in produced:
        return None
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] == tensor:
            for dq in proto.graph.node:
                if dq.op_type == "DequantizeLinear" and dq.input[0] == node.output[0]:
                    return str(dq.output[0])
    return tensor


def expose(proto: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``proto`` with ``tensors`` added as graph outputs (their element types
    from shape inference, float32 when it cannot tell)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    types: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
        for vi in [*inferred.graph.value_info, *inferred.graph.output]:
            types[vi.name] = vi.type.tensor_type.elem_type
    except Exception:  # inference is a convenience here; float32 is the fallback
        pass
    have = {o.name for o in copy.graph.output}
    for name in tensors:
        if name not in have:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(
                name, types.get(name) or onnx.TensorProto.FLOAT, None))
            have.add(name)
    return copy


def _run(proto: onnx.ModelProto, feeds: Sequence[Feeds], names: Sequence[str],
         provider: str) -> list[list[np.ndarray]]:
    from necktool.quiet import onnxruntime

    ort = onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(proto.SerializeToString(), sess_options=options,
                                   providers=[provider])
    return [[np.asarray(a, dtype=np.float32) for a in session.run(list(names), f)]
            for f in feeds]


def _sqnr(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    signal = sum(float(np.sum(np.square(r, dtype=np.float64))) for r in ref)
    noise = sum(float(np.sum(np.square(g.astype(np.float64) - r))) for r, g in
                zip(ref, got, strict=True))
    return sqnr_db(signal, noise)


@dataclasses.dataclass(frozen=True)
class PartSqnr:
    """One stage's (or output's) SQNR against fp32 at one level."""

    stage: str
    level: int
    tensor: str
    sqnr_db: float

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "level": self.level, "tensor": self.tensor,
                "sqnr_db": _finite(self.sqnr_db)}


class Reference:
    """The fp32 graph's outputs (and stage tensors) on some inputs, run once and reused."""

    def __init__(self, fp32: onnx.ModelProto, feeds: Sequence[Feeds], part_of: PartOf,
                 provider: str = "CPUExecutionProvider") -> None:
        self.fp32, self.feeds, self.provider = fp32, list(feeds), provider
        self.outputs = [o.name for o in fp32.graph.output]
        self.parts = stage_outputs(fp32, part_of)
        names = [*self.outputs, *self.parts.values()]
        runs = _run(expose(fp32, names), self.feeds, names, provider)
        self.values = {n: [r[i] for r in runs] for i, n in enumerate(names)}

    def output_sqnr(self, converted: onnx.ModelProto) -> dict[str, float]:
        """Each graph output's SQNR over every input."""
        runs = _run(converted, self.feeds, self.outputs, self.provider)
        return {n: _sqnr(self.values[n], [r[i] for r in runs])
                for i, n in enumerate(self.outputs)}

    def stage_sqnr(self, converted: onnx.ModelProto) -> list[PartSqnr]:
        """Per stage and level, from one run per input with the stage tensors exposed."""
        read = {part: _as_read(converted, t) for part, t in self.parts.items()}
        found = {p: t for p, t in read.items() if t is not None}
        names = [*self.outputs, *found.values()]
        runs = _run(expose(converted, names), self.feeds, names, self.provider)
        got = {n: [r[i] for r in runs] for i, n in enumerate(names)}
        rows = [PartSqnr(stage, level, self.parts[(stage, level)],
                         _sqnr(self.values[self.parts[(stage, level)]], got[tensor]))
                for (stage, level), tensor in found.items()]
        covered = {r.tensor for r in rows}
        rows += [PartSqnr("(output)", i, n, _sqnr(self.values[n], got[n]))
                 for i, n in enumerate(self.outputs) if n not in covered]
        return rows


@dataclasses.dataclass(frozen=True)
class MethodTrial:
    """One calibration method's held-out figures."""

    method: CalibrationMethod
    outputs: dict[str, float]  # output -> SQNR dB

    @property
    def worst_db(self) -> float:
        return min(self.outputs.values(), default=math.inf)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method.value, "worst_sqnr_db": _finite(self.worst_db),
                "outputs": {k: _finite(v) for k, v in self.outputs.items()}}


def choose_method(reference: Reference, make: Callable[[CalibrationMethod], onnx.ModelProto]
                  ) -> tuple[onnx.ModelProto, list[MethodTrial]]:
    """Each method's graph measured on the reference's inputs; the best worst-level SQNR
    is returned with every trial (the chosen one first)."""
    trials: list[tuple[MethodTrial, onnx.ModelProto]] = []
    for method in (CalibrationMethod.MINMAX, CalibrationMethod.PERCENTILE,
                   CalibrationMethod.ENTROPY):
        proto = make(method)
        trials.append((MethodTrial(method, reference.output_sqnr(proto)), proto))
    best = max(trials, key=lambda t: t[0].worst_db)
    return best[1], [best[0], *(t for t, _ in trials if t is not best[0])]


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """The smallest set of stages to keep in fp32 that meets ``min_sqnr`` (measured)."""

    min_sqnr: float
    keep_fp32: tuple[str, ...] | None  # None: no tried set meets it
    worst_db: float
    tried: tuple[tuple[tuple[str, ...], float], ...]

    def text(self) -> str:
        if self.keep_fp32 is None:
            return (f"no set of stages kept in fp32 reaches {self.min_sqnr:g} dB (tried "
                    f"{len(self.tried)}); consider --precision fp16")
        return (f"--keep-fp32 {','.join(self.keep_fp32)} reaches {_db(self.worst_db)} dB "
                f"worst-level SQNR (>= {self.min_sqnr:g} dB), measured")

    def to_dict(self) -> dict[str, Any]:
        return {"min_sqnr_db": self.min_sqnr,
                "keep_fp32": list(self.keep_fp32) if self.keep_fp32 is not None else None,
                "worst_sqnr_db": _finite(self.worst_db),
                "tried": [{"keep_fp32": list(k), "worst_sqnr_db": _finite(v)}
                          for k, v in self.tried]}


def suggest_keep_fp32(reference: Reference, stages: Sequence[str], min_sqnr: float,
                      make: Callable[[tuple[str, ...]], onnx.ModelProto]) -> Suggestion:
    """Sets of 1, 2, ... stages, each converted with them in fp32 and measured; the first
    size with a set meeting ``min_sqnr`` gives the best such set."""
    tried: list[tuple[tuple[str, ...], float]] = []
    for k in range(1, len(stages) + 1):
        meeting = []
        for keep in itertools.combinations(stages, k):
            if len(tried) >= MAX_SUGGESTION_TRIALS:
                break
            worst = min(reference.output_sqnr(make(keep)).values())
            tried.append((keep, worst))
            if worst >= min_sqnr:
                meeting.append((keep, worst))
        if meeting:
            keep, worst = max(meeting, key=lambda kw: kw[1])
            return Suggestion(min_sqnr, keep, worst, tuple(tried))
    return Suggestion(min_sqnr, None, math.nan, tuple(tried))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrecisionReport:
    """What a reduced-precision conversion was measured on and how much it lost."""

    precision: Precision
    measured_on: str  # "real features from 12 images, 4 held out" / "synthetic normal inputs"
    method: CalibrationMethod | None  # int8's calibration method (the chosen one for auto)
    per_channel: bool | None
    keep_fp32: tuple[str, ...]
    outputs: dict[str, float]  # held-out SQNR per output, against the fp32 graph
    methods: tuple[MethodTrial, ...] = ()  # auto: every method
    stages: tuple[PartSqnr, ...] = ()  # --stages
    min_sqnr: float | None = None
    suggestion: Suggestion | None = None
    note: str = ""
    data: Data | None = None  # the user's data, when calibrated/measured on it

    @property
    def worst_db(self) -> float:
        return min(self.outputs.values(), default=math.inf)

    @property
    def passed(self) -> bool:
        return self.min_sqnr is None or self.worst_db >= self.min_sqnr

    def summary(self) -> str:
        how = f"{self.method.value} calibration, " if self.method else ""
        keep = f", stages kept in fp32: {','.join(self.keep_fp32)}" if self.keep_fp32 else ""
        floor = "" if self.min_sqnr is None else \
            f" ({'meets' if self.passed else 'BELOW'} --min-sqnr {self.min_sqnr:g})"
        return (f"{self.precision.value}: worst-level SQNR {_db(self.worst_db)} dB against the "
                f"fp32 graph{floor}, {how}measured on {self.measured_on}{keep}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision.value,
            "measured_on": self.measured_on,
            "calibration_method": self.method.value if self.method else None,
            "per_channel": self.per_channel,
            "keep_fp32": list(self.keep_fp32),
            "worst_sqnr_db": _finite(self.worst_db),
            "outputs": {k: _finite(v) for k, v in self.outputs.items()},
            "methods": [m.to_dict() for m in self.methods],
            "stages": [s.to_dict() for s in self.stages],
            "min_sqnr_db": self.min_sqnr,
            "passed": self.passed,
            "suggestion": self.suggestion.to_dict() if self.suggestion else None,
            "note": self.note or None,
        }

    def blocks(self) -> list[Block]:
        out: list[Block] = []
        if self.methods:
            out.append(table("int8 calibration methods (held-out worst-level SQNR)",
                             ["method", num("worst SQNR dB"), "kept"],
                             [(m.method.value, _db(m.worst_db), "yes" if i == 0 else "")
                              for i, m in enumerate(self.methods)]))
        if self.stages:
            out.append(self.stage_table())
        out.append(Note(self.summary(), "ok" if self.passed else "fail"))
        if self.suggestion is not None:
            out.append(Note(self.suggestion.text()))
        if self.note:
            out.append(Note(self.note))
        return out

    def stage_table(self) -> Table:
        levels = sorted({s.level for s in self.stages})
        by_stage: dict[str, dict[int, float]] = {}
        for s in self.stages:
            by_stage.setdefault(s.stage, {})[s.level] = s.sqnr_db
        rows = [(stage, *(_db(v[lv]) if lv in v else "" for lv in levels))
                for stage, v in by_stage.items()]
        return table(f"SQNR (dB) of each stage's output, {self.precision.value} vs fp32",
                     ["stage", *(num(f"level {lv}") for lv in levels)], rows,
                     caption=f"measured on {self.measured_on}; level 0 is the finest (P3); "
                             "the SQNR falls where precision is lost")


def _db(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else "inf" if value > 0 else str(value)


def _finite(value: float) -> float | None:
    return round(float(value), 3) if math.isfinite(value) else None
