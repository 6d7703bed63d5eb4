"""Where the time goes: the median time per run of every stage x output level, per runtime.

``necktool bench --stages``. Each runtime that exposes a per-operation profile has a
stage profiler (:data:`STAGE_PROFILERS`, keyed by runtime name, so another runtime plugs
in with one entry); each turns N profiled runs into the same :class:`RuntimeStages`:

* ``torch`` (eager): forward pre/post hooks on the outermost modules the neck places with
  :meth:`~necktool.necks.base.Neck.part_of` (``td_convs.1`` -> top-down, P4), timed with
  :func:`time.perf_counter_ns` (CPU ops are synchronous). The rest of each run (the
  forward's own Python: list handling, the root's ops) is the ``unattributed`` row.
* ``onnxruntime``: ``SessionOptions.enable_profiling`` on a session set up as ``bench``
  sets up its own. The profile's per-node ``*_kernel_time`` events are grouped by run
  (the ``model_run`` events; warm-up runs dropped) and mapped to stages through the
  exported nodes' name scopes (:func:`necktool.artifact.stages.node_parts`). ORT's optimiser
  renames and inserts nodes; read from the optimised graph it saves, a node is placed by
  (1) its name, (2) the value it computes (``conv2d_2_nchwc`` computes ``conv2d_2``'s
  value in the blocked layout; fused nodes keep the value of the last node they fuse),
  and layout conversions (``ReorderInput``/``ReorderOutput``, inserted around blocked
  convs) are shown as a stage of their own, ``reorder``, at the level of the conv they
  convert for. Kernels still unplaced are the ``unattributed`` row.

Each row is a median over the profiled runs; shares are of the sum of the rows (for ORT,
kernel time: the executor's time between kernels is the difference between the whole-run
median and that sum). The whole-run median with profiling is shown beside the one
without (``bench``'s own timing), and their ratio is the profiling overhead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from necktool import quiet
from necktool.artifact.stages import node_parts
from necktool.errors import InputError
from necktool.report import Block, num, table
from necktool.spec.neck_spec import NeckSpec

UNATTRIBUTED = "unattributed"
REORDER = "reorder"
Cell = tuple[str, int | None]  # (stage, output level or None)


@dataclasses.dataclass(frozen=True)
class StageTime:
    """One stage at one output level (``level`` None: not tied to a level)."""

    stage: str
    level: int | None
    median_s: float
    share: float

    def to_dict(self, runtime: str, level_names: list[str]) -> dict[str, Any]:
        return {"stage": self.stage,
                "level": None if self.level is None else level_names[self.level],
                "runtime": runtime, "median_s": self.median_s, "share": round(self.share, 5)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeStages:
    """A runtime's profiled runs, summarised per stage and level.

    Attributes:
        rows: Every stage x level cell seen, in the order first met, then ``unattributed``.
        runs: Profiled runs (after the warm-up).
        sum_s: The sum of the rows' medians (stages and unattributed).
        run_sum_s: The median over runs of what the rows add up to in each run (above
            ``sum_s`` when slow outliers, a busy machine's pre-emptions, fall on
            different rows in different runs).
        profiled_s: Whole-run median with profiling on.
        plain_s: Whole-run median without profiling (``bench``'s timing), when known.
        method: How the times were taken (one line).
    """

    runtime: str
    rows: tuple[StageTime, ...]
    runs: int
    sum_s: float
    run_sum_s: float
    profiled_s: float
    plain_s: float | None
    method: str

    @property
    def attributed(self) -> float:
        """The share of the total placed on a stage."""
        return 1.0 - sum(r.share for r in self.rows if r.stage == UNATTRIBUTED)

    @property
    def overhead(self) -> float | None:
        """Profiled whole-run median / unprofiled one - 1."""
        return self.profiled_s / self.plain_s - 1 if self.plain_s else None

    def summary(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "runs": self.runs, "sum_s": self.sum_s,
                "run_sum_s": self.run_sum_s,
                "profiled_median_s": self.profiled_s, "plain_median_s": self.plain_s,
                "attributed": round(self.attributed, 5),
                "overhead": None if self.overhead is None else round(self.overhead, 5),
                "method": self.method}

    def block(self, title: str, level_names: list[str]) -> Block:
        levels = sorted({r.level for r in self.rows if r.level is not None})
        stages = list(dict.fromkeys(r.stage for r in self.rows))
        cell = {(r.stage, r.level): r for r in self.rows}
        body = []
        for stage in stages:
            mine = [r for r in self.rows if r.stage == stage]
            body.append((stage, *(_ms(cell[(stage, lv)].median_s) if (stage, lv) in cell
                                  else "" for lv in levels),
                         _ms(sum(r.median_s for r in mine)),
                         f"{100 * sum(r.share for r in mine):.1f}%"))
        overhead = "" if self.overhead is None else \
            f", without profiling {_ms(self.plain_s or 0)} ms (profiling overhead " \
            f"{100 * self.overhead:+.1f}%)"
        caption = (f"median ms per run over {self.runs} profiled runs; {self.method}\n"
                   f"attributed to stages: {100 * self.attributed:.1f}%; sum of the rows "
                   f"{_ms(self.sum_s)} ms (per run, median: {_ms(self.run_sum_s)} ms) beside "
                   f"the whole-run median {_ms(self.profiled_s)} ms with profiling{overhead}")
        return table(title, ["stage", *(num(level_names[lv]) for lv in levels),
                             num("all ms"), num("share")], body, caption=caption)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def summarise(runtime: str, per_run: list[dict[Cell, float]], whole: list[float],
              plain_s: float | None, method: str) -> RuntimeStages:
    """Medians per cell over runs (a cell absent from a run counts 0); shares of the sum of
    the medians, so they add up to 1 (a median per run total would not: on a busy machine
    the slow outliers fall in different cells in different runs). Stages in the order met,
    then ``reorder``, then ``unattributed``."""
    cells = list(dict.fromkeys(c for run in per_run for c in run
                               if c[0] not in (UNATTRIBUTED, REORDER)))
    cells += sorted({c for run in per_run for c in run if c[0] == REORDER},
                    key=lambda c: -1 if c[1] is None else c[1])
    cells.append((UNATTRIBUTED, None))
    medians = [statistics.median(run.get(cell, 0.0) for run in per_run) for cell in cells]
    total = sum(medians)
    rows = tuple(StageTime(stage, level, median, median / total if total else 0.0)
                 for (stage, level), median in zip(cells, medians, strict=True))
    run_sum = statistics.median(sum(run.values()) for run in per_run)
    return RuntimeStages(runtime=runtime, rows=rows, runs=len(per_run), sum_s=total,
                         run_sum_s=run_sum, profiled_s=statistics.median(whole), plain_s=plain_s,
                         method=method)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageRun:
    """What a stage profiler gets: the module and its inputs, the fp32 ONNX export
    (serialised) when one was made, and how to run."""

    model: nn.Module
    spec: NeckSpec
    inputs: list[torch.Tensor]
    onnx: bytes | None
    threads: int
    warmup: int
    runs: int
    plain_s: float | None = None
    on_run: Callable[[], None] | None = None  # after each profiled run (a progress bar)

    def ran(self) -> None:
        if self.on_run is not None:
            self.on_run()


# -- PyTorch eager -------------------------------------------------------------------
def _placed_modules(model: nn.Module) -> list[tuple[nn.Module, Cell]]:
    """The outermost modules with a stage (the top-level children when the neck has no
    ``part_of``, as a custom neck may not)."""
    part_of = getattr(model, "part_of", None)
    if not callable(part_of):
        return [(child, (name, None)) for name, child in model.named_children()]
    placed: list[tuple[nn.Module, Cell]] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(t + ".") for t in taken):
            continue
        part = part_of(name)
        if part is not None:
            placed.append((module, part))
            taken.append(name)
    return placed


@contextlib.contextmanager
def stage_hooks(model: nn.Module) -> Iterator[dict[Cell, float]]:
    """While active, every forward of ``model`` adds each placed module's seconds to the
    yielded ``(stage, level) -> seconds`` dict (clear it between runs)."""
    current: dict[Cell, float] = defaultdict(float)
    started: dict[int, int] = {}
    hooks = []
    for module, cell in _placed_modules(model):
        def pre(mod: nn.Module, args: Any) -> None:
            started[id(mod)] = time.perf_counter_ns()

        def post(mod: nn.Module, args: Any, out: Any, cell: Cell = cell) -> None:
            current[cell] += (time.perf_counter_ns() - started.pop(id(mod))) / 1e9

        hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield current
    finally:
        for h in hooks:
            h.remove()


def profile_eager(run: StageRun) -> RuntimeStages:
    """Per-stage times of PyTorch eager through forward hooks (see the module docstring)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(run.threads)
    per_run, whole = [], []
    try:
        with torch.inference_mode(), stage_hooks(run.model) as current:
            for i in range(run.warmup + run.runs):
                current.clear()
                start = time.perf_counter_ns()
                run.model(run.inputs)
                elapsed = (time.perf_counter_ns() - start) / 1e9
                if i >= run.warmup:
                    cells = dict(current)
                    cells[(UNATTRIBUTED, None)] = max(0.0, elapsed - sum(cells.values()))
                    per_run.append(cells)
                    whole.append(elapsed)
                    run.ran()
    finally:
        torch.set_num_threads(previous)
    return summarise("torch", per_run, whole, run.plain_s,
                     "forward hooks on each stage's modules (perf_counter); unattributed: "
                     "the forward's own code between them")


# -- ONNX Runtime --------------------------------------------------------------------
def ort_cells(exported: Iterable[Any], optimised: Iterable[Any],
              part_of: Callable[[str], tuple[str, int] | None]) -> dict[str, Cell]:
    """``optimised node name -> (stage, level)`` for the nodes of ORT's optimised graph,
    following renamed, fused and inserted nodes (see the module docstring)."""
    exported = list(exported)
    by_name = node_parts(exported, part_of)
    by_value = {value: by_name[n.name] for n in exported if n.name in by_name
                for value in n.output}
    nodes = list(optimised)
    cells: dict[str, Cell] = {}
    for node in nodes:
        part = by_name.get(node.name)
        if part is None:
            for value in [*node.output, node.name]:
                base = value.removesuffix("_nchwc")
                part = by_value.get(base) or by_name.get(base)
                if part is not None:
                    break
        if part is not None and not node.op_type.startswith("Reorder"):
            cells[node.name] = part
    producer = {value: n for n in nodes for value in n.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in nodes:
        for value in n.input:
            consumers[value].append(n)
    for node in nodes:
        if not node.op_type.startswith("Reorder"):
            continue
        # ReorderInput feeds a blocked node; ReorderOutput is fed by one.
        near = [c for v in node.output for c in consumers[v]] if node.op_type == \
            "ReorderInput" else [producer[v] for v in node.input if v in producer]
        near += [producer[v] for v in node.input if v in producer] + \
            [c for v in node.output for c in consumers[v]]
        level = next((cells[n.name][1] for n in near if n.name in cells), None)
        cells[node.name] = (REORDER, level)
    return cells


def ort_session(data: bytes, threads: int, profile_dir: str | None = None) -> Any:
    """An ONNX Runtime CPU session set up as ``bench`` sets up its own (so the profiled
    graph is the timed one); with ``profile_dir``, profiling on and the optimised graph
    saved there (``optimised.onnx``)."""
    ort = quiet.onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "profile")
        options.optimized_model_filepath = os.path.join(profile_dir, "optimised.onnx")
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def ort_runs(events: list[Mapping[str, Any]], warmup: int) -> list[tuple[float,
                                                                         dict[str, float]]]:
    """``(whole run s, {node: kernel s})`` per run of an ORT profile, warm-up dropped."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and
                   e.get("name") == "model_run"), key=lambda e: e["ts"])
    kernels = [e for e in events if e.get("cat") == "Node" and
               str(e.get("name", "")).endswith("_kernel_time")]
    out = []
    for r in runs[warmup:]:
        lo, hi = r["ts"], r["ts"] + r["dur"]
        nodes: dict[str, float] = defaultdict(float)
        for e in kernels:
            if lo <= e["ts"] <= hi:
                nodes[e["name"].removesuffix("_kernel_time")] += e["dur"] / 1e6
        out.append((r["dur"] / 1e6, dict(nodes)))
    return out


def profile_ort(run: StageRun) -> RuntimeStages:
    """Per-stage kernel times in ONNX Runtime from its profiler (see the module docstring)."""
    import onnx

    if run.onnx is None:
        raise InputError("ONNX Runtime stage timing needs the exported file")
    with tempfile.TemporaryDirectory(prefix="necktool-stages-") as tmp:
        session = ort_session(run.onnx, run.threads, tmp)
        feeds = {meta.name: t.numpy() for meta, t in zip(session.get_inputs(), run.inputs,
                                                         strict=True)}
        for i in range(run.warmup + run.runs):
            session.run(None, feeds)
            if i >= run.warmup:
                run.ran()
        with open(session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
        optimised = onnx.load(os.path.join(tmp, "optimised.onnx"), load_external_data=False)
    exported = onnx.load_from_string(run.onnx)
    part_of = getattr(run.model, "part_of", None)
    cells = ort_cells(exported.graph.node, optimised.graph.node,
                      part_of if callable(part_of) else (lambda _path: None))
    per_run, whole = [], []
    for seconds, nodes in ort_runs(events, run.warmup):
        placed: dict[Cell, float] = defaultdict(float)
        for name, dur in nodes.items():
            placed[cells.get(name, (UNATTRIBUTED, None))] += dur
        per_run.append(dict(placed))
        whole.append(seconds)
    if not per_run:
        raise InputError("ONNX Runtime's profile holds no runs")
    return summarise("onnxruntime", per_run, whole, run.plain_s,
                     "ONNX Runtime profiler kernel times (fp32 export), nodes mapped through the "
                     "export's name scopes; reorder: ORT's inserted layout conversions")


#: runtime name -> its stage profiler; a runtime whose profile can be read adds one entry
STAGE_PROFILERS: dict[str, Callable[[StageRun], RuntimeStages]] = {
    "torch": profile_eager,
    "onnxruntime": profile_ort,
}


def stage_times(runtime: str, run: StageRun) -> RuntimeStages:
    """The stage x level times of ``run`` on ``runtime``.

    Raises:
        InputError: the runtime has no stage profiler.
    """
    profiler = STAGE_PROFILERS.get(str(runtime))
    if profiler is None:
        raise InputError(f"--stages: no per-stage profile for runtime {runtime!r}; "
                         f"available: {', '.join(STAGE_PROFILERS)}")
    return profiler(run)
