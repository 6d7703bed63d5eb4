"""What each output level sees: the receptive field of its pixels on every input level.

For one output pixel far from the borders, the block of an input level's pixels that can
change it (every path the neck has: laterals, top-down upsampling, bottom-up stride-2
convs, extra levels), as height x width in that level's pixels; the largest over output
positions, since through stride-2 convs and nearest upsampling the block differs by a
pixel with the position's parity. In image pixels: the largest over input levels of
block x the level's stride. Normalisation statistics are excluded (GroupNorm's mean and
variance span the whole map, so strictly every pixel would see everything): norms count
as per-pixel operations.

How it is computed: the neck's own ``forward`` runs under a
:class:`~torch.overrides.TorchFunctionMode` on ``meta`` tensors (shapes, no arithmetic, so
the size costs nothing; the result of each modelled op is made from its shapes, views
and shape queries run as they are), and beside every tensor derived from the inputs
rides, per input level and per axis, the interval of input rows (columns) each of its
rows (columns) depends on. Each operation maps intervals from its kernel size, stride, padding and
dilation (convolutions, pooling), its index mapping (upsampling, slicing, padding), or
takes their hull (adds, concatenation along channels, products). A box's dependency is
the product of its row and column intervals, so the per-axis hulls are exactly the
bounding boxes. The same code reads every built-in family and most custom necks; a
forward that calls an operation not modelled here on level data (or that needs real
values) is reported as not readable, naming the operation.

"Far from the borders" is made concrete by the size: the forward runs at a square size
(a multiple of the coarsest stride, so every upsample is exactly 2x) large enough that
no block of the central output pixels touches an input's border, confirmed by doubling
the size once and getting the same figures.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from necktool.report import Note, Table, num, table
from necktool.spec.neck_spec import NeckSpec

#: the largest side tried before giving up (a neck whose field outgrows this is unusual)
MAX_SIDE = 1 << 16
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


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """One output level's receptive field: ``inputs`` maps each input level (``c3``...)
    to the (height, width) block of its pixels that can change one output pixel
    (``(0, 0)``: that level cannot change it); ``image`` is the largest block x stride."""

    image: tuple[int, int]
    inputs: dict[str, tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        return {"image": list(self.image),
                "inputs": {name: list(hw) for name, hw in self.inputs.items()}}


@dataclasses.dataclass(frozen=True)
class ReceptiveFields:
    """Every output level's field, or why the neck's structure could not be read."""

    levels: tuple[ReceptiveField, ...] | None
    unreadable: str | None = None
    side: int | None = None  # the square size the forward ran at

    def table(self, level_names: Sequence[str], input_names: Sequence[str],
              strides: Sequence[int]) -> Table | Note:
        if self.levels is None:
            return Note(f"receptive field: not readable ({self.unreadable})", "warn")
        rows = [(name, str(stride), _hw(rf.image),
                 *(_hw(rf.inputs[i]) if any(rf.inputs[i]) else "-" for i in input_names))
                for name, stride, rf in zip(level_names, strides, self.levels, strict=True)]
        return table("receptive field (pixels far from the borders; h x w)",
                     ["level", num("stride"), num("image px"),
                      *(num(f"on {i}") for i in input_names)], rows,
                     caption="on cK: block of that input level's pixels that can change one "
                             "output pixel (largest over positions, every path); image px: "
                             "the largest block x stride; norm statistics excluded")


def _hw(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


# -- intervals -----------------------------------------------------------------------
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


class _Tracker(TorchFunctionMode):
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
        if base in _CONVS:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            kh, kw = int(weight.shape[2]), int(weight.shape[3])
            names = ("stride", "padding", "output_padding", "groups", "dilation") \
                if _CONVS[base] else ("stride", "padding", "dilation", "groups")
            given = dict(zip(names, args[3:], strict=False)) | {
                k: v for k, v in kwargs.items() if k in names}
            (sh, sw), (dh, dw) = _pair(given.get("stride"), 1), _pair(given.get("dilation"), 1)
            pad = given.get("padding", 0)
            if isinstance(pad, str):  # 'valid' or 'same' (stride 1)
                pad = (0, 0) if pad == "valid" else (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
            ph, pw = _pair(pad)
            make = _transposed if _CONVS[base] else _window
            rows, cols = make(h, kh, sh, ph, dh), make(w, kw, sw, pw, dw)
            return _map_axes(first, lambda a: _gather(a, rows), lambda a: _gather(a, cols))
        if base in _POOLS:
            keys = ("kernel_size", "stride", "padding", "dilation")
            given = dict(zip(keys, args[1:], strict=False)) | {
                k: v for k, v in kwargs.items() if k in keys}
            (kh, kw) = _pair(given["kernel_size"])
            stride = given.get("stride")
            (sh, sw) = _pair(stride) if stride not in (None, [], ()) else (kh, kw)
            (ph, pw) = _pair(given.get("padding"))
            (dh, dw) = _pair(given.get("dilation"), 1) if "max" in base else (1, 1)
            rows, cols = _window(h, kh, sh, ph, dh), _window(w, kw, sw, pw, dw)
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
        given = _given(("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                        "return_indices"), args, kwargs)
        if "avg" in base:  # avg_pool2d(x, kernel, stride, padding, ceil_mode, ...)
            given = _given(("kernel_size", "stride", "padding", "ceil_mode"), args, kwargs)
        kernel = _pair(given["kernel_size"])
        stride = _pair(given.get("stride")) if given.get("stride") not in (None, [], ()) \
            else kernel
        pad, dil = _pair(given.get("padding")), _pair(given.get("dilation"), 1)
        ceil = bool(given.get("ceil_mode"))
        out = _meta((n, c, *(_pool_size(size, k, st, p, d, ceil) for size, k, st, p, d in
                             zip((h, w), kernel, stride, pad, dil, strict=True))), x)
        return (out, _meta(out.shape, x)) if given.get("return_indices") or \
            base in _WITH_INDICES else out
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


def _conv_shape(base: str, args: Sequence[Any], kwargs: Mapping[str, Any],
                x: torch.Tensor) -> torch.Tensor:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    transposed = _CONVS[base]
    names = ("bias", "stride", "padding", "output_padding", "groups", "dilation") \
        if transposed else ("bias", "stride", "padding", "dilation", "groups")
    given = _given(names, args, kwargs, skip=2)
    stride, dilation = _pair(given.get("stride"), 1), _pair(given.get("dilation"), 1)
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    pad = given.get("padding", 0)
    if isinstance(pad, str):
        pad = (0, 0) if pad == "valid" else tuple(
            d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True))
    padding, extra = _pair(pad), _pair(given.get("output_padding"))
    sizes = []
    for size, k, st, p, d, e in zip(x.shape[2:], kernel, stride, padding, dilation, extra,
                                    strict=True):
        sizes.append((size - 1) * st - 2 * p + d * (k - 1) + e + 1 if transposed
                     else (size + 2 * p - d * (k - 1) - 1) // st + 1)
    channels = int(weight.shape[1]) * int(given.get("groups", 1)) if transposed \
        else int(weight.shape[0])
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


# -- the figures ---------------------------------------------------------------------
def _identity(n: int) -> Axis:
    return np.stack([np.arange(n), np.arange(n)], axis=1).astype(np.int64)


def _run(model: nn.Module, spec: NeckSpec, side: int) -> list[Deps]:
    sizes = spec.input_sizes((side, side))
    inputs = [torch.empty(1, c, h, w, device="meta") for c, (h, w) in
              zip(spec.in_channels, sizes, strict=True)]
    tracker = _Tracker()
    for level, (x, (h, w)) in enumerate(zip(inputs, sizes, strict=True)):
        tracker.track(x, {level: (_identity(h), _identity(w))})
    with tracker, torch.no_grad():
        outputs: Any = model(inputs)
    if isinstance(outputs, Mapping):
        outputs = list(outputs.values())
    if isinstance(outputs, torch.Tensor) or not isinstance(outputs, (list, tuple)) \
            or len(outputs) != spec.num_levels:
        raise Unreadable(f"the forward did not return {spec.num_levels} level tensors")
    found = []
    for out in outputs:
        deps = tracker.of(out)
        if deps is None:
            raise Unreadable("an output does not come from the inputs through modelled "
                             "operations")
        found.append(deps)
    return found


def _central(deps: Deps, spec: NeckSpec, side: int, level: int) -> tuple[
        dict[int, tuple[int, int]], bool]:
    """Largest block per input level over the central positions of output ``level`` (two
    whole periods of the parity pattern each way: a path through level ``j`` repeats every
    ``2 ** (j - level)`` positions), and whether any block touches an input's border."""
    sizes = spec.input_sizes((side, side))
    period = 2 ** max(1, spec.num_levels - 1 - level)
    blocks: dict[int, tuple[int, int]] = {}
    touches = False
    for level, (rows, cols) in deps.items():
        n_h, n_w = sizes[level]
        extent = []
        for axis, n in ((rows, n_h), (cols, n_w)):
            c = axis.shape[0] // 2
            window = axis[max(0, c - period): c + period]
            window = window[window[:, 0] <= window[:, 1]]
            if not len(window):
                extent.append(0)
                continue
            touches |= bool((window[:, 0] <= 0).any() or (window[:, 1] >= n - 1).any())
            extent.append(int((window[:, 1] - window[:, 0]).max()) + 1)
        if all(extent):
            blocks[level] = (extent[0], extent[1])
    return blocks, touches


def _figures(model: nn.Module, spec: NeckSpec, side: int) -> tuple[list[dict[int, tuple[
        int, int]]], bool]:
    per_level = [_central(d, spec, side, i) for i, d in enumerate(_run(model, spec, side))]
    return [b for b, _ in per_level], any(t for _, t in per_level)


def receptive_fields(model: nn.Module, spec: NeckSpec) -> ReceptiveFields:
    """The receptive field of every output level of ``model`` (built from ``spec``).

    Never raises for a neck whose structure cannot be read: the result then says why.

    Example:
        >>> from necktool.necks.build import build_neck
        >>> from necktool.spec.registry import resolve_spec
        >>> spec = resolve_spec("retinaface_mnet")
        >>> rf = receptive_fields(build_neck(spec), spec)
        >>> rf.levels[-1].inputs["c5"], rf.levels[-1].inputs["c3"]
        ((1, 1), (0, 0))
    """
    coarsest = spec.strides[-1]
    side = coarsest * 4
    try:
        previous = None
        while side <= MAX_SIDE:
            figures, touches = _figures(model, spec, side)
            if not touches and figures == previous:
                break
            previous = None if touches else figures
            side *= 2
        else:
            return ReceptiveFields(None, f"no field settles below {MAX_SIDE} px a side")
    except KeyboardInterrupt:
        raise
    except Unreadable as exc:
        return ReceptiveFields(None, str(exc))
    except BaseException as exc:  # a custom forward may fail on meta tensors in any way
        return ReceptiveFields(None, f"the forward failed on shape-only (meta) tensors: "
                                     f"{type(exc).__name__}: {exc}".splitlines()[0])
    strides = spec.input_strides
    levels = []
    for blocks in figures:
        inputs = {name: blocks.get(i, (0, 0)) for i, name in enumerate(spec.input_names)}
        image = (max(h * s for (h, _), s in zip(inputs.values(), strides, strict=True)),
                 max(w * s for (_, w), s in zip(inputs.values(), strides, strict=True)))
        levels.append(ReceptiveField(image, inputs))
    return ReceptiveFields(tuple(levels), side=side)

