"""Released detector ONNX files: find the neck by the graph's structure, take its weights,
prove the match.

Torch-free where it only reads graphs (:mod:`.loading`, :mod:`.graph`, :mod:`.neck`,
:mod:`.inspect`); :mod:`.weights` and :mod:`.compare` build and run the PyTorch neck.

Example:
    >>> from necktool.detector import find_neck, load_detector
    >>> found = find_neck(load_detector("det_2.5g.onnx"))  # doctest: +SKIP
    >>> found.spec.family, found.inputs, found.outputs  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from necktool.detector.loading import load_detector
    from necktool.detector.neck import DetectorNeck, find_neck

__all__ = ["DetectorNeck", "find_neck", "load_detector"]
_WHERE = {"DetectorNeck": "necktool.detector.neck", "find_neck": "necktool.detector.neck",
          "load_detector": "necktool.detector.loading"}


def __getattr__(name: str) -> Any:  # onnx is imported only when a graph is read
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'necktool.detector' has no attribute {name!r}")
