"""Read an ONNX file that necktool did not write, as untrusted data (torch-free).

Nothing from the file is imported or executed: it is parsed by protobuf, its external-data
locations are checked (each must name a file inside the model's own directory; absolute
paths and ``..`` escapes are refused) before any of them is read, and the bytes its
tensors declare count against the memory limit (``--max-memory``,
:mod:`necktool.spec.resources`) before they are allocated. Damage of any kind (truncated or
malformed protobuf, a tensor whose data does not fill its shape) is a one-line
:class:`~necktool.errors.InputError`, exit 2.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from necktool.errors import InputError, first_line
from necktool.spec.resources import human, limit

if TYPE_CHECKING:
    import onnx

#: protobuf's parse holds the file's bytes and the parsed message at once
PARSE_FACTOR = 3
MAX_DIMS = 8


def _check_memory(nbytes: int, what: str) -> None:
    cap, source = limit()
    if cap is not None and nbytes > cap:
        raise InputError(f"{what} needs about {human(nbytes)} of memory; {source} (set "
                         "--max-memory to allow more)")


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor the graph holds: initializers and Constant nodes' values."""
    yield from model.graph.initializer
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t


def declared_bytes(tensor: onnx.TensorProto, where: str) -> int:
    """The bytes ``tensor``'s dims and data type say it holds (its dims checked)."""
    from onnx import helper

    if len(tensor.dims) > MAX_DIMS or any(d < 0 for d in tensor.dims):
        raise InputError(f"{where}: tensor {tensor.name[:80]!r} has an impossible shape "
                         f"{list(tensor.dims)[:MAX_DIMS + 1]}")
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # an unknown or string data type
        itemsize = 8
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count * itemsize


def _external_location(tensor: onnx.TensorProto, base: pathlib.Path, where: str) -> None:
    """Refuse an external-data location outside ``base`` (before anything is read)."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    bad = (not location or "\x00" in location or os.path.isabs(location)
           or pathlib.PureWindowsPath(location).is_absolute())
    if not bad:
        resolved = (base / location).resolve()
        bad = resolved != base and base not in resolved.parents
    if bad:
        raise InputError(f"{where}: tensor {tensor.name[:80]!r} keeps its data at "
                         f"{location[:120]!r}, outside the model's directory; refused (external "
                         "data must be a file next to the model)")


def load_detector(path: str | os.PathLike[str], what: str = "ONNX file") -> onnx.ModelProto:
    """Load an ONNX file as untrusted data, external data included once checked.

    Raises:
        InputError: missing, unreadable, not ONNX, external data outside the model's
            directory, tensors that do not fit the memory limit or do not fill their shape.
    """
    file = pathlib.Path(path)
    where = f"{what} {str(file)!r}"
    if not file.is_file():
        raise InputError(f"{where} does not exist or is not a file")
    _check_memory(PARSE_FACTOR * file.stat().st_size, f"reading {where}")
    import onnx
    from onnx import external_data_helper

    try:
        model = onnx.load(str(file), load_external_data=False)
    except OSError as exc:
        raise InputError(f"cannot read {where}: {(exc.strerror or str(exc)).lower()}") \
            from None
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"{where} is not an ONNX model (truncated or malformed protobuf: "
                         f"{first_line(exc, 120)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise InputError(f"{where} holds no graph (an empty or non-ONNX protobuf)")
    base = file.resolve().parent
    total = 0
    external = False
    for tensor in _tensors(model):
        total += declared_bytes(tensor, where)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _external_location(tensor, base, where)
            external = True
    _check_memory(total + PARSE_FACTOR * file.stat().st_size,
                  f"the {len(model.graph.initializer)} initializers of {where}")
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise InputError(f"{where}: cannot read its external data: "
                             f"{first_line(exc, 160)}") from None
    return model
