"""The result of comparing ONNX Runtime with PyTorch, per output, case and file
(torch-free; :mod:`necktool.deploy.verify` runs the comparison and fills these in).

Per output: the max and mean absolute error, the max relative error, the smallest passing
``atol`` under the error statistic, NaN/Inf counts, and the sums behind the SQNR
(``10 log10(sum torch^2 / sum (ort - torch)^2)``, dB) and the cosine similarity; trials
merge by adding those sums, so both figures cover every element of every trial.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from necktool.artifact.serving import Case
from necktool.deploy.tolerance import ErrorStat, VerifyOptions
from necktool.report import Block, Table, Verdict, all_passed, num, table
from necktool.spec.precision import Precision


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` for ``signal = sum torch^2`` and ``noise = sum (ort -
    torch)^2``: inf when the two are equal, NaN when both are zero, -inf for noise alone."""
    if noise == 0:
        return math.inf if signal > 0 else math.nan
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputComparison(Verdict):
    """ONNX Runtime vs PyTorch for one output level over a case's trials."""

    name: str
    shape: tuple[int, ...]
    atol: float
    rtol: float
    max_abs: float
    mean_abs: float
    max_rel: float
    min_atol: float  # the error statistic of the excess (>= 0): the smallest passing atol
    failed_elements: int  # elements over tolerance (non-finite ones included)
    elements: int
    nonfinite_ort: int
    nonfinite_torch: int
    error_stat: ErrorStat = ErrorStat.ELEMWISE
    note: str = ""
    # Sums over every finite element of every trial, for SQNR and cosine similarity.
    signal: float = 0.0  # sum torch^2
    noise: float = 0.0  # sum (ort - torch)^2
    dot: float = 0.0  # sum ort * torch
    energy: float = 0.0  # sum ort^2

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.signal, self.noise)

    @property
    def cosine(self) -> float:
        """Cosine similarity of the ORT and torch outputs (NaN when either is all zero)."""
        norm = math.sqrt(self.signal * self.energy)
        return self.dot / norm if norm > 0 else math.nan

    @property
    def passed(self) -> bool:
        within = self.failed_elements == 0 if self.error_stat is ErrorStat.ELEMWISE \
            else self.min_atol <= self.atol
        return within and self.nonfinite_ort == 0 and self.nonfinite_torch == 0 \
            and not self.note

    def merge(self, other: OutputComparison) -> OutputComparison:
        """Aggregate two trials of the same output."""
        n = self.elements + other.elements
        return dataclasses.replace(
            self,
            atol=min(self.atol, other.atol),  # scaled atols differ between trials
            max_abs=max(self.max_abs, other.max_abs),
            mean_abs=(self.mean_abs * self.elements + other.mean_abs * other.elements) / n
            if n else 0.0,
            max_rel=max(self.max_rel, other.max_rel),
            min_atol=max(self.min_atol, other.min_atol),
            failed_elements=self.failed_elements + other.failed_elements,
            elements=n,
            nonfinite_ort=self.nonfinite_ort + other.nonfinite_ort,
            nonfinite_torch=self.nonfinite_torch + other.nonfinite_torch,
            note=self.note or other.note,
            signal=self.signal + other.signal,
            noise=self.noise + other.noise,
            dot=self.dot + other.dot,
            energy=self.energy + other.energy,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "max_abs": _finite(self.max_abs),
            "mean_abs": _finite(self.mean_abs),
            "max_rel": _finite(self.max_rel),
            "min_atol": _finite(self.min_atol),
            "sqnr_db": _finite(self.sqnr_db),
            "cosine": _finite(self.cosine),
            "failed_elements": self.failed_elements,
            "elements": self.elements,
            "nonfinite_ort": self.nonfinite_ort,
            "nonfinite_torch": self.nonfinite_torch,
            **({"note": self.note} if self.note else {}),
        }


@dataclasses.dataclass(frozen=True)
class CaseComparison:
    """Every output at one input shape."""

    case: Case
    seeds: tuple[int, ...]
    outputs: tuple[OutputComparison, ...]

    @property
    def passed(self) -> bool:
        return all_passed(self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.case.label,
            "input_size": list(self.case.input_size),
            "batch": self.case.batch,
            "seeds": list(self.seeds),
            "passed": self.passed,
            "outputs": [o.to_dict() for o in self.outputs],
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerificationResult(Verdict):
    """The whole comparison; true when every output of every case passed."""

    path: str
    neck: str
    options: VerifyOptions
    provider: str  # the resolved ONNX Runtime provider
    dynamic: bool
    weights: str
    cases: tuple[CaseComparison, ...]
    precision: Precision = Precision.FP32  # the file's; the reference is always fp32 torch
    runtime: str = "ort"  # necktool.deploy.runtimes.runners.Runtime; provider then describes it
    #: what the cases ran on: "" for seeded normal inputs, else e.g. "real features from 12
    #: images (photos/), 4 held out" (one case per feature set)
    measured_on: str = ""

    @property
    def passed(self) -> bool:
        return all_passed(self.cases)

    @property
    def checks(self) -> list[tuple[Case, OutputComparison]]:
        return [(c.case, o) for c in self.cases for o in c.outputs]

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for _, o in self.checks), default=0.0)

    @property
    def min_atol(self) -> float:
        return max((o.min_atol for _, o in self.checks), default=0.0)

    @property
    def min_sqnr_db(self) -> float:
        return min((o.sqnr_db for _, o in self.checks), default=math.inf)

    @property
    def min_cosine(self) -> float:
        return min((o.cosine for _, o in self.checks), default=1.0)

    @property
    def who(self) -> str:
        """The runtime's short name in formulas (``|ort - torch|``, ``|ncnn - torch|``)."""
        return self.runtime.partition(":")[0]

    @property
    def tolerance_text(self) -> str:
        o = self.options
        stat = "" if o.error_stat is ErrorStat.ELEMWISE else f", {o.error_stat.value} error"
        scaled = " x max(1, output RMS)" if o.atol_scaled else ""
        return f"atol={o.atol}{scaled}, rtol={o.rtol}{stat}"

    def summary(self) -> str:
        """One line: verdict, how many checks, and how close it came."""
        checks = self.checks
        tol = self.tolerance_text
        what = f" ({self.precision.value} file)" if self.precision is not Precision.FP32 else ""
        if self.measured_on:
            what += f" on {self.measured_on}"
        if self.passed:
            return (f"PASS{what}: {len(checks)} output checks in {len(self.cases)} case(s) "
                    f"within {tol} (largest |{self.who} - torch| {self.max_abs:.2e}; smallest "
                    f"passing atol {self.min_atol:.2e}; SQNR >= {_db(self.min_sqnr_db)} dB)")
        bad = [(c, o) for c, o in checks if not o.passed]
        case, worst = max(bad, key=lambda co: (co[1].min_atol, co[1].failed_elements))
        detail = worst.note or (f"{worst.failed_elements} of {worst.elements} elements over "
                                f"tolerance, "
                                f"max |{self.who} - torch| {worst.max_abs:.3g}, max rel "
                                f"{worst.max_rel:.3g}, smallest passing atol "
                                f"{worst.min_atol:.3g}, SQNR {_db(worst.sqnr_db)} dB, "
                                f"cosine {worst.cosine:.6f}")
        return (f"FAIL{what}: {len(bad)} of {len(checks)} output checks over {tol}; worst "
                f"{worst.name} at {case.title}: {detail}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "path": self.path,
            "neck": self.neck,
            "precision": self.precision.value,
            "measured_on": self.measured_on or "seeded normal inputs",
            **self.options.to_dict(),
            "provider": self.provider,
            "runtime": self.runtime,
            "dynamic": self.dynamic,
            "weights": self.weights,
            "max_abs": _finite(self.max_abs),
            "min_atol": _finite(self.min_atol),
            "min_sqnr_db": _finite(self.min_sqnr_db),
            "min_cosine": _finite(self.min_cosine),
            "summary": self.summary(),
            "cases": [c.to_dict() for c in self.cases],
        }

    def table(self) -> Table:
        """One row per case and output (shapes are in the export summary)."""
        rows, sections = [], []
        for cmp in self.cases:
            for i, out in enumerate(cmp.outputs):
                nonfinite = out.nonfinite_ort + out.nonfinite_torch
                verdict = "PASS" if out.passed else "FAIL" + (
                    f" {out.note}" if out.note else f" {nonfinite:,} NaN/Inf" if nonfinite
                    else f" {out.failed_elements:,} el.")
                title = f"{cmp.case.label} ({cmp.case.title})" if self.measured_on \
                    else cmp.case.title
                rows.append((title if i == 0 else "", out.name, f"{out.max_abs:.1e}",
                             f"{out.max_rel:.1e}", f"{out.min_atol:.1e}", _db(out.sqnr_db),
                             f"{out.cosine:.6f}", verdict))
            sections.append(len(rows) - 1)
        against = "PyTorch" if self.precision is Precision.FP32 else \
            f"fp32 PyTorch ({self.precision.value} file)"
        ran = f"ONNX Runtime ({self.provider})" if self.runtime == "ort" else self.provider
        return table(
            f"{ran} vs {against}: {self.neck}",
            ["case", "out", num("max abs"), num("max rel"), num("min atol"), num("SQNR dB"),
             num("cosine"), "result"], rows, sections=tuple(sections), verdict=7,
            caption=f"{self._inputs_text()}; an output passes when "
                    f"{self.options.error_stat.rule(self.who)} "
                    f"({self.tolerance_text}); max rel over elements where torch != 0; "
                    f"SQNR = 10 log10(sum torch^2 / sum ({self.who} - torch)^2); mean abs "
                    f"errors and NaN/Inf counts in --format json; weights: {self.weights}\n"
                    f"{self.summary()}")

    def blocks(self) -> list[Block]:
        return [self.table()]

    def _inputs_text(self) -> str:
        if self.measured_on:
            return f"one case per feature set: {self.measured_on}"
        return f"{self.options.trials} seeded trial(s) per case"


def _db(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else "inf" if value > 0 else str(value)


def _finite(value: float) -> float | None:
    """JSON has no inf/NaN: those become null."""
    return float(value) if math.isfinite(value) else None
