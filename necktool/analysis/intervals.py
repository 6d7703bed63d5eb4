"""How each operation of a forward maps what its output pixels depend on (the engine of
:mod:`necktool.analysis.receptive`).

A :class:`Tracker` is a :class:`~torch.overrides.TorchFunctionMode`: while a forward runs
under it on ``meta`` tensors, every tensor derived from the tracked inputs carries, per input
level and per axis, the interval ``[lo, hi]`` of input rows (columns) each of its rows
(columns) depends on. A box's dependency is the product of its row and column intervals,
so per-axis hulls are exact bounding boxes. Convolutions and pooling map intervals by
kernel, stride, padding and dilation; upsampling, slicing and padding by their index
mapping; elementwise ops and channel concatenation take hulls; norms count as per-pixel
(their statistics excluded). The result of each modelled op is made from its shapes as an
empty meta tensor: PyTorch's own meta kernels for convolutions, norms or leaky_relu load
seconds of its decomposition machinery on first use. Anything else done to level data
raises :class:`Unreadable`, naming the op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

_EMPTY_LO, _EMPTY_HI = np.iinfo(np.int64).max // 4, np.iinfo(np.int64).min // 4

# Operations that act on each pixel alone (norm statistics excluded, see the docstring).
_POINTWISE = frozenset({
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid",
    "hardsigmoid", "hardswish", "hardtanh", "tanh", "softplus", "prelu", "clamp", "clip",
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "square", "pow", "clone", "contiguous",
    "detach", "float", "half", "to", "type_as", "dropout", "dropout2d", "alpha_dropout",
    "batch_norm", "group_norm", "instance_norm", "layer_norm", "local_response_norm",
    "identity", "requires_grad_", "__neg__", "__pos__", "__abs__", "reciprocal",
})
# Elementwise with broadcasting: the result depends on every operand.
_ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "true_divide", "maximum", "minimum", "where",
    "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__",
    "__rmul__", "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "addcmul",
    "lerp", "__pow__", "__rpow__",
})
_CONVS = {"conv2d": False, "conv_transpose2d": True}
_POOLS = frozenset({"max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "avg_pool2d"})
_ADAPTIVE = frozenset({"adaptive_avg_pool2d", "adaptive_max_pool2d",
                       "_adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"})
_REDUCTIONS = frozenset({"mean", "sum", "amax", "amin"})
_NORMS = frozenset({"batch_norm", "group_norm", "instance_norm", "layer_norm",
                    "local_response_norm"})
_FRESH = frozenset({"zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
                    "randn_like", "new_zeros", "new_ones", "new_empty", "new_full"})
_WITH_INDICES = frozenset({"max_pool2d_with_indices", "adaptive_max_pool2d_with_indices",
                           "_max_pool2d", "_adaptive_max_pool2d"})
_SPLITS = frozenset({"split", "chunk", "split_with_sizes", "tensor_split", "unbind"})
# Views and queries: called as they are on the meta tensors (PyTorch's C++ handles them
# without loading its Python meta kernels); every other op's result is made from shapes.
_VIEWS = frozenset({"__getitem__", "view", "reshape", "expand", "expand_as", "squeeze",
                    "unsqueeze", "flatten", "contiguous", *_SPLITS})


class Unreadable(Exception):
    """The forward did something the interval propagation does not model."""

# Axis: int64 array (n, 2) of [lo, hi] per position; empty = [_EMPTY_LO, _EMPTY_HI].
Axis = np.ndarray
# Deps: input level -> (rows, cols)
Deps = dict[int, tuple[Axis, Axis]]


def _gather(axis: Axis, index: np.ndarray) -> Axis:
    """Position ``o`` of the result depends on ``axis[index[o, t]]`` for the valid (in
    range) ``t``: the hull of their intervals."""
    n = axis.shape[0]
    valid = (index >= 0) & (index < n)
    safe = np.where(valid, index, 0)
    lo = np.where(valid, axis[safe, 0], _EMPTY_LO).min(axis=1)
    hi = np.where(valid, axis[safe, 1], _EMPTY_HI).max(axis=1)
    return np.stack([lo, hi], axis=1)


def _hull(a: Axis, b: Axis) -> Axis:
    if a.shape[0] != b.shape[0]:  # broadcasting a size-1 axis
        a, b = np.broadcast_to(a, b.shape) if a.shape[0] == 1 else a, \
            np.broadcast_to(b, a.shape) if b.shape[0] == 1 else b
    return np.stack([np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])], axis=1)


def _union(parts: Sequence[Deps]) -> Deps:
    out: Deps = {}
    for deps in parts:
        for level, (rows, cols) in deps.items():
            if level in out:
                out[level] = (_hull(out[level][0], rows), _hull(out[level][1], cols))
            else:
                out[level] = (rows, cols)
    return out


def _window(out: int, kernel: int, stride: int, pad: int, dilation: int) -> np.ndarray:
    o = np.arange(out)[:, None]
    return o * stride - pad + np.arange(kernel)[None, :] * dilation


def _transposed(out: int, kernel: int, stride: int, pad: int, dilation: int) -> np.ndarray:
    """Output ``o`` of a transposed conv gets input ``i`` where ``o = i s - p + t d``."""
    num = np.arange(out)[:, None] + pad - np.arange(kernel)[None, :] * dilation
    return np.where(num % stride == 0, num // stride, -1)


def _pair(value: Any, default: int = 0) -> tuple[int, int]:
    if value is None:
        return default, default
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1])) if value else (default, default)
    return int(value), int(value)


def _map_axes(deps: Deps, rows: Callable[[Axis], Axis],
              cols: Callable[[Axis], Axis]) -> Deps:
    return {level: (rows(r), cols(c)) for level, (r, c) in deps.items()}


class Tracker(TorchFunctionMode):
    """Runs a forward on meta tensors, carrying the dependency intervals of each tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.deps: dict[int, tuple[torch.Tensor, Deps]] = {}

    def track(self, tensor: torch.Tensor, deps: Deps) -> None:
        self.deps[id(tensor)] = (tensor, deps)  # the tensor is kept so its id stays unique

    def of(self, value: Any) -> Deps | None:
        if isinstance(value, torch.Tensor):
            entry = self.deps.get(id(value))
            if entry is not None and entry[0] is value:
                return entry[1]
        return None

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        tracked = [d for v in _leaves((args, kwargs)) if (d := self.of(v)) is not None]
        if not tracked:  # parameters, constants: real, small, computed as they are
            return func(*args, **kwargs)
        name = getattr(func, "__name__", repr(func))
        base = _base(name)
        if base == "__setitem__":
            self._assign(args)
            return None
        result = None if base in _VIEWS else _shaped(base, name, args, kwargs)
        if result is None:
            result = func(*args, **kwargs)  # a view, a query (size, dim...), or unmodelled
        if base in _FRESH:  # zeros_like(x) and kin: the shape of level data, not its values
            return result
        if isinstance(result, (tuple, list)) and result and isinstance(result[0], torch.Tensor):
            if base in _WITH_INDICES or base in _POOLS | _ADAPTIVE:
                self.track(result[0], self._rule(name, args, kwargs, result[0]))
                return result
            if base in _SPLITS and _dim(args, kwargs, 1) in (0, 1):  # along channels
                for part in result:
                    self.track(part, _union(tracked))
                return result
            raise Unreadable(f"the forward calls {name} on level data, which is not modelled")
        if not isinstance(result, torch.Tensor):
            return result
        self.track(result, self._rule(name, args, kwargs, result))
        return result

    def _assign(self, args: Sequence[Any]) -> None:
        """``x[key] = value``: followed when ``key`` takes whole rows and columns."""
        target, key, value = args[0], args[1], args[2]
        items = list(key) if isinstance(key, tuple) else [key]
        spatial = items[2:4] if Ellipsis not in items else items[items.index(Ellipsis) + 1:]
        if any(not (isinstance(i, slice) and i == slice(None)) for i in spatial) or \
                not isinstance(target, torch.Tensor) or target.dim() != 4:
            raise Unreadable("the forward assigns level data into part of a map")
        found = [d for d in (self.of(target), self.of(value)) if d is not None]
        self.track(target, _union(found))

    def _rule(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              result: torch.Tensor) -> Deps:
        base = _base(name)
        first = self.of(args[0]) if args else None
        if result.dim() != 4:
            raise Unreadable(f"{name} makes a {result.dim()}-d tensor from level data "
                             "(only N, C, H, W maps are followed)")
        h, w = int(result.shape[2]), int(result.shape[3])
        if base in _POINTWISE and first is not None:
            return first
        if base in _ELEMENTWISE or base == "cat":
            operands = list(args) + list(kwargs.values())
            if base == "cat":
                dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
                if int(dim) % 4 >= 2:
                    raise Unreadable("the forward concatenates level data along H or W")
                operands = list(args[0])
            found = [d for d in (self.of(v) for v in operands) if d is not None]
            return _union(found)
        if first is None:
            raise Unreadable(f"the forward calls {name} with level data not as its input")
        x = args[0]
        n_h, n_w = int(x.shape[2]), int(x.shape[3])
        if base in _CONVS or base in _POOLS:
            kernel, stride, pad, dil = (_conv_geometry(base, args, kwargs) if base in _CONVS
                                        else _pool_geometry(base, args, kwargs))[:4]
            make = _transposed if _CONVS.get(base) else _window
            rows, cols = (make(size, *g) for size, g in zip(
                (h, w), zip(kernel, stride, pad, dil, strict=True), strict=True))
            return _map_axes(first, lambda a: _gather(a, rows), lambda a: _gather(a, cols))
        if base == "interpolate" or base == "upsample":
            return _map_axes(first, lambda a: _gather(a, _resize(n_h, h, args, kwargs, 0)),
                             lambda a: _gather(a, _resize(n_w, w, args, kwargs, 1)))
        if base in _ADAPTIVE or base in _REDUCTIONS:
            if base in _REDUCTIONS and (h, w) != (1, 1) and (h, w) != (n_h, n_w):
                raise Unreadable(f"{name} over part of a map")
            return _map_axes(first, lambda a: _gather(a, _adaptive(n_h, h)),
                             lambda a: _gather(a, _adaptive(n_w, w)))
        if base == "__getitem__":
            return _map_axes(first, lambda a: _gather(a, _sliced(args[1], 2, n_h, h)),
                             lambda a: _gather(a, _sliced(args[1], 3, n_w, w)))
        if base == "pad":
            pads = [*(args[1] if len(args) > 1 else kwargs["pad"]), 0, 0, 0, 0]
            mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
            if mode != "constant":
                raise Unreadable(f"F.pad with mode {mode!r}")
            rows = (np.arange(h) - pads[2])[:, None]
            cols = (np.arange(w) - pads[0])[:, None]
            return _map_axes(first, lambda a: _gather(a, rows), lambda a: _gather(a, cols))
        if base in ("view", "reshape", "expand", "expand_as", "squeeze", "unsqueeze") \
                and (h, w) == (n_h, n_w) and x.dim() == 4:
            return first
        raise Unreadable(f"the forward calls {name} on level data, which is not modelled")


def _base(name: str) -> str:
    """``relu_`` -> ``relu`` (in-place variants follow the same rule)."""
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def _leaves(value: Any) -> Iterator[Any]:
    """Everything inside nested tuples, lists and dicts (the arguments of a torch call)."""
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


def _dim(args: Sequence[Any], kwargs: Mapping[str, Any], at: int) -> int:
    dim = kwargs.get("dim", args[at + 1] if len(args) > at + 1 else 0)
    return int(dim) % 4


def _meta(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    return torch.empty(tuple(int(n) for n in shape), device="meta", dtype=like.dtype)


def _given(names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any],
           skip: int = 1) -> dict[str, Any]:
    """The named arguments of a call, positional ones (after ``skip``) included."""
    return dict(zip(names, args[skip:], strict=False)) | {k: v for k, v in kwargs.items()
                                                          if k in names}


def _broadcast(shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes (a size-1 dimension stretches)."""
    rank = max(len(shape) for shape in shapes)
    out = [1] * rank
    for shape in shapes:
        for i, size in enumerate(shape, start=rank - len(shape)):
            if size != 1:
                out[i] = size
    return tuple(out)


def _pool_size(n: int, k: int, st: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's pooling output size (``pooling_output_shape``)."""
    span = n + 2 * p - d * (k - 1) - 1 + (st - 1 if ceil else 0)
    out = span // st + 1
    if ceil and (out - 1) * st >= n + p:
        out -= 1
    return out


def _shaped(base: str, name: str, args: Sequence[Any],
            kwargs: Mapping[str, Any]) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
    """The result of a modelled op on level data, made from shapes as an empty meta tensor
    (PyTorch's meta kernels for convolutions, norms or leaky_relu would load seconds of its
    decomposition machinery on first use); ``None`` for an op not modelled here."""
    x = args[0] if args else kwargs.get("tensors")
    if base == "cat" and isinstance(x, (list, tuple)) and x:
        dim = _dim(args, kwargs, 0)
        shape = list(x[0].shape)
        shape[dim] = sum(int(t.shape[dim]) for t in x)
        return _meta(shape, x[0])
    if not isinstance(x, torch.Tensor):
        return None
    inplace = name != base or kwargs.get("inplace") is True
    if base in _POINTWISE:
        if inplace or (base not in _NORMS and len(args) > 1 and args[-1] is True):
            return x  # F.leaky_relu(x, slope, True): in place
        return _meta(x.shape, x)
    if base in _ELEMENTWISE:
        if base.startswith("__i"):
            return x
        shapes = [tuple(v.shape) for v in _leaves((args, kwargs)) if isinstance(v, torch.Tensor)]
        return x if inplace else _meta(_broadcast(shapes), x)
    if x.dim() != 4:
        return None
    n, c, h, w = (int(v) for v in x.shape)
    if base in _CONVS:
        return _conv_shape(base, args, kwargs, x)
    if base in _POOLS:
        kernel, stride, pad, dil, ceil, indices = _pool_geometry(base, args, kwargs)
        out = _meta((n, c, *(_pool_size(size, k, st, p, d, ceil) for size, k, st, p, d in
                             zip((h, w), kernel, stride, pad, dil, strict=True))), x)
        return (out, _meta(out.shape, x)) if indices or base in _WITH_INDICES else out
    if base in _ADAPTIVE:
        size = _given(("output_size", "return_indices"), args, kwargs)["output_size"]
        sizes = list(size) if isinstance(size, (list, tuple)) else [size, size]
        out = _meta((n, c, *(old if new is None else new
                             for old, new in zip((h, w), sizes, strict=True))), x)
        return (out, _meta(out.shape, x)) if base in _WITH_INDICES or \
            _given(("output_size", "return_indices"), args, kwargs).get("return_indices") \
            else out
    if base in ("interpolate", "upsample"):
        given = _given(("size", "scale_factor"), args, kwargs)
        if given.get("size") is not None:
            size = given["size"]
            sizes = list(size) if isinstance(size, (list, tuple)) else [size, size]
        else:
            factor = given["scale_factor"]
            factors = list(factor) if isinstance(factor, (list, tuple)) else [factor] * 2
            sizes = [math.floor(old * float(f)) for old, f in zip((h, w), factors,
                                                                   strict=True)]
        return _meta((n, c, *sizes), x)
    if base in _REDUCTIONS:
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        dims = {int(d) % 4 for d in (dims if isinstance(dims, (list, tuple)) else [dims])} \
            if dims is not None else None
        if dims == {2, 3} and keep:
            return _meta((n, c, 1, 1), x)
        return None
    if base == "pad":
        pads = [*(args[1] if len(args) > 1 else kwargs["pad"]), 0, 0, 0, 0]
        return _meta((n, c, h + int(pads[2]) + int(pads[3]), w + int(pads[0]) + int(pads[1])),
                     x)
    return None


Pair = tuple[int, int]


def _conv_geometry(base: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[
        Pair, Pair, Pair, Pair, Pair, int]:
    """Kernel, stride, padding, dilation, output padding and groups of a (transposed) conv
    call, from ``F.conv2d``'s or ``F.conv_transpose2d``'s arguments."""
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    names = ("bias", "stride", "padding", "output_padding", "groups", "dilation") \
        if _CONVS[base] else ("bias", "stride", "padding", "dilation", "groups")
    given = _given(names, args, kwargs, skip=2)
    stride, dilation = _pair(given.get("stride"), 1), _pair(given.get("dilation"), 1)
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    pad = given.get("padding", 0)
    if isinstance(pad, str):  # 'valid', or 'same' (stride 1)
        pad = (0, 0) if pad == "valid" else tuple(
            d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True))
    return (kernel, stride, _pair(pad), dilation, _pair(given.get("output_padding")),
            int(given.get("groups", 1)))


def _pool_geometry(base: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[
        Pair, Pair, Pair, Pair, bool, bool]:
    """Kernel, stride (the kernel's by default), padding, dilation, ceil_mode and
    return_indices of a max or average pooling call."""
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices") \
        if "max" in base else ("kernel_size", "stride", "padding", "ceil_mode")
    given = _given(names, args, kwargs)
    kernel = _pair(given["kernel_size"])
    stride = _pair(given["stride"]) if given.get("stride") not in (None, [], ()) else kernel
    return (kernel, stride, _pair(given.get("padding")), _pair(given.get("dilation"), 1),
            bool(given.get("ceil_mode")), bool(given.get("return_indices")))


def _conv_shape(base: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                x: torch.Tensor) -> torch.Tensor:
    kernel, stride, padding, dilation, extra, groups = _conv_geometry(base, args, kwargs)
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    transposed = _CONVS[base]
    sizes = [(size - 1) * st - 2 * p + d * (k - 1) + e + 1 if transposed
             else (size + 2 * p - d * (k - 1) - 1) // st + 1
             for size, k, st, p, d, e in zip(x.shape[2:], kernel, stride, padding, dilation,
                                             extra, strict=True)]
    channels = int(weight.shape[1]) * groups if transposed else int(weight.shape[0])
    return _meta((x.shape[0], channels, *sizes), x)


def _resize(n: int, out: int, args: Sequence[Any], kwargs: Mapping[str, Any],
            axis: int) -> np.ndarray:
    """Source indices of an ``F.interpolate`` along one axis."""
    keys = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor")
    given = dict(zip(keys, args[1:], strict=False)) | {k: v for k, v in kwargs.items()
                                                      if k in keys}
    mode = given.get("mode") or "nearest"
    factor = given.get("scale_factor")
    if factor is not None and not given.get("recompute_scale_factor"):
        f = factor[axis] if isinstance(factor, (list, tuple)) else factor
        scale = 1.0 / float(f)
    else:
        scale = n / out
    o = np.arange(out, dtype=np.float64)
    if mode == "nearest":
        return np.minimum(np.floor(o * scale), n - 1).astype(np.int64)[:, None]
    if mode == "nearest-exact":
        return np.minimum(np.floor((o + 0.5) * scale), n - 1).astype(np.int64)[:, None]
    if mode in ("bilinear", "linear"):
        if given.get("align_corners"):
            src = o * ((n - 1) / (out - 1) if out > 1 else 0.0)
        else:
            src = np.maximum((o + 0.5) * scale - 0.5, 0.0)
        i0 = np.minimum(np.floor(src), n - 1).astype(np.int64)
        i1 = np.where((src - i0 > 0) & (i0 < n - 1), i0 + 1, -1)  # weight 0: no dependency
        return np.stack([i0, i1], axis=1)
    raise Unreadable(f"interpolate with mode {mode!r}")


def _adaptive(n: int, out: int) -> np.ndarray:
    """Adaptive pooling's window: ``floor(o n / out)`` to ``ceil((o + 1) n / out)``."""
    starts = [(o * n) // out for o in range(out)]
    ends = [-(-((o + 1) * n) // out) for o in range(out)]
    width = max(e - s for s, e in zip(starts, ends, strict=True))
    index = np.full((out, width), -1, dtype=np.int64)
    for o, (s, e) in enumerate(zip(starts, ends, strict=True)):
        index[o, :e - s] = np.arange(s, e)
    return index


def _sliced(key: Any, dim: int, n: int, out: int) -> np.ndarray:
    """Source indices along ``dim`` of ``x[key]`` (slices and ``...`` only)."""
    items = list(key) if isinstance(key, tuple) else [key]
    if any(item is None for item in items):
        raise Unreadable("indexing level data with None")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + [slice(None)] * (4 - len(items) + 1) + items[at + 1:]
    items += [slice(None)] * (4 - len(items))
    item = items[dim]
    if not isinstance(item, slice):
        raise Unreadable("indexing level data along H or W with something other than a slice")
    index = np.arange(n)[item]
    if len(index) != out:
        raise Unreadable("a slice of level data whose size does not match its result")
    return index[:, None]
