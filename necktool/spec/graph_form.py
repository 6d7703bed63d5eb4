"""How a neck is written into an ONNX graph: the opset range and the upsample form
(torch-free vocabulary)."""

from __future__ import annotations

import enum

from necktool.errors import InputError


class Upsample(enum.StrEnum):
    """How an export writes the necks' nearest upsampling (``--upsample``).

    Both give the same numbers wherever level ``k`` is ``ceil(H / s_k)``; they differ in
    what a converter sees (docs/how-to/export.md, "Upsampling that converters keep").
    """

    SIZE = "size"  # Resize to the finer level's size, computed from its Shape (PyTorch's form)
    SCALE2 = "scale2"  # a constant x2 Resize, then a Slice (crop) to the finer level's size


def check_upsample(upsample: Upsample | str) -> Upsample:
    """The upsample form, or an ``InputError`` naming the valid ones."""
    try:
        return Upsample(upsample)
    except ValueError:
        raise InputError(f"upsample form {str(upsample)[:40]!r} is not one of "
                         f"{', '.join(Upsample)}") from None

DEFAULT_OPSET = 18  # the dynamo exporter's native floor; the widest runtime support

MIN_OPSET = 18  # lower opsets go through a lossy version converter; not offered

MAX_OPSET = 24  # the newest this machine's onnx + onnxruntime both load (measured)
