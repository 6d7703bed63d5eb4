"""FLOPs, parameters and memory of one or more necks over a range of input sizes.

Each neck is built once and traced once per size (:func:`necktool.analysis.profiling.analyze`),
so the cost grows linearly with the number of sizes. FLOPs follow fvcore: one fused
multiply-add counts as one flop. Memory is the profile's (fp32 bytes; MiB = 2^20 bytes).

The plot (:meth:`SweepResult.plot`) draws one figure against input size, one line per
neck: GFLOPs (the default), Mparams, or the peak activation memory in MiB
(:class:`PlotMetric`). Its x axis is the side in pixels when every size is square, and
megapixels (H*W / 1e6) otherwise, with the ticks labelled ``HxW``: FLOPs and activation
memory grow with the pixel count, so megapixels keep non-square sizes on one
straight-ish line.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from necktool.analysis.plan import ProfilePlan
from necktool.errors import InputError
from necktool.files import check_writable, write_file
from necktool.quiet import quiet
from necktool.report import Block, Note, num, size_text, table
from necktool.spec.fields import BadValue, parse_int_text
from necktool.spec.neck_spec import NeckSpec, parse_size
from necktool.spec.registry import expand_names, resolve_spec
from necktool.units import (
    COUNTING_BUG,
    CROSS_CHECK,
    GFLOPS,
    MEMORY_NOTE,
    MEMORY_UNIT,
    MIB,
    MIB_CAPTION,
    UNIT,
    UNIT_CAPTION,
    UNIT_NOTE,
    mib,
)

MAX_SIZES = 64  # one trace per size and neck: more than this is a typo, not a sweep
PLOT_SUFFIXES = (".png", ".svg")
SIZES_FORMS = ("valid forms: a comma-separated list of sizes, each HxW or one number for a "
               "square (320,480,640 or 640x480,1280x720), and/or inclusive ranges "
               "START:STOP:STEP of square sizes (320:1280:160)")
MATPLOTLIB_MISSING = "--plot needs matplotlib; install it with: pip install 'necktool[plot]'"
Y_LABEL = "GFLOPs (fvcore: 1 multiply-add = 1 flop)"


class PlotMetric(enum.StrEnum):
    """What ``sweep --plot`` draws against input size (``--metric``)."""

    FLOPS = "flops"
    PARAMS = "params"
    MEMORY = "memory"



# -- parsing -------------------------------------------------------------------------------
def parse_sizes(text: str, max_sizes: int = MAX_SIZES) -> list[tuple[int, int]]:
    """Parse a size list and/or ranges into ``(H, W)`` pairs, in order, without repeats.

    ``START:STOP:STEP`` is a range of square sizes that includes ``STOP`` when it lands
    on the grid. Items may be mixed: ``"256,320:640:160"``.

    Raises:
        InputError: empty or malformed text, a zero or negative step, a range that runs
            backwards, or more than ``max_sizes`` sizes.

    Example:
        >>> parse_sizes("320:640:160")
        [(320, 320), (480, 480), (640, 640)]
        >>> parse_sizes("640x480, 320, 640x480")
        [(640, 480), (320, 320)]
    """
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise InputError(f"empty size in --sizes {text!r}; {SIZES_FORMS}")
    sizes: list[tuple[int, int]] = []
    for item in items:
        if ":" in item:
            start, stop, step = _parse_range(item)
            # Count before materialising, so '1:999999999:1' fails fast instead of filling memory.
            if len(sizes) + (stop - start) // step + 1 > max_sizes:
                raise _too_many(text, max_sizes)
            new = [(s, s) for s in range(start, stop + 1, step)]
        else:
            try:
                new = [parse_size(item)]
            except InputError:
                raise InputError(f"malformed size {item!r} in --sizes; {SIZES_FORMS}") from None
        sizes.extend(s for s in new if s not in sizes)
        if len(sizes) > max_sizes:
            raise _too_many(text, max_sizes)
    return sizes


def _parse_range(item: str) -> tuple[int, int, int]:
    parts = [p.strip() for p in item.split(":")]
    expected = "START:STOP:STEP of positive integers like 320:1280:160"
    try:
        if len(parts) != 3:
            raise BadValue(expected)
        start, stop, step = (parse_int_text(p, expected) for p in parts)  # ASCII digits only
    except BadValue:
        raise InputError(f"malformed range {item[:40]!r} in --sizes; a range is {expected}; "
                         f"{SIZES_FORMS}") from None
    if step == 0:
        raise InputError(f"range {item!r} has step 0; use a positive step like 320:1280:160")
    if start <= 0:
        raise InputError(f"range {item!r} must start at a positive size, e.g. 320:1280:160")
    if stop < start:
        raise InputError(f"range {item!r} runs backwards (stop {stop} < start {start}); "
                         f"write it as {stop}:{start}:{step}")
    return start, stop, step


def _too_many(text: str, max_sizes: int) -> InputError:
    return InputError(f"--sizes {text!r} gives more than {max_sizes} sizes; use a larger step "
                      f"or fewer items")


def check_plot_path(path: str | os.PathLike[str]) -> pathlib.Path:
    """Validate a plot destination before any work: suffix, directory, writability.

    Raises:
        InputError: the suffix is not ``.png``/``.svg``, or the file cannot be written.
    """
    dest = pathlib.Path(path)
    if dest.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"cannot plot to {str(dest)!r}: the file name must end in "
                         f"{' or '.join(PLOT_SUFFIXES)}")
    return check_writable(dest, "the plot")


def check_matplotlib() -> None:
    """Raise :class:`InputError` with the install hint unless matplotlib imports."""
    _import_matplotlib()


def _import_matplotlib() -> Any:
    # quiet(): matplotlib logs (not warns) when its config directory is not writable
    try:
        with quiet():
            import matplotlib.figure
    except ImportError:
        raise InputError(MATPLOTLIB_MISSING) from None
    return matplotlib.figure


# -- result --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepPoint:
    """One neck at one input size: FLOPs (fvcore units), parameters, FLOPs per level,
    memory (the profile's ``memory`` figures, fp32 bytes) and activation bytes per level.

    ``level_flops`` sums to ``flops`` and ``level_activation_bytes`` to
    ``memory["activation_bytes"]``; an ``unattributed`` entry appears only when something
    matched no level (possible with custom necks, never with the presets). ``cross_check``
    is the profile's second conv count (see :class:`necktool.analysis.profiling.CrossCheck`).
    """

    input_size: tuple[int, int]
    flops: int
    params: int
    level_flops: dict[str, int]
    memory: dict[str, int] = dataclasses.field(default_factory=dict)
    level_activation_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    cross_check: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.flops / GFLOPS

    @property
    def megapixels(self) -> float:
        return self.input_size[0] * self.input_size[1] / 1e6

    @property
    def peak_activation_bytes(self) -> int:
        return self.memory.get("peak_activation_bytes", 0)

    @property
    def agree(self) -> bool:
        return bool(self.cross_check.get("agree", True))

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "flops": self.flops, "params": self.params,
                "level_flops": dict(self.level_flops), "memory": dict(self.memory),
                "level_activation_bytes": dict(self.level_activation_bytes),
                "cross_check": dict(self.cross_check)}


#: metric -> (y-axis label, title, a point's value)
PLOTS: dict[PlotMetric, tuple[str, str, Callable[[SweepPoint], float]]] = {
    PlotMetric.FLOPS: (Y_LABEL, "Neck FLOPs by input size", lambda p: p.gflops),
    PlotMetric.PARAMS: ("Mparams (parameters / 1e6)", "Neck parameters by input size",
                        lambda p: p.params / 1e6),
    PlotMetric.MEMORY: (f"peak activation memory, MiB ({MIB_CAPTION}, fp32)",
                        "Neck peak activation memory by input size",
                        lambda p: p.peak_activation_bytes / MIB),
}


@dataclasses.dataclass(frozen=True)
class NeckSweep:
    """Every size of one neck, in the order the sizes were given."""

    neck: str
    spec: NeckSpec
    points: tuple[SweepPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"neck": self.neck, "family": self.spec.family,
                "config": self.spec.to_dict(), "points": [p.to_dict() for p in self.points]}


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """FLOPs and parameters per neck and input size (fvcore: 1 multiply-add = 1 flop)."""

    sizes: tuple[tuple[int, int], ...]
    batch: int
    necks: tuple[NeckSweep, ...]
    #: where ``--plot`` drew the figure, and what it shows (set by :meth:`plotted`)
    plot_path: str | None = None
    plot_metric: str | None = None

    @property
    def square(self) -> bool:
        return all(h == w for h, w in self.sizes)

    def __bool__(self) -> bool:
        """False when a point's two conv counts disagree (the CLI exits 1)."""
        return all(p.agree for n in self.necks for p in n.points)

    def failure(self) -> str | None:
        bad = [f"{n.neck} at {size_text(p.input_size)}: conv MACs differ: "
               f"{p.cross_check['fvcore_conv_macs']:,} from fvcore vs "
               f"{p.cross_check['flop_counter_conv_macs']:,} from {CROSS_CHECK}"
               for n in self.necks for p in n.points if not p.agree]
        return "; ".join(bad) + f" ({COUNTING_BUG})" if bad else None

    def to_dict(self) -> dict[str, Any]:
        """Stable, JSON-ready dict; every count is an exact integer."""
        return {
            "sizes": [list(s) for s in self.sizes],
            "batch": self.batch,
            "unit": UNIT,
            "unit_note": UNIT_NOTE,
            "memory_unit": MEMORY_UNIT,
            "memory_note": MEMORY_NOTE,
            "necks": [n.to_dict() for n in self.necks],
            **({"plot": {"path": self.plot_path, "metric": self.plot_metric}}
               if self.plot_path is not None else {}),
        }

    def blocks(self) -> list[Block]:
        """One row per neck and size, necks separated by a rule."""
        rows, sections = [], []
        for sweep in self.necks:
            first = sweep.points[0].flops
            for i, p in enumerate(sweep.points):
                rows.append((sweep.neck if i == 0 else "", size_text(p.input_size),
                             f"{p.gflops:.4f}", f"{p.flops:,}", f"{p.params:,}",
                             f"{p.flops / first:.2f}" if first else "-",
                             mib(p.peak_activation_bytes)))
            sections.append(len(rows) - 1)
        failure = self.failure()
        return [table(f"FLOPs and memory by input size, batch {self.batch}",
                      ["neck", "input", num("GFLOPs"), num("FLOPs"), num("params"),
                       num("x first"), num("peak MiB")], rows, sections=tuple(sections),
                      caption=f"{UNIT_CAPTION}; peak MiB: activations held at once, "
                              f"{MIB_CAPTION}; per-level figures with --format json"),
                Note(failure, "fail") if failure else
                Note(f"conv MACs cross-checked with {CROSS_CHECK} at every size: equal"),
                *([Note(f"plot of {self.plot_metric} written to {self.plot_path}")]
                  if self.plot_path is not None else [])]

    def plotted(self, path: str | os.PathLike[str],
                metric: PlotMetric = PlotMetric.FLOPS) -> SweepResult:
        """:meth:`plot`, and this result saying where the figure went (the report and
        JSON name the file)."""
        dest = self.plot(path, metric)
        return dataclasses.replace(self, plot_path=str(dest),
                                   plot_metric=metric.value)

    def plot(self, path: str | os.PathLike[str],
             metric: PlotMetric = PlotMetric.FLOPS) -> pathlib.Path:
        """Draw ``metric`` against input size, one line per neck, to a ``.png`` or ``.svg``.

        ``metric``: ``PlotMetric.FLOPS`` (GFLOPs, the default), ``PARAMS`` (Mparams) or ``MEMORY``
        (the peak activation memory in MiB = 2^20 bytes).

        The file is written to a temporary file beside ``path`` and moved into place, so
        a failed write never leaves a truncated image. matplotlib's object API is used
        without pyplot, so no GUI backend is chosen and the caller's state is untouched.

        Raises:
            InputError: bad suffix or unwritable path, or matplotlib is not installed.
        """
        y_label, title, value = PLOTS[metric]
        dest = check_plot_path(path)
        mpl_figure = _import_matplotlib()
        fig = mpl_figure.Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        order = sorted(range(len(self.sizes)), key=lambda i: self._x(self.sizes[i]))
        for sweep in self.necks:
            pts = [sweep.points[i] for i in order]
            ax.plot([self._x(p.input_size) for p in pts], [value(p) for p in pts],
                    marker="o", label=sweep.neck)
        xs = [self._x(self.sizes[i]) for i in order]
        if len(xs) <= 12:  # beyond that the labels overlap; keep matplotlib's own ticks
            ax.set_xticks(xs, ["x".join(map(str, self.sizes[i])) if not self.square
                               else str(self.sizes[i][0]) for i in order])
            if not self.square:  # HxW labels are long: slant them, anchored at the tick
                for label in ax.get_xticklabels():
                    label.set_rotation(30)
                    label.set_horizontalalignment("right")
        ax.set_xlabel("input size (square side, px)" if self.square
                      else "input size (megapixels = H x W / 1e6; ticks H x W)")
        ax.set_ylabel(y_label)
        batch = f", batch {self.batch}" if self.batch != 1 else ""
        ax.set_title(f"{title}{batch}")
        ax.grid(True, alpha=0.3)
        ax.legend()
        image = io.BytesIO()
        fig.savefig(image, format=dest.suffix.lower().lstrip("."))
        return write_file(dest, image.getvalue(), "the plot")

    def _x(self, size: tuple[int, int]) -> float:
        return float(size[0]) if self.square else size[0] * size[1] / 1e6


# -- the sweep -----------------------------------------------------------------------------
def sweep(
    necks: Sequence[str | NeckSpec],
    sizes: Sequence[tuple[int, int]],
    batch: int = 1,
    *,
    on_point: Callable[[str], None] | None = None,
    **overrides: Any,
) -> SweepResult:
    """Profile each neck at each size: one build per neck, one fvcore trace per size.

    Args:
        necks: Preset names (shell patterns allowed) or specs.
        sizes: Input sizes ``(H, W)``; repeats are dropped, the order is kept.
        batch: Batch size (FLOPs scale linearly with it).
        on_point: Called with ``"<neck> HxW"`` after each point (for a progress bar).
        **overrides: Spec fields applied to every neck; ``None`` values are ignored.

    Raises:
        InputError: no sizes, too many, or a bad batch.
        SpecError: a size is below a neck's coarsest stride (checked before any tracing).

    Example:
        >>> r = sweep(["scrfd_2.5g"], [(320, 320), (640, 640)])
        >>> r.necks[0].points[1].flops == 4 * r.necks[0].points[0].flops
        True
    """
    return run_sweep(sweep_plans(necks, sizes, batch, **overrides), on_point=on_point)


def sweep_plans(necks: Sequence[str | NeckSpec], sizes: Sequence[tuple[int, int]],
                batch: int = 1, **overrides: Any) -> tuple[ProfilePlan, ...]:
    """One checked :class:`~necktool.analysis.plan.ProfilePlan` per neck, each at every
    size: every name, spec, size and the batch checked before the first (slow) trace.
    The plans' :attr:`~necktool.analysis.plan.ProfilePlan.steps` add up to a progress
    bar's total.

    Raises:
        InputError: no sizes, too many, no neck, or a bad batch (the plans check it).
        SpecError: a size is below a neck's coarsest stride.
    """
    unique = tuple(dict.fromkeys((int(h), int(w)) for h, w in sizes))
    if not unique:
        raise InputError(f"no input sizes to sweep; {SIZES_FORMS}")
    if len(unique) > MAX_SIZES:
        raise InputError(f"{len(unique)} sizes to sweep; at most {MAX_SIZES}")
    names: list[str | NeckSpec] = []
    for neck in necks:
        for item in expand_names([neck]) if isinstance(neck, str) else [neck]:
            if item not in names:  # 'scrfd_*' and 'scrfd_2.5g' together: one sweep each
                names.append(item)
    if not names:
        raise InputError("no neck to sweep; give a preset name or pattern")
    return tuple(ProfilePlan(resolve_spec(neck, **overrides), batch, unique) for neck in names)


def run_sweep(plans: Sequence[ProfilePlan], *,
              on_point: Callable[[str], None] | None = None) -> SweepResult:
    """Run checked plans (:func:`sweep_plans`): one build per neck, one trace per size."""
    from necktool.analysis.profiling import run_profile  # torch: the sweep itself

    results = []
    for plan in plans:
        points = []
        for r in run_profile(plan, on_point=on_point):
            level_flops = {lv.name: lv.flops for lv in r.levels}
            if r.unattributed_flops:  # custom necks: keep the levels summing to the total
                level_flops["unattributed"] = r.unattributed_flops
            level_bytes = {lv.name: lv.activation_bytes for lv in r.levels}
            if r.unattributed_activation_bytes:
                level_bytes["unattributed"] = r.unattributed_activation_bytes
            points.append(SweepPoint(input_size=r.input_size, flops=r.flops, params=r.params,
                                     level_flops=level_flops, memory=r.memory.to_dict(),
                                     level_activation_bytes=level_bytes,
                                     cross_check=r.cross_check.to_dict()))
        results.append(NeckSweep(plan.spec.label, plan.spec, tuple(points)))
    sizes = plans[0].sizes if plans else ()
    return SweepResult(sizes, plans[0].batch if plans else 1, tuple(results))
