"""What one forward allocates, and its conv multiply-adds by PyTorch's own formula.

:class:`ForwardTracker` is a ``TorchFunctionMode``: it sees every torch call the neck's
forward makes (``torch.conv2d``, ``group_norm``, ``interpolate``, ``Tensor.__add__``...)
without changing it, so it rides along fvcore's TorchScript trace in
:func:`necktool.analysis.profiling.analyze` and the neck still runs once. (A
``TorchDispatchMode`` such as ``torch.utils.flop_counter.FlopCounterMode`` cannot: active
during fvcore's trace, it changes the recorded graph and fvcore's counts.)

Memory, in bytes of the tensors the forward creates:

* an op's output whose storage is new (not seen before, not an input, a parameter or a
  buffer) is an allocation of ``storage.nbytes()``; views and in-place results share a
  known storage and allocate nothing;
* it counts until its storage is released: ``weakref.finalize`` on the storage's Python
  object fires then (PyTorch keeps that object alive exactly as long as the storage);
* the peak is the most bytes held at once, checked after every op, so it includes every
  tensor still referenced (a list the forward keeps, an op's inputs) when an op returns.

Results are copied out when the mode exits; storages still alive (the outputs) stop being
watched then.

Conv multiply-adds: for every conv call, ``torch.utils.flop_counter.conv_flop_count`` (the
formula ``FlopCounterMode`` applies to ``aten.convolution``) on the input, weight and
output shapes, divided by 2 (that formula counts a multiply and an add).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import conv_flop_count

# Under the tracer these return 0-dim tensors that an eager forward never creates; they
# are shape queries, not activations.
_SHAPE_QUERIES: frozenset[Any] = frozenset({
    torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.__len__,
    torch.Tensor.shape.__get__,  # type: ignore[attr-defined]  # the property's getter
})
_CONVS = {torch.conv1d: False, torch.conv2d: False, torch.conv3d: False,
          torch.conv_transpose1d: True, torch.conv_transpose2d: True,
          torch.conv_transpose3d: True}

# The bookkeeping reads tensor shapes; under the TorchScript tracer every read would be
# recorded in the graph fvcore counts (and costs about 1 ms per forward). PyTorch has no
# public way to pause the tracer (torch.jit.is_tracing only reads the state), so this
# uses the private pair when it exists. Without it the reads are recorded as aten::size
# nodes, which fvcore ignores: the figures are the same (a test checks it), only slower.
_get_tracing = getattr(torch._C, "_get_tracing_state", None)
_set_tracing = getattr(torch._C, "_set_tracing_state", None)


@dataclasses.dataclass(frozen=True)
class ForwardFigures:
    """What :class:`ForwardTracker` measured over one forward (bytes are exact)."""

    level_bytes: tuple[int, ...]
    unattributed_bytes: int
    total_bytes: int
    peak_bytes: int
    conv_macs: int


def _shape(t: torch.Tensor) -> list[int]:
    # int(): while the tracer records, a shape's entries are traced values, not ints
    return [int(d) for d in t.shape]


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)


class ForwardTracker(TorchFunctionMode):
    """Bytes of the tensors a forward creates, per level and at peak; conv MACs.

    Args:
        level_of: Spatial size ``(H, W)`` -> level index; a 4-d tensor whose size matches
            no level is unattributed, as is anything not 4-d.
        levels: How many output levels there are.
        external: Tensors that exist before the forward (inputs, parameters, buffers):
            never counted, even when an op returns one of them.
    """

    def __init__(self, level_of: dict[tuple[int, int], int], levels: int,
                 external: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self._level_of = level_of
        self._level_bytes = [0] * levels  # a level whose size another shares gets nothing
        self._unattributed = 0
        # id() of a storage's Python object is stable while the storage lives (PyTorch
        # preserves that object as long as the storage exists).
        self._external = {id(t.untyped_storage()) for t in external}
        self._live: dict[int, int] = {}  # storage id -> bytes
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        self._freed = self._peak = self._total = self._conv_flops = 0
        self.figures: ForwardFigures | None = None

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _SHAPE_QUERIES:
            return out
        state = _get_tracing() if _get_tracing is not None else None
        if state is not None and _set_tracing is not None:
            _set_tracing(None)
        try:
            transposed = _CONVS.get(func)
            if transposed is not None:
                self._count_conv(args, kwargs or {}, out, transposed)
            grew = False
            for t in _tensors(out):
                grew |= self._allocated(t)
            current = self._total - self._freed
            if grew and current > self._peak:
                self._peak = current
        finally:
            if state is not None and _set_tracing is not None:
                _set_tracing(state)
        return out

    def _count_conv(self, args: Any, kwargs: dict[str, Any], out: torch.Tensor,
                    transposed: bool) -> None:
        x = args[0] if args else kwargs["input"]
        w = args[1] if len(args) > 1 else kwargs["weight"]
        self._conv_flops += int(conv_flop_count(_shape(x), _shape(w), _shape(out),
                                                transposed=transposed))

    def _allocated(self, t: torch.Tensor) -> bool:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._live or key in self._external:
            return False  # a view, an in-place result, an input or a parameter
        n = storage.nbytes()
        self._live[key] = n
        self._finalizers.append(weakref.finalize(storage, self._released, key))
        self._total += n
        shape = _shape(t)
        level = self._level_of.get((shape[-2], shape[-1]), -1) if len(shape) == 4 else -1
        if level >= 0:
            self._level_bytes[level] += n
        else:
            self._unattributed += n
        return True

    def _released(self, key: int) -> None:
        # The only writer of _freed (and the main path the only one of _total), so a
        # release that fires in the middle of the bookkeeping loses no update.
        self._freed += self._live.pop(key)

    def __exit__(self, *exc: Any) -> Any:
        result = super().__exit__(*exc)
        for finalizer in self._finalizers:  # the outputs outlive the forward
            finalizer.detach()
        self._finalizers.clear()
        self.figures = ForwardFigures(
            level_bytes=tuple(self._level_bytes), unattributed_bytes=self._unattributed,
            total_bytes=self._total, peak_bytes=self._peak, conv_macs=self._conv_flops // 2)
        return result
