"""The neck to export, verify or time, with the weights a :class:`WeightsRequest` names: a
seed, a checkpoint (:mod:`necktool.necks.weights`) or a detector ONNX file
(:mod:`necktool.detector.weights`)."""

from __future__ import annotations

import pathlib

from torch import nn

from necktool.detector.weights import load_detector_weights
from necktool.errors import WeightsError
from necktool.necks.build import build_neck
from necktool.necks.weights import load_checkpoint, seeded_model
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.weights import WeightsKind, WeightSource, WeightsRequest


def load_weights(model: nn.Module, path: str | pathlib.Path,
                 prefix: str | None = None) -> WeightSource:
    """Fill ``model`` in place from a ``.pt``/``.pth`` state dict
    (:func:`~necktool.necks.weights.load_checkpoint`: strict keys, ``prefix`` selects the
    neck's keys) or a detector ONNX file (its neck's Conv nodes, found by the graph's
    structure), and say where the weights came from.

    Raises:
        WeightsError: unreadable file, or keys (a detector's neck) that do not fit.
    """
    if WeightsRequest(path=pathlib.Path(path)).kind is WeightsKind.ONNX:
        if prefix:
            raise WeightsError("--prefix selects a neck inside a checkpoint; a detector ONNX "
                               "file's neck is found by the graph's structure")
        return load_detector_weights(model, path)
    return load_checkpoint(model, path, prefix)


def make_model(spec: NeckSpec, weights: WeightsRequest = WeightsRequest()
               ) -> tuple[nn.Module, WeightSource]:
    """The neck with weights from ``weights.path`` (strict) or else from ``weights.seed``
    (default 0), and the record of where they came from.

    Raises:
        WeightsError: the file is missing, unreadable, or its keys (or, for a detector
            ONNX file, its neck) do not fit.
    """
    seed = weights.seed or 0
    if weights.path is None:
        return seeded_model(spec, seed), WeightSource("seed", seed=seed)
    model = build_neck(spec, seed=seed)
    return model, load_weights(model, weights.path, weights.prefix)
