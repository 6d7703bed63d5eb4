"""Where a neck's weights come from: a checkpoint file, or a seed.

* :func:`load_checkpoint` loads a ``.pt``/``.pth`` state dict (``torch.load(...,
  weights_only=True)``) with strict key matching. A ``module.`` prefix (DataParallel) is
  stripped automatically; ``prefix`` (e.g. ``"fpn."``) selects the neck's sub-dict of a
  whole-detector checkpoint such as Pytorch_Retinaface's. When the keys do not fit, a
  :class:`~necktool.errors.WeightsError` carries a :class:`WeightsReport` listing missing
  keys, unexpected keys and shape mismatches.
* :func:`seeded_model` builds a neck whose every parameter *and* buffer is drawn from a
  seed. :func:`necktool.build_neck` leaves norms at identity (weight 1, bias 0, BN mean 0,
  var 1), which would let a broken BatchNorm/GroupNorm export pass verification;
  :func:`randomize_norms` therefore also draws norm affine parameters, BN running
  statistics and conv biases, deterministically from the same seed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from necktool.errors import WeightsError, first_line
from necktool.files import file_sha256
from necktool.necks.build import build_neck
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.weights import WeightSource

SUFFIXES = (".pt", ".pth")
DATA_PARALLEL_PREFIX = "module."
# Buffers a checkpoint may lack without harm: unused in eval, and BatchNorm fills it in
# when loading an old (pre-1.0) state dict.
OPTIONAL_KEYS = ("num_batches_tracked",)
_SHOWN = 12  # keys listed per category in a report


@dataclasses.dataclass(frozen=True)
class WeightsReport:
    """How a state dict's keys compare with the neck's (after prefixes are removed)."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # key, file, neck

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def to_dict(self) -> dict[str, Any]:
        return {
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "mismatched": [{"key": k, "file": list(f), "neck": list(n)}
                           for k, f, n in self.mismatched],
        }

    def lines(self) -> list[str]:
        """Readable report lines, a few keys per category."""
        out: list[str] = []
        for label, keys in (("missing keys (in the neck, not in the file)", self.missing),
                            ("unexpected keys (in the file, not in the neck)", self.unexpected)):
            if keys:
                out.append(f"  {label}: {len(keys)}")
                out.extend(f"    {k}" for k in keys[:_SHOWN])
                if len(keys) > _SHOWN:
                    out.append(f"    ... and {len(keys) - _SHOWN} more")
        if self.mismatched:
            out.append(f"  shape mismatches: {len(self.mismatched)}")
            out.extend(f"    {k}: file {tuple(f)} vs neck {tuple(n)}"
                       for k, f, n in self.mismatched[:_SHOWN])
            if len(self.mismatched) > _SHOWN:
                out.append(f"    ... and {len(self.mismatched) - _SHOWN} more")
        return out




def randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    """Draw norm affine params, BN running stats and conv biases from ``seed``, in place.

    Values stay in ranges a trained network has (scales 0.5..1.5, variances 0.5..2) so
    outputs keep a sane magnitude; the global RNG is left untouched.
    """
    gen = torch.Generator().manual_seed(int(seed) + 0x5EED)  # decoupled from the conv init
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.affine:
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
            if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape,
                                                            generator=gen))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(module.running_var.shape,
                                                                generator=gen))
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return model


def seeded_model(spec: NeckSpec, seed: int = 0) -> nn.Module:
    """A neck in eval mode whose weights, norms and BN statistics all come from ``seed``."""
    return randomize_norms(build_neck(spec, seed=seed), seed)  # build_neck gives eval mode




@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file's weights, and how the file holds them.

    Attributes:
        state: The tensor state dict (keys as stored: ``neck.``, ``module.`` kept).
        container: The file's top-level keys when it wraps the weights (an
            mmdetection/mmengine checkpoint: ``meta``, ``state_dict``, ``optimizer``);
            empty for a plain state dict.
        wrapper: The key the weights were under (``state_dict`` or ``model``), if any.
    """

    state: dict[str, torch.Tensor]
    container: tuple[str, ...] = ()
    wrapper: str | None = None


def read_state_dict(path: str | pathlib.Path) -> dict[str, torch.Tensor]:
    """Load a tensor state dict from a ``.pt``/``.pth`` file without running pickled code.

    A checkpoint that wraps its weights (``{"state_dict": ...}`` or ``{"model": ...}``)
    is unwrapped.
    """
    return read_checkpoint(path).state


def _unsafe_globals(file: pathlib.Path) -> list[str]:
    """The globals a pickle would call that the safe loader refuses (read, never run)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(file))
    except Exception:  # not a pickle at all: the caller reports torch.load's reason
        return []


def read_checkpoint(path: str | pathlib.Path) -> Checkpoint:
    """Read a ``.pt``/``.pth`` checkpoint with ``torch.load(weights_only=True)``, never
    anything less safe.

    Takes a plain state dict (Pytorch_Retinaface's, with or without ``module.``), or the
    ``state_dict`` (else ``model``) of a wrapping checkpoint such as mmdetection's and
    mmengine's ``{"meta": ..., "state_dict": ..., "optimizer": ...}``.

    Raises:
        WeightsError: wrong suffix, no such file, refused by the safe loader (the reason
            and what to do are in the message), or no tensor state dict inside.
    """
    file = pathlib.Path(path)
    if file.suffix.lower() not in SUFFIXES:
        raise WeightsError(f"weights file {str(file)!r} has suffix {file.suffix!r}; "
                           f"supported: {', '.join(SUFFIXES)} (a torch.save'd state dict)")
    if not file.is_file():
        raise WeightsError(f"weights file {str(file)!r} does not exist or is not a file")
    try:
        with warnings.catch_warnings():  # torch's own advice is to load unsafely: not ours
            warnings.simplefilter("ignore")
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        unsafe = _unsafe_globals(file)
        if unsafe:
            raise WeightsError(
                f"refused to load {str(file)!r}: it would call {', '.join(unsafe[:3])}"
                f"{' and more' if len(unsafe) > 3 else ''}, which torch.load(weights_only=True)"
                " does not allow, and necktool never loads a checkpoint less safely",
                details=["if you trust the file, save its weights alone and pass that: "
                         "torch.save(torch.load(F, weights_only=False)['state_dict'], "
                         "'weights.pth')"]) from None
        raise WeightsError(f"cannot read weights file {str(file)!r} as a state dict "
                           f"(torch.load weights_only=True): {first_line(exc, typed=False)}") \
            from None
    container: tuple[str, ...] = ()
    wrapper: str | None = None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            container, wrapper = tuple(str(k) for k in obj), key
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"weights file {str(file)!r} holds {type(obj).__name__}, "
                           "not a non-empty state dict (name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"weights file {str(file)!r}: {len(bad)} entr(y/ies) are not "
                           f"tensors, e.g. {bad[0]!r}")
    return Checkpoint({str(k): v for k, v in obj.items()}, container, wrapper)


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def compare_keys(state: Mapping[str, Any], model: nn.Module) -> WeightsReport:
    """Missing / unexpected keys and shape mismatches between ``state`` and ``model``."""
    expected = model.state_dict()
    missing = tuple(k for k in expected if k not in state
                    and not k.endswith(tuple("." + o for o in OPTIONAL_KEYS)))
    unexpected = tuple(k for k in state if k not in expected)
    mismatched = tuple((k, tuple(state[k].shape), tuple(expected[k].shape))
                       for k in expected if k in state
                       and tuple(state[k].shape) != tuple(expected[k].shape))
    return WeightsReport(missing, unexpected, mismatched)


def _prefix_hint(state: Mapping[str, Any], model: nn.Module) -> str:
    """Suggest a ``--prefix`` under which the file's keys fit the neck, if one does."""
    expected = set(model.state_dict())
    heads = sorted({k.split(".", 1)[0] + "." for k in state if "." in k})
    for head in heads:
        if expected and expected <= set(_strip(state, head)) | {
                k for k in expected if k.endswith(OPTIONAL_KEYS)}:
            return f"; the keys under {head!r} fit: try --prefix {head}"
    return ""


def _as_model_dtypes(state: dict[str, Any], model: nn.Module,
                     path: str | pathlib.Path) -> dict[str, Any]:
    """Floating tensors become the model's float32; anything else where the model holds
    floats (integers, booleans, complex numbers) is refused: copying it would silently
    truncate or drop values. Integer buffers (BatchNorm's ``num_batches_tracked``) stay."""
    expected = model.state_dict()
    out = {}
    for key, value in state.items():
        want = expected[key].dtype
        if want.is_floating_point:
            if not value.is_floating_point():
                raise WeightsError(f"weights file {str(path)!r}: {key} is {value.dtype}, not "
                                   "a floating-point tensor; the neck needs float weights "
                                   "(float16, bfloat16, float32 and float64 are converted)")
            value = value.to(want)
        elif value.is_floating_point() or value.is_complex():
            raise WeightsError(f"weights file {str(path)!r}: {key} is {value.dtype}; the neck "
                               f"holds {want} there")
        out[key] = value
    return out


def load_checkpoint(model: nn.Module, path: str | pathlib.Path,
                 prefix: str | None = None) -> WeightSource:
    """Load a state dict into ``model`` with strict key and shape matching.

    Args:
        model: The neck to fill, in place.
        path: A ``.pt``/``.pth`` file holding a state dict.
        prefix: Keep only keys starting with this (``"fpn."``, ``"neck."``) and strip it.
            A leading ``module.`` (DataParallel) is stripped first, automatically (so
            ``"module.fpn."`` and ``"fpn."`` select the same keys).

    Returns:
        Where the weights came from (path, SHA-256, prefixes), for the file's metadata.

    Raises:
        WeightsError: unreadable file, or keys that do not fit; ``.report`` lists them.

    Example:
        >>> neck = build_neck("retinaface_mnet")
        >>> load_checkpoint(neck, "mobilenet0.25_Final.pth", prefix="fpn.")  # doctest: +SKIP
    """
    state: dict[str, Any] = read_state_dict(path)
    stripped: list[str] = []
    if all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        state = _strip(state, DATA_PARALLEL_PREFIX)
        stripped.append(DATA_PARALLEL_PREFIX)
    if prefix and stripped and prefix.startswith(DATA_PARALLEL_PREFIX):
        prefix = prefix[len(DATA_PARALLEL_PREFIX):]  # 'module.fpn.' once 'module.' is gone
    if prefix:
        selected = _strip(state, prefix)
        if not selected:
            sample = ", ".join(list(state)[:3])
            raise WeightsError(f"no key in {str(path)!r} starts with prefix {prefix!r}; "
                               f"keys look like: {sample}")
        state = selected
        stripped.append(prefix)
    report = compare_keys(state, model)
    if not report.ok:
        how = f" (stripped: {', '.join(repr(s) for s in stripped)})" if stripped else ""
        hint = _prefix_hint(state, model) if report.unexpected else ""
        raise WeightsError(f"weights file {str(path)!r} does not fit the neck{how}{hint}",
                           report, details=report.lines())
    state = _as_model_dtypes(state, model, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise WeightsError(f"cannot load {str(path)!r}: {first_line(exc, typed=False)}") \
            from None
    return WeightSource("file", path=str(pathlib.Path(path).resolve()), sha256=file_sha256(path),
                        prefix=prefix or None, stripped=tuple(stripped))
