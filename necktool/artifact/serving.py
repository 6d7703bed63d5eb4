"""Which input shapes an exported file serves, and where verification checks it (torch-free).

A dynamic export makes each input level's height and width a dimension of its own
(``c3 (batch, C3, H_div8, W_div8)``, ``c4 (batch, C4, H_div16, W_div16)``, ...), where
for an image ``H x W`` level ``k`` has stride ``s_k`` and size ``ceil(H/s_k) x ceil(W/s_k)``
(``H_div8`` reads "H over 8, rounded up"). Such a file serves every image at least as
large as the coarsest stride ``S``, in any batch (:attr:`Images.ANY`):

* ``levels="independent"``: nothing in the graph relates the levels' sizes (RetinaFace's
  FPN, whose levels meet only through ``interpolate(size=finer level)``).
* ``levels="one-image"``: the levels must be the ``ceil(H/s_k)`` sizes of one image: a
  bottom-up path (PAFPN's stride-2 convs added to the next level) ties them, and other
  combinations fail in ONNX Runtime with a broadcast error. ``torch.export`` cannot write
  the tie itself into the file (``ceil(h/2)`` is no expressible dimension), so the
  dimensions stay free and the file says so here.

Files written before this existed tied the levels as ``4*H_div32, 2*H_div32, H_div32``
and serve images whose sides are multiples of ``S`` (:attr:`Images.MULTIPLES`); so does a
custom neck that cannot run at other sizes in PyTorch. A static file serves its export
size and batch only.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from necktool.report import size_text
from necktool.spec.families import LevelRelation

if TYPE_CHECKING:
    from necktool.spec.neck_spec import NeckSpec

__all__ = ["Case", "Images", "LevelRelation", "Served", "calibration_shapes", "default_cases"]


class Images(enum.StrEnum):
    """The image sizes a file accepts."""

    STATIC = "static"  # the export size and batch only
    ANY = "any"  # every H x W from the coarsest stride up, any batch
    MULTIPLES = "multiples"  # sides that are multiples of the coarsest stride, any batch


@dataclasses.dataclass(frozen=True)
class Served:
    """The input shapes a file serves (see the module docstring)."""

    images: Images
    levels: LevelRelation = LevelRelation.ONE_IMAGE

    @classmethod
    def static(cls) -> Served:
        return cls(Images.STATIC, LevelRelation.TIED)

    @classmethod
    def legacy(cls, dynamic: bool) -> Served:
        """What a file without ``necktool.serves`` (an older necktool) serves."""
        return cls(Images.MULTIPLES, LevelRelation.TIED) if dynamic else cls.static()

    @property
    def dynamic(self) -> bool:
        return self.images is not Images.STATIC

    def to_json(self) -> dict[str, str]:
        return {"images": self.images.value, "levels": self.levels.value}

    @classmethod
    def from_json(cls, data: Any) -> Served:
        """Raises ``ValueError`` unless ``data`` is what :meth:`to_json` writes."""
        if not isinstance(data, Mapping) or set(data) != {"images", "levels"}:
            raise ValueError("expected an object with keys images and levels")
        try:
            return cls(Images(data["images"]), LevelRelation(data["levels"]))
        except (ValueError, TypeError):
            raise ValueError(f"images must be one of {', '.join(Images)} and levels one of "
                             f"{', '.join(LevelRelation)}") from None

    def dims(self, spec: NeckSpec) -> list[tuple[str, str]]:
        """The symbolic ``(height, width)`` dimension names of each input level."""
        stride = spec.input_strides[-1]
        if self.images is Images.ANY:
            return [(f"H_div{s}", f"W_div{s}") for s in spec.input_strides]
        n = spec.num_inputs
        return [(f"{2 ** (n - 1 - k)}*H_div{stride}" if k < n - 1 else f"H_div{stride}",
                 f"{2 ** (n - 1 - k)}*W_div{stride}" if k < n - 1 else f"W_div{stride}")
                for k in range(n)]

    def describe(self, spec: NeckSpec, input_size: tuple[int, int], batch: int) -> str:
        """One sentence: exactly which inputs the file serves."""
        stride = spec.input_strides[-1]
        if self.images is Images.STATIC:
            return (f"the export size only: a {size_text(input_size)} image, batch {batch} "
                    "(static)")
        if self.images is Images.MULTIPLES:
            return (f"every image whose sides are multiples of {stride}, any batch; input "
                    f"level k is (batch, C_k, 2**({spec.num_inputs - 1}-k) * H/{stride}, "
                    f"... * W/{stride})")
        levels = ("each level's H and W are free dimensions, so other level sizes run too"
                  if self.levels is LevelRelation.INDEPENDENT else
                  "the levels must be these sizes of one image (the graph ties them: a "
                  "bottom-up path, or a scale2 upsample's crop)")
        return (f"every image H x W from {stride}x{stride} up, any batch; input level k is "
                f"(batch, C_k, ceil(H/s_k), ceil(W/s_k)) for strides "
                f"{', '.join(map(str, spec.input_strides))}; {levels}")

    def dims_note(self, spec: NeckSpec, input_size: tuple[int, int], batch: int) -> str:
        """What the symbolic dimension names mean (metadata ``necktool.dims``)."""
        if self.images is Images.STATIC:
            return f"static: {size_text(input_size)}, batch {batch}"
        if self.images is Images.MULTIPLES:
            stride = spec.input_strides[-1]
            n = spec.num_inputs
            level = "input level" if spec.num_extra_levels else "level"
            return (f"batch, H_div{stride} = H/{stride}, W_div{stride} = W/{stride}; "
                    f"{level} k of {n} is 2**({n - 1}-k) * H_div{stride}")
        return "batch; " + ", ".join(f"H_div{s} = ceil(H/{s}), W_div{s} = ceil(W/{s})"
                                     for s in spec.input_strides)


@dataclasses.dataclass(frozen=True)
class Case:
    """One input shape to compare at."""

    input_size: tuple[int, int]
    batch: int
    label: str

    @property
    def title(self) -> str:
        return f"{size_text(self.input_size)} b{self.batch}"


def default_cases(spec: NeckSpec, input_size: tuple[int, int], batch: int,
                  served: Served | bool) -> list[Case]:
    """Where verification compares a file: the export size, plus two more for a dynamic
    one, about half the export size so verification stays cheap.

    For a file that serves every image size (:attr:`Images.ANY`) the extra sizes are odd,
    non-square and no multiples of the coarsest stride ``S``, one in batch 2:
    ``(S*h + 1) x (S*(h+1) - 5)`` and ``(S*(h+1) - 3) x (S*h + 7)``. For one that serves
    multiples of ``S``: ``S*h x S*(h+1)`` and ``S*(h+1) x S*h`` (batch 2). Each has at least
    2x2 at the coarsest level: a 1-pixel map makes GroupNorm statistics ill-conditioned
    (groups of 1-2 elements), which tests fp32, not the export.

    ``served`` may be a bool for a file described only as dynamic or static (an older
    file): ``True`` is :attr:`Images.MULTIPLES`.
    """
    if isinstance(served, bool):
        served = Served.legacy(served)
    cases = [Case((int(input_size[0]), int(input_size[1])), batch, "export size")]
    if not served.dynamic:
        return cases
    s = spec.input_strides[-1]  # the coarsest input stride (extra levels follow it)
    half = max(2, min(input_size) // s // 2)

    def extra(h: int) -> list[Case]:
        if served.images is Images.ANY:
            return [Case((s * h + 1, s * (h + 1) - 5), 1, "odd, non-square"),
                    Case((s * (h + 1) - 3, s * h + 7), 2, "odd, batch 2")]
        return [Case((s * h, s * (h + 1)), 1, "non-square"),
                Case((s * (h + 1), s * h), 2, "batch 2")]

    while cases[0].input_size in {c.input_size for c in extra(half)}:
        half += 1  # the extra sizes must differ from the export size
    return cases + extra(half)


def calibration_shapes(spec: NeckSpec, input_size: tuple[int, int], batch: int,
                       served: Served) -> list[tuple[tuple[int, int], int]]:
    """The ``(size, batch)`` int8 calibration cycles through: a static file's export size
    and batch; for a dynamic file the two extra sizes verification draws (odd, about half
    the export size: a quarter of the cost per batch, and the per-tensor ranges of seeded
    normal inputs barely depend on the map size), in batch 1."""
    if not served.dynamic:
        return [((int(input_size[0]), int(input_size[1])), batch)]
    return [(c.input_size, 1) for c in default_cases(spec, input_size, batch, served)[1:]]
