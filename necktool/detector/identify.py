"""Which neck a file holds: ``necktool inspect``, and NECK from ``--weights``.

A checkpoint (``.pt``/``.pth``) is read with :func:`necktool.necks.weights.read_checkpoint`
(``weights_only=True``). Every registered family with a key layout is looked for under
every prefix its marker keys appear at (``neck.``, ``fpn.``, ``module.fpn.``, none); the
family's ``infer`` reads the spec fields off the tensor shapes, and a candidate counts
only when the neck that spec builds holds exactly the file's tensors there (names and
shapes; BatchNorm's ``num_batches_tracked`` may be absent). A preset "matches" when its
neck holds exactly those tensors too.

An ONNX file written by ``necktool export`` says what it holds in its metadata.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from necktool.artifact.metadata import read_metadata
from necktool.errors import InputError, NecktoolError, WeightsError
from necktool.necks.weights import (
    DATA_PARALLEL_PREFIX,
    OPTIONAL_KEYS,
    SUFFIXES,
    Checkpoint,
    read_checkpoint,
)
from necktool.report import Block, Note, channels_text, size_text, table
from necktool.spec.families import FAMILIES, FamilyInfo, Inferred, Shapes, load
from necktool.spec.neck_spec import NeckSpec
from necktool.spec.registry import PRESETS, reproduce_command

ONNX_SUFFIX = ".onnx"
_GROUPS_SHOWN = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class FoundNeck:
    """A neck found in a state dict: where it sits, its spec and the presets it matches."""

    prefix: str  # "" at the file's root
    spec: NeckSpec
    presets: tuple[str, ...]
    notes: tuple[str, ...]
    tensors: int

    @property
    def neck_spec(self) -> NeckSpec:
        """What to build: the first matching preset (its name and default size), else the
        spec read off the shapes."""
        return PRESETS[self.presets[0]].spec if self.presets else self.spec

    @property
    def load_prefix(self) -> str | None:
        """The ``--prefix`` that selects it (none at the root or under bare ``module.``)."""
        return None if self.prefix in ("", DATA_PARALLEL_PREFIX) else self.prefix


# -- tensor layouts ----------------------------------------------------------------------
def layout_of(spec: NeckSpec) -> dict[str, tuple[int, ...]]:
    """The state dict's names and shapes of the neck ``spec`` builds (no memory used)."""
    builder = spec.info.load_builder()
    with torch.device("meta"):
        model = builder(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _essential(shapes: Shapes) -> dict[str, tuple[int, ...]]:
    return {k: tuple(s) for k, s in shapes.items()
            if not k.endswith(tuple("." + o for o in OPTIONAL_KEYS))}


def layout_difference(expected: Shapes, found: Shapes) -> str | None:
    """The first way ``found`` differs from ``expected`` (``None``: the same tensors)."""
    want, have = _essential(expected), _essential(found)
    missing = [k for k in want if k not in have]
    if missing:
        return f"no tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                              if len(missing) > 1 else "")
    extra = [k for k in have if k not in want]
    if extra:
        return f"unexpected tensor {extra[0]!r}" + (f" (and {len(extra) - 1} more)"
                                                    if len(extra) > 1 else "")
    shaped = [k for k in want if want[k] != have[k]]
    if shaped:
        k = shaped[0]
        return f"{k!r} has shape {have[k]}, the neck needs {want[k]}"
    return None


def matching_presets(spec: NeckSpec, shapes: Shapes) -> tuple[str, ...]:
    """Presets of ``spec``'s family whose neck holds exactly ``shapes``."""
    out = []
    for name, preset in PRESETS.items():
        p = preset.spec
        if p.family != spec.family or p.in_channels != spec.in_channels \
                or p.level_channels != spec.level_channels:
            continue  # cheap filter before a (meta-device) build
        if layout_difference(layout_of(p), shapes) is None:
            out.append(name)
    return tuple(out)


def _prefixes(keys: Sequence[str], anchor: str) -> list[str]:
    found: list[str] = []
    for key in keys:
        at = key.find(anchor)
        while at >= 0:
            if at == 0 or key[at - 1] == ".":
                if key[:at] not in found:
                    found.append(key[:at])
                break
            at = key.find(anchor, at + 1)
    return found


def _candidate(info: FamilyInfo, prefix: str, sub: Shapes) -> FoundNeck | str:
    """The neck of family ``info`` at ``prefix``, or why there is none."""
    assert info.layout is not None and info.layout.infer is not None
    where = f"under {prefix!r}" if prefix else "at the root"
    inferred: Inferred | None = load(info.layout.infer)(sub)
    if inferred is None:
        return f"{where}: {info.name}-like keys, but not a {info.name} layout"
    bare = PRESETS.get(info.name)
    try:
        spec = NeckSpec(info.name, **inferred.fields,
                        input_size=bare.spec.input_size if bare else (640, 640))
    except NecktoolError as exc:
        return f"{where}: {info.name}-like keys, but {exc}"
    expected = layout_of(spec)
    if info.layout.whole_model:  # YOLO: the backbone's and head's model.<i>. keys stay out
        sub = {k: s for k, s in sub.items() if k in expected}
    why = layout_difference(expected, sub)
    if why is not None:
        return f"{where}: {info.name}-like keys, but {why}"
    return FoundNeck(prefix=prefix, spec=spec, presets=matching_presets(spec, sub),
                     notes=inferred.notes, tensors=len(_essential(sub)))


def find_necks(shapes: Shapes, prefix: str | None = None) -> tuple[list[FoundNeck], list[str]]:
    """Every neck in a state dict's shapes, and why near misses were not (for messages).

    Args:
        shapes: Key -> tensor shape, keys as stored in the file.
        prefix: Look only under this prefix (``"neck."``); ``None`` looks everywhere.
    """
    keys = list(shapes)
    found: list[FoundNeck] = []
    misses: list[str] = []
    wanted = None if prefix is None else _normalise(prefix, keys)
    for info in FAMILIES.values():
        layout = info.layout
        if layout is None or layout.infer is None:
            continue
        for p in _prefixes(keys, layout.markers[0]):
            if wanted is not None and p != wanted:
                continue
            if not all(any(k.startswith(p + m) for k in keys) for m in layout.markers):
                continue
            sub = {k[len(p):]: s for k, s in shapes.items() if k.startswith(p)}
            result = _candidate(info, p, sub)
            if isinstance(result, FoundNeck):
                found.append(result)
            else:
                misses.append(result)
    return found, misses


def _normalise(prefix: str, keys: Sequence[str]) -> str:
    """A ``--prefix`` as it sits in the file: ``fpn.`` is ``module.fpn.`` in a
    DataParallel file (``load_weights`` strips ``module.`` first, so both work there)."""
    dp = DATA_PARALLEL_PREFIX
    if keys and all(k.startswith(dp) for k in keys) and not prefix.startswith(dp):
        return dp + prefix
    return prefix


def key_groups(keys: Sequence[str]) -> str:
    """``backbone. (312), neck. (20), ...``: the first component of each key, counted."""
    depth = 2 if keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in keys) else 1
    counts = Counter(".".join(k.split(".")[:depth]) + ("." if k.count(".") >= depth else "")
                     for k in keys)
    shown = [f"{group} ({n})" for group, n in counts.most_common(_GROUPS_SHOWN)]
    if len(counts) > _GROUPS_SHOWN:
        shown.append(f"... {len(counts) - _GROUPS_SHOWN} more")
    return ", ".join(shown)


def identify_checkpoint(path: str | pathlib.Path, prefix: str | None = None,
                        ckpt: Checkpoint | None = None) -> FoundNeck:
    """The one neck a checkpoint holds (under ``prefix`` if given).

    Args:
        ckpt: The file already read, if it was.

    Raises:
        WeightsError: unreadable, no recognisable neck (the message lists the file's key
            groups), or several necks and no ``prefix`` to choose.
    """
    if pathlib.Path(path).suffix.lower() == ONNX_SUFFIX:  # a detector: found by structure
        return _identify_detector(path, prefix)
    ckpt = ckpt or read_checkpoint(path)
    shapes = {k: tuple(v.shape) for k, v in ckpt.state.items()}
    found, misses = find_necks(shapes, prefix)
    if len(found) == 1:
        return found[0]
    if found:
        where = ", ".join(f"{f.prefix or '(root)'} ({f.spec.family})" for f in found)
        raise WeightsError(f"{str(path)!r} holds {len(found)} necks: {where}; choose one "
                           "with --prefix")
    origins = [f.layout.origin for f in FAMILIES.values() if f.layout is not None]
    details = []
    if ckpt.container:
        details.append(f"top-level keys: {', '.join(ckpt.container)} (weights under "
                       f"{ckpt.wrapper!r})")
    details.append(f"key groups: {key_groups(list(shapes))}")
    details.extend(misses[:3])
    under = f" under prefix {prefix!r}" if prefix is not None else ""
    raise WeightsError(f"no neck necktool recognises in {str(path)!r}{under} (looked for: "
                       f"{'; '.join(origins)})", details=details)


def _identify_detector(path: str | pathlib.Path, prefix: str | None) -> FoundNeck:
    """The neck of a detector ONNX file (:mod:`necktool.detector`), as a found neck whose
    spec keeps the graph's size."""
    from necktool.detector.loading import load_detector
    from necktool.detector.neck import find_neck

    if prefix is not None:
        raise WeightsError("--prefix selects a neck inside a checkpoint; a detector ONNX "
                           "file's neck is found by the graph's structure")
    found = find_neck(load_detector(path, "weights file"), f"weights file {str(path)!r}")
    presets = found.presets
    spec = PRESETS[presets[0]].spec.replace(input_size=found.spec.input_size) if presets \
        else found.spec
    return FoundNeck(prefix="", spec=spec, presets=presets, notes=found.notes,
                     tensors=len(found.convs))


# -- the command's result --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InspectResult:
    """``necktool inspect``: the neck a checkpoint or an exported ONNX file holds."""

    path: str
    kind: str  # "checkpoint" or "onnx"
    spec: NeckSpec
    presets: tuple[str, ...]
    command: str
    prefix: str | None = None
    notes: tuple[str, ...] = ()
    tensors: int | None = None
    container: tuple[str, ...] = ()
    follow_up: tuple[str, str] | None = None  # (JSON key, command): what to run next
    export: dict[str, Any] | None = None

    def _extra(self) -> dict[str, Any]:
        spec = self.spec
        names = spec.level_names[spec.num_inputs:]
        mode = str(spec.extra_convs) if spec.info.takes("extra_convs") else None
        return {"levels": names, "extra_convs": mode if names else None}

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        out: dict[str, Any] = {
            "path": self.path,
            "kind": self.kind,
            "family": spec.family,
            "prefix": self.prefix,
            "in_channels": list(spec.in_channels),
            "out_channels": spec.out_channels,
            "level_channels": list(spec.level_channels),
            "num_outs": spec.num_levels,
            "levels": spec.level_names,
            "extra_levels": self._extra(),
            "norm": str(spec.norm),
            "bias": str(spec.norm) == "none",
            "presets": list(self.presets),
            "command": self.command,
            **({self.follow_up[0]: self.follow_up[1]} if self.follow_up else {}),
            "config": spec.to_dict(),
            "notes": list(self.notes),
        }
        if self.kind == "checkpoint":
            out["tensors"] = self.tensors
            out["container"] = list(self.container)
        if self.export is not None:
            out["export"] = self.export
        return out

    def blocks(self) -> list[Block]:
        spec = self.spec
        extra = self._extra()
        levels = ", ".join(spec.level_names)
        if extra["levels"]:
            how = f", {extra['extra_convs']}" if extra["extra_convs"] else ""
            levels += f" ({', '.join(extra['levels'])} extra{how})"
        bias = "convs with bias" if str(spec.norm) == "none" else "convs without bias"
        rows = [("family", f"{spec.family}: {spec.info.description}")]
        if self.kind == "checkpoint":
            rows.append(("prefix", repr(self.prefix) if self.prefix else "(none: at the root)"))
            rows.append(("tensors", str(self.tensors)))
        rows += [
            ("in_channels", ",".join(map(str, spec.in_channels))),
            ("out_channels", channels_text(spec.level_channels)),
            ("levels", levels),
            ("norm", f"{spec.norm} ({bias})"),
            ("presets", ", ".join(self.presets) or "(none matches exactly)"),
            ("reproduce", self.command),
        ]
        if self.follow_up:
            rows.append((self.follow_up[0].removesuffix("_command"), self.follow_up[1]))
        if self.export is not None:
            rows.append(("exported", f"{size_text(self.export['input_size'])}, "
                         f"{'dynamic' if self.export['dynamic'] else 'static'}, opset "
                         f"{self.export['opset']}, weights: {self.export['weights']}"))
        out: list[Block] = [table(f"{self.path} ({self.kind})", ["field", "value"], rows,
                                  show_header=False)]
        out.extend(Note(n) for n in self.notes)
        return out


def inspect_file(path: str | pathlib.Path, prefix: str | None = None) -> InspectResult:
    """What neck a checkpoint or a necktool ONNX file holds, and how to reproduce it.

    Raises:
        InputError: an unsupported suffix, or an ONNX file necktool did not write.
        WeightsError: an unreadable checkpoint, or one with no recognisable neck.
    """
    file = pathlib.Path(path)
    suffix = file.suffix.lower()
    if suffix == ONNX_SUFFIX:
        if prefix is not None:
            raise InputError("--prefix selects a neck inside a checkpoint; an ONNX file "
                             "holds one neck")
        return _inspect_onnx(file)
    if suffix not in SUFFIXES:
        raise InputError(f"cannot inspect {str(file)!r}: suffix {file.suffix!r}; supported: "
                         f"{', '.join((*SUFFIXES, ONNX_SUFFIX))}")
    ckpt = read_checkpoint(file)
    found = identify_checkpoint(file, prefix, ckpt)
    words = ["necktool", "export", "--weights", str(file)]
    if found.load_prefix:
        words += ["--prefix", found.load_prefix]
    return InspectResult(
        path=str(file), kind="checkpoint", spec=found.neck_spec, presets=found.presets,
        command=reproduce_command(found.neck_spec, found.presets[0] if found.presets else None),
        prefix=found.prefix, notes=found.notes, tensors=found.tensors,
        container=ckpt.container, follow_up=("export_command", " ".join([*words, "--onnx"])))


def _inspect_onnx(file: pathlib.Path) -> InspectResult:
    if not file.is_file():
        raise InputError(f"ONNX file {str(file)!r} does not exist or is not a file")
    meta = read_metadata(file)
    if meta is None:
        raise InputError(f"{str(file)!r} carries no necktool metadata (it was not written by "
                         "'necktool export'); inspect reads those and .pt/.pth checkpoints")
    spec = meta.spec
    plain = {k: v for k, v in spec.to_dict().items() if k != "input_size"}
    presets = tuple(n for n, p in PRESETS.items()
                    if {k: v for k, v in p.spec.to_dict().items() if k != "input_size"} == plain)
    base = meta.neck if meta.neck in presets else (presets[0] if presets else None)
    command = reproduce_command(spec, base, with_size=True)
    export = {"input_size": list(meta.input_size), "batch": meta.batch,
              "dynamic": meta.dynamic, "opset": meta.opset, "version": meta.version,
              "flops": meta.flops, "params": meta.params, "weights": meta.weights.describe()}
    return InspectResult(path=str(file), kind="onnx", spec=spec, presets=presets,
                         command=command, export=export,
                         follow_up=("verify_command", f"necktool verify {file}"))
