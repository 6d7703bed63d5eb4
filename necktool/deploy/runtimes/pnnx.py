"""The neck as an ncnn model: converted from the PyTorch module by pnnx (torch side).

Converting from the module, not from the ONNX file, is what keeps every size working:
pnnx traces the module at two sizes and turns ``interpolate(size=finer level)`` into an
``Interp`` layer that takes its output size from the finer level's blob. Converting the
dynamic ONNX file with a second shape leaves ``pnnx.Expression`` layers in the ``.param``,
which ncnn refuses to load; with one shape the upsample is frozen at the traced size.
"""

from __future__ import annotations

import torch
from torch import nn

from necktool.deploy.runtimes.ncnn_pair import NcnnPair, pnnx_convert
from necktool.necks.build import make_inputs
from necktool.spec.neck_spec import NeckSpec


class PositionalNeck(nn.Module):
    """``neck(*levels) -> tuple`` for tracers that pass inputs positionally (pnnx's)."""

    def __init__(self, neck: nn.Module) -> None:
        super().__init__()
        self.neck = neck

    def forward(self, *levels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.neck(list(levels)))


def second_size(spec: NeckSpec, size: tuple[int, int]) -> tuple[int, int]:
    """A second traced size at which every level's height and width differ from the first
    (``+S`` and ``+2S`` for the coarsest stride ``S``), so pnnx keeps them all symbolic."""
    stride = spec.input_strides[-1]
    return size[0] + stride, size[1] + 2 * stride


def neck_to_ncnn(model: nn.Module, spec: NeckSpec, input_size: tuple[int, int] | None = None,
                 *, fp16: bool = False) -> NcnnPair:
    """The ncnn ``.param``/``.bin`` pair of ``model`` (fp32 weights unless ``fp16``), traced
    in batch 1 at ``input_size`` (default the spec's) and at :func:`second_size`.

    Raises:
        ExportError: pnnx failed.
    """
    size = input_size or spec.input_size
    first = make_inputs(spec, size, 1, seed=0)
    second = make_inputs(spec, second_size(spec, size), 1, seed=0)
    return pnnx_convert(PositionalNeck(model).eval(), first, second, fp16=fp16)
