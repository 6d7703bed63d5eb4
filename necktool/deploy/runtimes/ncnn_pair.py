"""An ncnn ``.param``/``.bin`` pair as pnnx converts it from a module (torch-free: pnnx is
imported when a conversion runs)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from necktool import quiet
from necktool.errors import ExportError, first_line


@dataclasses.dataclass(frozen=True)
class NcnnPair:
    """An ncnn model: the ``.param`` text and ``.bin`` weights, and the blob names a caller
    feeds and extracts (in the neck's input and output order)."""

    param: bytes
    weights: bytes
    input_blobs: tuple[str, ...]
    output_blobs: tuple[str, ...]
    fp16: bool = False  # weights stored as float16 (pnnx's default; necktool's --precision fp16)


def pnnx_convert(module: Any, inputs: Sequence[Any], inputs2: Sequence[Any], *,
                 fp16: bool = False) -> NcnnPair:
    """Convert a PyTorch module ``module(*inputs) -> tuple`` to ncnn with ``pnnx.export``.

    ``inputs2`` is a second set of inputs at other sizes: with it pnnx keeps
    ``interpolate(size=...)`` an ``Interp`` that takes its size from a reference blob, so
    the pair runs at every size (with one set, pnnx freezes the size it traced). pnnx writes
    a dozen side files (TorchScript, pnnx graph, Python, ONNX); it runs in a temporary
    directory, silenced, and only the pair's bytes are kept.

    Raises:
        ExportError: pnnx failed or wrote no pair.
    """
    import pnnx

    with tempfile.TemporaryDirectory(prefix="necktool-pnnx-") as tmp:
        base = pathlib.Path(tmp) / "neck"
        pt = f"{base}.pt"
        before = set(sys.modules)
        try:
            # In the temporary directory too: pnnx's binary runs in the working directory,
            # and the user's must receive nothing but the pair.
            with quiet.quiet(), _cwd(tmp):
                pnnx.export(module, pt, tuple(inputs), tuple(inputs2), fp16=fp16)
        except Exception as exc:  # pnnx raises whatever its generated module raises
            if not (pathlib.Path(f"{base}.ncnn.param").is_file()
                    and pathlib.Path(f"{base}.ncnn.bin").is_file()):
                raise ExportError(f"pnnx did not convert the neck to ncnn: {first_line(exc)}"
                                  ) from None
        finally:  # pnnx imports its generated Python from the temporary directory
            for name in set(sys.modules) - before:
                if name.startswith(tmp):
                    del sys.modules[name]
        param, weights = pathlib.Path(f"{base}.ncnn.param"), pathlib.Path(f"{base}.ncnn.bin")
        if not param.is_file() or not weights.is_file():
            raise ExportError("pnnx wrote no ncnn .param/.bin pair (its output is silenced; "
                              "run pnnx by hand on the TorchScript to see why)")
        text = param.read_bytes()
        blob = weights.read_bytes()
    layers = [ln.split() for ln in text.decode().splitlines()[2:] if ln.strip()]
    inputs_ = tuple(ln[1] for ln in layers if ln[0] == "Input")
    consumed = {b for ln in layers for b in ln[4:4 + int(ln[2])]}
    produced = [b for ln in layers for b in ln[4 + int(ln[2]):4 + int(ln[2]) + int(ln[3])]]
    outputs = tuple(b for b in produced if b not in consumed and b not in inputs_)
    if len(inputs_) != len(inputs) or not outputs:
        raise ExportError(f"pnnx wrote an ncnn graph with inputs {list(inputs_)} and outputs "
                          f"{list(outputs)}; expected {len(inputs)} inputs")
    return NcnnPair(text, blob, inputs_, tuple(sorted(outputs, key=_blob_order)), fp16)


def _blob_order(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else 0, name)


@contextlib.contextmanager
def _cwd(path: str) -> Any:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
