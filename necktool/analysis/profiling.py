"""Per-level FLOPs and parameters through fvcore.

Unit: fvcore counts one fused multiply-add as one flop (i.e. MACs), the convention of
the SCRFD paper's GFLOPs. On top of fvcore's defaults necktool registers:

* ``aten::add`` / ``aten::add_``: one flop per output element. These are the top-down
  and bottom-up fusions; fvcore would otherwise skip them with a warning.
* ``aten::leaky_relu`` / ``aten::leaky_relu_`` and ``aten::silu`` / ``aten::silu_``:
  ignored, exactly as fvcore ignores ``aten::relu`` (activations are free in its
  convention).

Whatever is still unsupported is returned in :attr:`ProfileResult.unsupported_ops`.

Per-level attribution: every counted op belongs to the level whose spatial size its
output has, so a bottom-up stride-2 conv from P3 counts towards P4, and an upsample
towards the finer level it feeds; an extra level's conv counts towards the extra level.
Parameters follow the module that owns them the same way. With the shipped necks every op
lands on a level, so the levels sum exactly to the total; anything that matches no level
is reported as ``unattributed``. That includes ops at a size two levels share (extra
levels of a tiny image, P6 and P7 both 1x1), which no size can tell apart.

Memory and the second count come from the same forward (:mod:`necktool.analysis.memory`): the
trace runs under ``torch.no_grad()`` (an inference forward; fvcore's counts are the same
with and without grad) with a :class:`~necktool.analysis.memory.ForwardTracker` active, which
records the bytes of every tensor the forward creates, by level and at peak, and the
conv multiply-adds by ``torch.utils.flop_counter``'s formula.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from necktool.analysis.memory import ForwardTracker
from necktool.analysis.plan import ProfilePlan
from necktool.analysis.receptive import ReceptiveField, ReceptiveFields, receptive_fields
from necktool.errors import CustomNeckError
from necktool.necks.build import build_neck, check_neck_outputs, input_tensors
from necktool.report import Block, Note, Table, channels_text, num, share, size_text, table
from necktool.spec.neck_spec import NeckSpec, neck_header
from necktool.units import (
    COUNTING_BUG,
    CROSS_CHECK,
    FP32_BYTES,
    GFLOPS,
    MEMORY_NOTE,
    MEMORY_UNIT,
    MIB_CAPTION,
    UNIT,
    UNIT_CAPTION,
    mib,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LevelProfile:
    """One output level: where it is, what it outputs, and what it costs."""

    name: str
    stride: int
    shape: tuple[int, ...]
    flops: int
    params: int
    activation_bytes: int
    #: what one output pixel sees (:mod:`necktool.analysis.receptive`); None: not readable
    receptive_field: ReceptiveField | None = None

    @property
    def param_bytes(self) -> int:
        return FP32_BYTES * self.params

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stride": self.stride, "shape": list(self.shape),
                "flops": self.flops, "params": self.params,
                "activation_bytes": self.activation_bytes,
                "receptive_field": None if self.receptive_field is None
                else self.receptive_field.to_dict()}


@dataclasses.dataclass(frozen=True)
class MemoryProfile:
    """fp32 bytes of one forward (docs/how-to/profile.md, "Memory").

    Attributes:
        param_bytes: 4 x parameters.
        input_bytes: The level tensors in.
        output_bytes: The level tensors out.
        activation_bytes: Every tensor the forward creates (outputs included; views and
            in-place results allocate nothing), summed over the forward.
        peak_activation_bytes: The most bytes held at once by tensors the forward creates,
            inputs not included, following their real lifetimes in a no_grad forward.
    """

    param_bytes: int
    input_bytes: int
    output_bytes: int
    activation_bytes: int
    peak_activation_bytes: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        return (f"memory (fp32, {MIB_CAPTION}): peak {mib(self.peak_activation_bytes)} MiB "
                f"held at once by the activations, {mib(self.activation_bytes)} MiB created "
                f"in all; params {mib(self.param_bytes)} MiB, inputs "
                f"{mib(self.input_bytes)} MiB, outputs {mib(self.output_bytes)} MiB")


@dataclasses.dataclass(frozen=True)
class CrossCheck:
    """fvcore's conv count against a second, independent one from the same forward:
    ``torch.utils.flop_counter``'s conv formula on every conv call, halved (it counts a
    multiply and an add); for an export, also the ONNX graph's own count (from shape
    inference). They must be equal; a difference is a counting bug."""

    fvcore_conv_macs: int
    flop_counter_conv_macs: int
    onnx_conv_macs: int | None = None  # an export's graph; None for a profile

    @property
    def agree(self) -> bool:
        counts = {self.fvcore_conv_macs, self.flop_counter_conv_macs}
        if self.onnx_conv_macs is not None:
            counts.add(self.onnx_conv_macs)
        return len(counts) == 1

    def with_onnx(self, onnx_conv_macs: int) -> CrossCheck:
        """This check with the ONNX graph's count added."""
        return dataclasses.replace(self, onnx_conv_macs=onnx_conv_macs)

    def to_dict(self) -> dict[str, Any]:
        return {"flop_counter_conv_macs": self.flop_counter_conv_macs,
                "fvcore_conv_macs": self.fvcore_conv_macs, "agree": self.agree}

    def note(self) -> Note:
        if self.agree:
            return Note(f"conv MACs cross-checked with {CROSS_CHECK}: equal")
        return Note(self.failure(), "fail")

    def failure(self) -> str:
        return (f"conv MACs differ: {self.fvcore_conv_macs:,} from fvcore vs "
                f"{self.flop_counter_conv_macs:,} from {CROSS_CHECK} ({COUNTING_BUG})")


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """FLOPs (fvcore units) and parameters of one neck at one input size."""

    spec: NeckSpec
    input_size: tuple[int, int]
    batch: int
    levels: tuple[LevelProfile, ...]
    stages: dict[str, int]
    stage_params: dict[str, int]
    operators: dict[str, int]
    unsupported_ops: dict[str, int]
    memory: MemoryProfile
    cross_check: CrossCheck
    unattributed_flops: int = 0
    unattributed_params: int = 0
    unattributed_activation_bytes: int = 0
    receptive: ReceptiveFields | None = None

    def __bool__(self) -> bool:
        """False when the two conv counts disagree (the CLI exits 1)."""
        return self.cross_check.agree

    def failure(self) -> str | None:
        return None if self.cross_check.agree else \
            f"{self.neck} at {size_text(self.input_size)}: {self.cross_check.failure()}"

    @property
    def neck(self) -> str:
        return self.spec.label

    @property
    def flops(self) -> int:
        return sum(self.operators.values())

    @property
    def params(self) -> int:
        return sum(lv.params for lv in self.levels) + self.unattributed_params

    @property
    def gflops(self) -> float:
        return self.flops / GFLOPS

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    @property
    def unit(self) -> str:
        return UNIT

    def to_dict(self) -> dict[str, Any]:
        """Stable, JSON-ready dict; every count is an exact integer."""
        return {
            **neck_header(self.spec, self.input_size, self.batch),
            "flops": self.flops,
            "params": self.params,
            "memory_unit": MEMORY_UNIT,
            "memory_note": MEMORY_NOTE,
            "memory": self.memory.to_dict(),
            "levels": [lv.to_dict() for lv in self.levels],
            "stages": dict(self.stages),
            "stage_params": dict(self.stage_params),
            "operators": dict(self.operators),
            "unsupported_ops": dict(self.unsupported_ops),
            "unattributed": {"flops": self.unattributed_flops, "params": self.unattributed_params,
                             "activation_bytes": self.unattributed_activation_bytes},
            "cross_check": self.cross_check.to_dict(),
            **({"receptive_field_unreadable": self.receptive.unreadable}
               if self.receptive is not None and self.receptive.unreadable else {}),
        }

    @property
    def title(self) -> str:
        return (f"{self.neck} ({self.spec.family}) at {size_text(self.input_size)}, "
                f"batch {self.batch}")

    def blocks(self) -> list[Block]:
        """Per-level, per-stage and per-operator tables (FLOPs in fvcore units), and a line
        naming the operators fvcore could not count, if any."""
        flops, params = self.flops, self.params
        rows = [(lv.name, str(lv.stride), str(tuple(lv.shape)), f"{lv.flops:,}",
                 f"{lv.flops / GFLOPS:.4f}", f"{lv.params:,}") for lv in self.levels]
        if self.unattributed_flops or self.unattributed_params:
            rows.append(("unattributed", "", "", f"{self.unattributed_flops:,}",
                         f"{self.unattributed_flops / GFLOPS:.4f}",
                         f"{self.unattributed_params:,}"))
        out: list[Block] = [
            table(self.title, ["level", num("stride"), num("output (N, C, H, W)"), num("FLOPs"),
                               num("GFLOPs"), num("params")], rows,
                  footer=("total", "", "", f"{flops:,}", f"{flops / GFLOPS:.4f}", f"{params:,}"),
                  caption=UNIT_CAPTION),
            table("by stage", ["stage", num("FLOPs"), num("share"), num("params")],
                  [(name, f"{value:,}", share(value, flops),
                    f"{self.stage_params.get(name, 0):,}")
                   for name, value in self.stages.items()]),
            table("by operator", ["operator", num("FLOPs"), num("share")],
                  [(name, f"{value:,}", share(value, flops))
                   for name, value in self.operators.items()]),
        ]
        shared = [lv.name for lv in self.levels
                  if [o.shape for o in self.levels].count(lv.shape) > 1]
        if shared:
            out.append(Note(f"levels {', '.join(shared)} have the same size here, so their "
                            "ops and parameters are counted under 'unattributed'"))
        out += [self.memory_table(), Note(self.memory.summary())]
        if self.receptive is not None:
            out.append(self.receptive.table(self.spec.level_names, self.spec.input_names,
                                            self.spec.strides))
        if self.unsupported_ops:
            out.append(Note("not counted (no fvcore handle): " + ", ".join(
                f"{op} x{n}" for op, n in self.unsupported_ops.items())))
        out.append(self.cross_check.note())
        return out

    def memory_table(self) -> Table:
        """Bytes of the tensors the forward creates, by the level whose size they have."""
        rows = [(lv.name, f"{lv.activation_bytes:,}", mib(lv.activation_bytes))
                for lv in self.levels]
        if self.unattributed_activation_bytes:
            n = self.unattributed_activation_bytes
            rows.append(("unattributed", f"{n:,}", mib(n)))
        total = self.memory.activation_bytes
        return table("activations by level", ["level", num("bytes"), num("MiB")], rows,
                     footer=("total", f"{total:,}", mib(total)), caption=MIB_CAPTION)


@dataclasses.dataclass(frozen=True)
class ProfileSet:
    """Several profiles (``profile`` with several names): each, then a comparison."""

    results: tuple[ProfileResult, ...]

    def __bool__(self) -> bool:
        return all(self.results)

    def failure(self) -> str | None:
        return "; ".join(f for r in self.results if (f := r.failure())) or None

    def to_dict(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.results]

    def blocks(self) -> list[Block]:
        out = [b for r in self.results for b in r.blocks()]
        out.append(comparison_table(self.results))
        return out


def comparison_table(results: Sequence[ProfileResult]) -> Table:
    """One row per neck, for ``profile`` with several names."""
    return table("comparison", ["neck", num("out"), "input", num("GFLOPs"), num("FLOPs"),
                                num("params"), num("peak MiB")],
                 [(r.neck, channels_text(r.spec.level_channels), size_text(r.input_size),
                   f"{r.gflops:.4f}", f"{r.flops:,}", f"{r.params:,}",
                   mib(r.memory.peak_activation_bytes))
                  for r in results],
                 caption=f"{UNIT_CAPTION}; peak MiB: activations held at once, {MIB_CAPTION}")


# -- fvcore --------------------------------------------------------------------------
def _add_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """One flop per output element of an elementwise add."""
    from fvcore.nn.jit_handles import get_shape

    numel = 1
    for dim in get_shape(outputs[0]) or []:
        numel *= dim
    return Counter({"add": numel})


Handle = Callable[[list[Any], list[Any]], Any]


def _extra_handles() -> dict[str, Handle | None]:
    return {
        "aten::add": _add_flop_jit,
        "aten::add_": _add_flop_jit,
        "aten::leaky_relu": None,  # None = ignore, as fvcore ignores aten::relu
        "aten::leaky_relu_": None,
        "aten::silu": None,  # the YOLO necks' activation, free like relu
        "aten::silu_": None,
    }


def _recording(handle: Handle, events: list[tuple[tuple[int, ...], int]]) -> Handle:
    """Wrap an fvcore handle to also record (output shape, count) for level attribution."""
    from fvcore.nn.jit_handles import get_shape

    def wrapped(inputs: list[Any], outputs: list[Any]) -> Any:
        count = handle(inputs, outputs)
        total = sum(count.values()) if isinstance(count, Counter) else count
        events.append((tuple(get_shape(outputs[0]) or ()), int(total)))
        return count

    return wrapped


def fvcore_handles() -> dict[str, Handle | None]:
    """fvcore's default handles, built from its public ``jit_handles`` functions, plus
    necktool's (``add`` counted, ``leaky_relu`` ignored like ``relu``)."""
    from fvcore.nn import jit_handles as jh

    return {
        "aten::addmm": jh.addmm_flop_jit,
        "aten::bmm": jh.bmm_flop_jit,
        "aten::_convolution": jh.conv_flop_jit,
        "aten::einsum": jh.einsum_flop_jit,
        "aten::matmul": jh.matmul_flop_jit,
        "aten::mm": jh.matmul_flop_jit,
        "aten::linear": jh.linear_flop_jit,
        "aten::batch_norm": jh.batchnorm_flop_jit,
        "aten::group_norm": jh.norm_flop_counter(2),
        "aten::layer_norm": jh.norm_flop_counter(2),
        "aten::instance_norm": jh.norm_flop_counter(1),
        "aten::upsample_nearest2d": jh.elementwise_flop_counter(0, 1),
        "aten::upsample_bilinear2d": jh.elementwise_flop_counter(0, 4),
        "aten::adaptive_avg_pool2d": jh.elementwise_flop_counter(1, 0),
        "aten::grid_sampler": jh.elementwise_flop_counter(0, 4),
        **_extra_handles(),
    }


def _fvcore_analysis(model: nn.Module, inputs: list[torch.Tensor],
                     tracker: ForwardTracker | None = None) -> tuple[
        Any, list[tuple[tuple[int, ...], int]]]:
    """fvcore's analysis of one trace (run under ``torch.no_grad()``, with ``tracker``
    active during the trace when one is given) and the (shape, count) of each counted op."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import-time DeprecationWarnings
        from fvcore.nn import FlopCountAnalysis

    events: list[tuple[tuple[int, ...], int]] = []
    analysis = FlopCountAnalysis(model, (tuple(inputs),))
    analysis.set_op_handle(**{op: None if h is None else _recording(h, events)
                              for op, h in fvcore_handles().items()})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with warnings.catch_warnings(), torch.no_grad(), tracker or contextlib.nullcontext():
        # TorchScript tracing is deprecated in current PyTorch and says so on every trace.
        warnings.simplefilter("ignore")
        # Trace once; every query below reads the cached statistics. no_grad: an
        # inference forward, so autograd keeps no activation alive (fvcore's counts are
        # the same either way).
        analysis.total()
    return analysis, events


def analyze(model: nn.Module, spec: NeckSpec, input_size: tuple[int, int],
            batch: int) -> ProfileResult:
    """Profile an already built ``model`` described by ``spec``: one trace, one execution.

    ``input_size`` and ``batch`` are a plan's (:class:`~necktool.analysis.plan.ProfilePlan`,
    or an export's): checked when it was built, not here.
    """
    inputs = input_tensors(spec, input_size, batch, seed=None)
    sizes = spec.level_sizes(input_size)
    # A size two levels share (extra levels at a tiny image: P6 and P7 both 1x1) cannot
    # say which level an op serves; such ops stay unattributed (and the table says why).
    level_of = {size: i for i, size in enumerate(sizes) if sizes.count(size) == 1}

    # Hooks ride along fvcore's trace, so the model runs once: the neck's outputs, and the
    # level each parameter serves (by the spatial size of its module's output).
    owner_level: dict[str, int] = {}
    captured: list[Any] = []
    hooks = [model.register_forward_hook(lambda mod, args, out: captured.append(out))]
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None:
            def hook(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor) and out.dim() == 4:
                    # tuple() first: under the tracer, indexing .shape yields traced tensors
                    h, w = tuple(out.shape)[-2:]
                    owner_level.setdefault(name, level_of.get((int(h), int(w)), -1))
            hooks.append(module.register_forward_hook(hook))
    custom = spec.info.needs_factory
    tracker = ForwardTracker(level_of, spec.num_levels,
                             [*inputs, *model.parameters(), *model.buffers()])
    try:
        analysis, events = _fvcore_analysis(model, inputs, tracker)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a custom forward may raise anything, SystemExit too
        if not custom:
            raise
        raise CustomNeckError(f"{spec.label}: forward failed under fvcore's trace on inputs "
                              f"{[tuple(x.shape) for x in inputs]}: {type(exc).__name__}: "
                              f"{exc}") from None
    finally:
        for h in hooks:
            h.remove()
    outputs: Any = captured[0] if captured else None
    check_neck_outputs(spec, outputs, batch, input_size)

    level_params = [0] * spec.num_levels
    unattributed_params = 0
    for name, module in model.named_modules():
        n = sum(p.numel() for p in module.parameters(recurse=False))
        lvl = owner_level.get(name, -1)
        if lvl >= 0:
            level_params[lvl] += n
        else:
            unattributed_params += n

    level_flops = [0] * spec.num_levels
    unattributed_flops = 0
    for shape, count in events:
        lvl = level_of.get((shape[-2], shape[-1]), -1) if len(shape) == 4 else -1
        if lvl >= 0:
            level_flops[lvl] += count
        else:
            unattributed_flops += count

    by_module = analysis.by_module()
    stages: Counter[str] = Counter()
    stage_params: Counter[str] = Counter()
    stage_parts = getattr(model, "stage_parts", None)
    parts: list[tuple[str, str, nn.Module]] = stage_parts() if callable(stage_parts) else [
        (name, name, child) for name, child in model.named_children()]
    for part_name, stage, part in parts:
        stages[stage] += by_module.get(part_name, 0)
        stage_params[stage] += sum(p.numel() for p in part.parameters())
    root_only = by_module.get("", 0) - sum(stages.values())
    if root_only:
        stages["(in forward)"] += root_only

    figures = tracker.figures
    assert figures is not None  # set when the tracker's context exits
    # A shape-only second forward (meta tensors): costs no arithmetic at any size.
    receptive = receptive_fields(model, spec)
    fields = receptive.levels or (None,) * spec.num_levels
    levels = tuple(
        LevelProfile(name=name, stride=stride, shape=tuple(out.shape), flops=level_flops[i],
                     params=level_params[i], activation_bytes=figures.level_bytes[i],
                     receptive_field=fields[i])
        for i, (name, stride, out) in enumerate(zip(spec.level_names, spec.strides, outputs,
                                                    strict=True))
    )
    operators = {op: int(n) for op, n in analysis.by_operator().items()}
    params = sum(level_params) + unattributed_params
    memory = MemoryProfile(
        param_bytes=FP32_BYTES * params,
        input_bytes=sum(x.numel() * x.element_size() for x in inputs),
        output_bytes=sum(o.numel() * o.element_size() for o in outputs),
        activation_bytes=figures.total_bytes,
        peak_activation_bytes=figures.peak_bytes,
    )
    return ProfileResult(
        spec=spec,
        input_size=(int(input_size[0]), int(input_size[1])),
        batch=batch,
        levels=levels,
        stages=dict(stages),
        stage_params=dict(stage_params),
        operators=operators,
        unsupported_ops={op: int(n) for op, n in analysis.unsupported_ops().items()},
        memory=memory,
        cross_check=CrossCheck(operators.get("conv", 0), figures.conv_macs),
        unattributed_flops=unattributed_flops,
        unattributed_params=unattributed_params,
        unattributed_activation_bytes=figures.unattributed_bytes,
        receptive=receptive,
    )


def run_profile(plan: ProfilePlan, *, model: nn.Module | None = None,
                on_point: Callable[[str], None] | None = None) -> tuple[ProfileResult, ...]:
    """Run a checked plan: build the neck once (unless ``model`` is given), trace it once
    per size; one result per size, in the plan's order.

    ``on_point`` is called with ``"<neck> HxW"`` after each size (for a progress bar of
    :attr:`ProfilePlan.steps`).
    """
    model = build_neck(plan.spec) if model is None else model
    results = []
    for size in plan.sizes:
        results.append(analyze(model, plan.spec, size, plan.batch))
        if on_point is not None:
            on_point(f"{plan.spec.label} {size_text(size)}")
    return tuple(results)


def profile(
    neck: str | NeckSpec,
    *,
    input_size: tuple[int, int] | None = None,
    batch: int = 1,
    **overrides: Any,
) -> ProfileResult:
    """Profile a preset or spec: per-level shapes, FLOPs (fvcore units) and parameters.

    Builds a :class:`~necktool.analysis.plan.ProfilePlan` (every check) and runs it.

    Args:
        neck: A preset name or a :class:`NeckSpec`.
        input_size: Image ``(H, W)``; defaults to the spec's ``input_size``.
        batch: Batch size (FLOPs scale linearly with it; parameters do not).
        **overrides: Spec fields to change; ``None`` values are ignored.

    Example:
        >>> r = profile("scrfd_2.5g", input_size=(640, 480))
        >>> r.flops == sum(level.flops for level in r.levels)
        True
    """
    plan = ProfilePlan.build(neck, input_size=input_size, batch=batch, **overrides)
    return run_profile(plan)[0]
