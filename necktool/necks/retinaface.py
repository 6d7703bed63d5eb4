"""RetinaFace's FPN, after Pytorch_Retinaface's ``models/net.py`` ``FPN``.

The submodule names ``output1..N`` and ``merge1..N-1`` (each ``Sequential(conv, bn, act)``)
are the original's, so a checkpoint's ``fpn.*`` weights load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from necktool.necks.base import Levels, Neck, as_levels
from necktool.necks.layers import UpsampleAdd
from necktool.spec.families import Inferred, lateral_weights, norm_from
from necktool.spec.fields import Activation
from necktool.spec.neck_spec import NeckSpec, retinaface_leaky_slope


class RetinaFaceFPN(Neck):
    """RetinaFace's FPN: 1x1 laterals, top-down nearest-upsample adds, 3x3 merges.

    The coarsest level gets no merge conv, as in the original.
    """

    STAGES: ClassVar[Mapping[str, str]] = {"output": "lateral", "fuse": "merge", "merge": "merge"}

    def __init__(self, spec: NeckSpec) -> None:
        super().__init__(spec)
        for i, cin in enumerate(spec.in_channels, start=1):
            self.add_module(f"output{i}", self.block(cin, 1))
        for i in range(1, spec.num_levels):
            self.add_module(f"fuse{i}", UpsampleAdd())
            self.add_module(f"merge{i}", self.block(spec.out_channels, 3))

    def forward(self, inputs: Levels) -> tuple[torch.Tensor, ...]:
        feats = as_levels(inputs, self.spec.num_inputs)
        outs = [getattr(self, f"output{i + 1}")(x) for i, x in enumerate(feats)]
        for i in range(self.num_levels - 2, -1, -1):  # coarse to fine
            fused = getattr(self, f"fuse{i + 1}")(outs[i], outs[i + 1])
            outs[i] = getattr(self, f"merge{i + 1}")(fused)
        return tuple(outs)


def infer(shapes: Mapping[str, tuple[int, ...]]) -> Inferred | None:
    """The spec fields a Pytorch_Retinaface ``fpn`` state dict's shapes imply (keys at the
    neck's root: ``output1.0.weight``, ``merge1.1.running_mean``, ...)."""
    laterals = lateral_weights(shapes, lambda i: f"output{i + 1}.0.weight")
    if laterals is None:
        return None
    out = laterals[0][0]
    norm = norm_from(shapes, "output1.1.running_mean", "output1.1.weight")
    slope = retinaface_leaky_slope(out)
    fields = {"in_channels": tuple(s[1] for s in laterals), "out_channels": out, "norm": norm,
              "act": Activation.LEAKY_RELU, "leaky_slope": slope}
    notes = [f"activation: not stored in the weights; Pytorch_Retinaface's LeakyReLU "
             f"assumed, slope {slope:g} (its rule: 0.1 when out_channels <= 64, else 0)"]
    return Inferred(fields, tuple(notes))


def conv_keys(spec: NeckSpec, role: str, level: int) -> tuple[str, str]:
    """The module a detector file's neck conv loads into: ``(conv, norm)`` paths
    (``role`` ``lateral`` -> ``output<i+1>``, else ``merge<i+1>``)."""
    base = f"output{level + 1}" if role == "lateral" else f"merge{level + 1}"
    return f"{base}.0", f"{base}.1"
