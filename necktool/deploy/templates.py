"""Export templates: a graph necktool has exported before is reused; only the weights are
written in.

What the dynamo exporter traces depends on the neck's structure, never on its weights'
values. So an export keeps the graph it traced (before the ONNX optimizer runs, with every
weight's bytes removed) as a *template*, filed under a key of everything that shapes that
graph (:func:`template_key`): the resolved spec (its name aside), the traced batch, static
or dynamic and what a dynamic file serves (which fixes the dimensions), the opset, the
upsample form, and the versions of necktool, torch, onnx, onnxscript, onnx-ir and
onnxruntime. The next export with that key copies each weight into the initializer of the
same name (the exporter names every parameter and buffer initializer by its module path),
then runs the same optimizer the exporter runs (``torch.onnx.ONNXProgram.optimize``: its
constant folding turns, say, a GroupNorm's weight into the ``(C, 1, 1)`` initializer the
graph multiplies by). A cold export takes exactly that path too (the exporter with
``optimize=False``, then the optimizer), so a file made from a template is byte for byte
the file a cold export of the same weights makes. Folded initializers are re-derived by the
fold itself, never by a map that could go stale; an optimizer rewrite that depends on the
weights' values (a multiplication by all ones dropped) is redone as well.

A template is stored only when every initializer of the traced graph is one of the module's
parameters or buffers, of the same dtype, shape and bytes, and refilling the stripped graph
with the same weights gives the traced graph back bit for bit; otherwise (a module whose
graph holds other constants) the export stays cold every time.

Custom necks (``package.module:factory``) are never cached: their code, and the code it
imports, is not part of any key, so an edit to it would go unnoticed. (The result cache of
``necktool check`` decides the same way.)

The cache lives in ``templates/`` of the user's necktool cache
(:func:`necktool.user_cache.cache_subdir`: ``$NECKTOOL_CACHE_DIR``, else
``$XDG_CACHE_HOME/necktool``, else ``~/.cache/necktool``), one file per key. An entry is a
first line naming the format, a JSON header (schema, key, when it was made, the versions,
the weights' names, the body's size and SHA-256), then the template as ONNX protobuf; it
holds no path, user or host name (the exporter's stack-trace metadata is dropped from the
graph). An entry is trusted only when all of that checks out; a damaged, foreign or
version-mismatched one is a miss, and the cold export rewrites it. Writes are atomic
(:func:`necktool.files.write_file`), so two exports writing one entry leave a whole one.
The cache is bounded at :data:`MAX_CACHE_BYTES`; after a write the least recently used
entries go first (a hit counts as a use). A cache directory that cannot be created, read
or written makes every export a cold one, silently: the cache only ever saves time.

:func:`known_counts` does the same for the conv-MAC cross-check's counts: when a result
cache (``necktool check``'s, :mod:`necktool.budgets.cache`) already holds a structure's
FLOPs, parameters and conv counts, the export takes them from there instead of tracing the
module under fvcore again (the ONNX graph's own count is still made from the new file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import onnx
from onnx import numpy_helper

from necktool.analysis.plan import content_hash
from necktool.errors import NecktoolError
from necktool.files import write_file
from necktool.user_cache import cache_subdir
from necktool.version import __version__

if TYPE_CHECKING:
    from torch import nn

    from necktool.analysis.profiling import CrossCheck, ProfileResult
    from necktool.deploy.plan import ExportPlan
    from necktool.spec.neck_spec import NeckSpec

TEMPLATE_SCHEMA = 1  # bump when an entry's layout or meaning changes
MAGIC = b"necktool export template\n"
SUFFIX = ".template"
#: The packages whose versions shape the exported graph (or the file made from it).
GRAPH_MAKERS = ("torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime")
#: The cache's bound: after a write, least recently used entries are removed until the
#: entries together take at most this many bytes.
MAX_CACHE_BYTES = 64 * 2**20


def graph_versions() -> dict[str, str]:
    """The versions of necktool and :data:`GRAPH_MAKERS`, from package metadata."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"necktool": __version__}
    for name in GRAPH_MAKERS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def template_key(plan: ExportPlan) -> str | None:
    """The key of ``plan``'s traced graph (SHA-256 hex), or ``None`` for a custom neck
    (never cached, see the module docstring)."""
    if plan.spec.factory is not None:
        return None
    return content_hash("template", {
        "schema": TEMPLATE_SCHEMA, "spec": plan.spec.to_dict(), "batch": plan.batch,
        "dynamic": plan.request.dynamic, "serves": plan.served.to_json(),
        "opset": plan.request.opset, "upsample": plan.request.upsample.value,
        "versions": graph_versions()})


@dataclasses.dataclass(frozen=True)
class TemplateUse:
    """Where an export's graph came from.

    Attributes:
        reused: The graph came from a template (the exporter did not run).
        made: When the reused template was made (UTC, ISO 8601), else ``None``.
        stored: The graph was exported now and stored as a template.
        note: Why no template was reused or stored, when none was.
    """

    reused: bool
    made: str | None = None
    stored: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"reused": self.reused, "made": self.made, "stored": self.stored,
                "note": self.note or None}

    def describe(self) -> str:
        if self.reused:
            return (f"reused: the graph exported {_when(self.made)} (template cache), "
                    "the weights written in")
        if self.stored:
            return "exported now; kept as a template for the next export of this structure"
        return f"exported now ({self.note})" if self.note else "exported now"


def _when(made: str | None) -> str:
    if not made:
        return "before"
    try:
        at = datetime.datetime.fromisoformat(made)
    except ValueError:
        return "before"
    return f"on {at:%Y-%m-%d at %H:%M} UTC"


@dataclasses.dataclass(frozen=True)
class Template:
    """A stored graph: the exporter's graph with the weights' bytes removed."""

    proto: onnx.ModelProto
    weights: tuple[str, ...]  # the initializers filled from the module, by name
    made: str


@dataclasses.dataclass
class TemplateCache:
    """Entries in one directory (default: the user cache's ``templates/``), by key. Every
    failure to read is a miss and every failure to write is skipped."""

    directory: pathlib.Path = dataclasses.field(
        default_factory=lambda: cache_subdir("templates"))
    max_bytes: int = MAX_CACHE_BYTES

    def path(self, key: str) -> pathlib.Path:
        return self.directory / f"{key}{SUFFIX}"

    def get(self, key: str) -> Template | None:
        """The template filed under ``key``, if its entry is whole and truly its own."""
        path = self.path(key)
        try:
            with open(path, "rb") as fh:
                raw = fh.read(self.max_bytes + 1)
        except OSError:
            return None
        template = _parse(raw, key)
        if template is not None:
            with contextlib.suppress(OSError):  # a use: least recently used leave first
                os.utime(path)
        return template

    def put(self, key: str, template: Template) -> bool:
        """Store ``template`` under ``key`` (atomically), then keep the cache within its
        bound; ``False`` when the directory cannot be made or written (no error)."""
        body = template.proto.SerializeToString()
        header = {"schema": TEMPLATE_SCHEMA, "key": key, "made": template.made,
                  "versions": graph_versions(), "weights": list(template.weights),
                  "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        data = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body
        if len(data) > self.max_bytes:
            return False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_file(self.path(key), data, "an export template")
        except (OSError, NecktoolError):
            return False
        self.prune()
        return True

    def prune(self) -> None:
        """Remove the least recently used entries until the rest fit :attr:`max_bytes`."""
        entries = []
        try:
            for path in self.directory.glob(f"*{SUFFIX}"):
                st = path.stat()
                entries.append((st.st_mtime, st.st_size, path))
        except OSError:
            return
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size


def _parse(raw: bytes, key: str) -> Template | None:
    """The template in an entry's bytes, or ``None`` unless the format line, the header
    (this schema, this very key, these versions), the body's size and SHA-256 and the
    protobuf all check out."""
    if not raw.startswith(MAGIC):
        return None
    head, sep, body = raw[len(MAGIC):].partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict) or header.get("schema") != TEMPLATE_SCHEMA \
            or header.get("key") != key or header.get("versions") != graph_versions() \
            or header.get("bytes") != len(body) \
            or header.get("sha256") != hashlib.sha256(body).hexdigest():
        return None
    weights, made = header.get("weights"), header.get("made")
    if not isinstance(weights, list) or not all(isinstance(w, str) for w in weights) \
            or not isinstance(made, str):
        return None
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(body)
    except Exception:  # protobuf's DecodeError, or anything a hostile body causes
        return None
    empty = [i.name for i in proto.graph.initializer if not i.raw_data]
    if sorted(empty) != sorted(weights) or len(set(weights)) != len(weights):
        return None
    return Template(proto, tuple(weights), made)


# -- making and filling ----------------------------------------------------------------
class _Mismatch(Exception):
    """The module's tensors do not fit the template."""


def _tensors(model: nn.Module) -> dict[str, Any]:
    """Every parameter and buffer of ``model`` by module path (tied ones under each)."""
    out = dict(model.named_buffers(remove_duplicate=False))
    out.update(model.named_parameters(remove_duplicate=False))
    return out


def _initializer(tensor: Any, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(tensor.detach().cpu().contiguous().numpy(), name)


def fill(template: Template, model: nn.Module) -> onnx.ModelProto:
    """A copy of the template's graph with ``model``'s weights written in by name.

    Raises:
        _Mismatch: a weight is missing, or its dtype or shape differs.
    """
    tensors = _tensors(model)
    proto = onnx.ModelProto()
    proto.CopyFrom(template.proto)
    wanted = set(template.weights)
    for init in proto.graph.initializer:
        if init.name not in wanted:
            continue
        tensor = tensors.get(init.name)
        if tensor is None:
            raise _Mismatch(init.name)
        made = _initializer(tensor, init.name)
        if made.data_type != init.data_type or list(made.dims) != list(init.dims):
            raise _Mismatch(init.name)
        init.raw_data = made.raw_data
    return proto


def make_template(traced: onnx.ModelProto, model: nn.Module) -> Template | None:
    """The template of a traced graph (the weights' bytes removed), or ``None`` when the
    graph holds an initializer that is not one of ``model``'s tensors, byte for byte, or
    refilling the template does not give ``traced`` back exactly."""
    tensors = _tensors(model)
    proto = onnx.ModelProto()
    proto.CopyFrom(traced)
    names = []
    for init in proto.graph.initializer:
        tensor = tensors.get(init.name)
        if tensor is None or not init.raw_data or _initializer(tensor, init.name) != init:
            return None
        init.ClearField("raw_data")
        names.append(init.name)
    made = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    template = Template(proto, tuple(names), made)
    try:
        again = fill(template, model)
    except _Mismatch:
        return None
    if again.SerializeToString(deterministic=True) != traced.SerializeToString(
            deterministic=True):
        return None
    return template


def optimized(traced: onnx.ModelProto) -> onnx.ModelProto:
    """The graph after the optimizer ``torch.onnx.export(optimize=True)`` runs."""
    import onnx_ir as ir
    import torch

    from necktool.artifact.privacy import scrub
    from necktool.quiet import quiet

    program = torch.onnx.ONNXProgram(ir.from_proto(traced), None)
    with quiet():
        program.optimize()
    # export() scrubbed the traced graph; the optimizer annotates what it rewrites, so the
    # graph that is written is scrubbed again (the name scopes --stages reads stay).
    return scrub(program.model_proto)


def templated_graph(plan: ExportPlan, model: nn.Module,
                    export: Callable[[], onnx.ModelProto], *,
                    cache: TemplateCache | None = None
                    ) -> tuple[onnx.ModelProto, TemplateUse]:
    """The export's optimized graph and where it came from: filled from a template when
    the cache holds one for ``plan``, else ``export()`` (the exporter, without its
    optimizer) run now, its template stored, then optimized.

    ``cache`` defaults to the user's; ``plan.request.cache`` off bypasses it.
    """
    key = template_key(plan) if plan.request.cache else None
    if key is None:
        note = "--no-cache" if not plan.request.cache else "custom necks are never cached"
        traced = export()
        return optimized(traced), TemplateUse(False, note=note)
    store = cache or TemplateCache()
    found = store.get(key)
    if found is not None:
        try:
            return optimized(fill(found, model)), TemplateUse(True, made=found.made)
        except _Mismatch:
            pass  # the module does not fit the entry: export anew and replace it
    traced = export()
    template = make_template(traced, model)
    if template is None:
        note = "its graph holds constants other than the module's weights: not cached"
        return optimized(traced), TemplateUse(False, note=note)
    stored = store.put(key, template)
    return optimized(traced), TemplateUse(
        False, stored=stored, note="" if stored else "the template cache is not writable")


# -- counts a result cache already holds --------------------------------------------------
class CountCache(Protocol):
    """A store of a structure's counts (:class:`necktool.budgets.cache.ExportCounts`)."""

    def get(self, spec: NeckSpec, batch: int) -> Any | None:
        """Figures with ``flops``, ``params`` and ``cross_check.fvcore_conv_macs`` /
        ``flop_counter_conv_macs`` (agreeing), or ``None``."""

    def put(self, spec: NeckSpec, batch: int, profile: ProfileResult) -> None:
        """Keep a profile's figures (never an error)."""


@dataclasses.dataclass(frozen=True)
class Counts:
    """What an export needs counted: FLOPs, parameters, the two conv counts."""

    flops: int
    params: int
    cross_check: CrossCheck
    cached: bool  # from a result cache, not counted now


def known_counts(model: nn.Module, spec: NeckSpec, batch: int,
                 cache: CountCache | None = None) -> Counts:
    """The counts of ``model`` at ``spec``'s size: from ``cache`` when it holds them, else
    traced now under fvcore (and stored there)."""
    from necktool.analysis.profiling import CrossCheck, analyze
    from necktool.deploy.verify import reference_threads

    found = cache.get(spec, batch) if cache is not None else None
    if found is not None:
        check = CrossCheck(found.cross_check.fvcore_conv_macs,
                           found.cross_check.flop_counter_conv_macs)
        return Counts(found.flops, found.params, check, True)
    with reference_threads():  # a traced forward: no fast kernels needed
        counted = analyze(model, spec, spec.input_size, batch)
    if cache is not None and counted.cross_check.agree:
        cache.put(spec, batch, counted)
    return Counts(counted.flops, counted.params, counted.cross_check, False)
