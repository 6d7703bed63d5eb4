"""Export every neck of a budget config: one verified ONNX file per ``[[budget]]`` entry.

``necktool export --onnx`` with no NECK finds the project's config as ``necktool check``
does (:func:`necktool.budgets.config.load_config`) and exports each entry, with its own
spec, input size and batch, to ``<entry name>.onnx`` in one directory.

Rules:

* Everything is checked before the first export: the directory exists, every entry's
  name is usable as a file name, every destination is writable, every request (opset,
  precision, memory, tolerances naming outputs) is valid. Nothing is built before that.
* Each file is made and verified in memory and written atomically once it passed
  (:func:`necktool.deploy.export.export_onnx`); an existing file of that name is replaced then,
  and only then. An entry whose verification fails leaves its existing file untouched;
  the other entries are still exported, and the result is falsy (exit 1).
* Any other error (the exporter fails, a custom neck cannot be built) stops the run with
  the entry's place in the config in front of the message; the files already written are
  verified ones and stay.
* An entry whose file already exists and whose metadata matches what this run would
  export (:func:`up_to_date`: spec, size, batch, precision, opset, upsample form, weights,
  necktool version) is not exported again but reported "up to date"; ``force`` re-exports
  it. Deciding that reads the file's metadata only (onnx, never torch), so a second run
  over an unchanged config answers without importing torch.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from necktool.artifact.metadata import DamagedMetadata, ExportMetadata
from necktool.artifact.serving import Images
from necktool.budgets.config import Budget, BudgetConfig
from necktool.deploy.plan import ExportPlan, ExportRequest, ExportTo, onnx_file_name
from necktool.errors import ConfigError, InputError, NecktoolError
from necktool.files import check_writable, file_sha256
from necktool.report import Block, Note, Verdict, num, size_text, table
from necktool.spec.neck_spec import neck_header
from necktool.spec.precision import Precision
from necktool.spec.runtimes import Runtime
from necktool.version import __version__

if TYPE_CHECKING:  # the exporter imports torch: only once an entry must be exported
    from necktool.deploy.export import ExportResult
    from necktool.deploy.templates import CountCache

MAX_NAME_BYTES = 250  # a file name is at most 255 bytes on the usual file systems


@dataclasses.dataclass(frozen=True)
class UpToDate:
    """An existing file whose metadata matches the plan: kept, not exported again."""

    path: pathlib.Path
    metadata: ExportMetadata
    nbytes: int

    def to_dict(self) -> dict[str, Any]:
        m = self.metadata
        return {**neck_header(m.spec, m.input_size, m.batch), "path": str(self.path),
                "written": False, "up_to_date": True, "bytes": self.nbytes,
                "opset": m.opset, "dynamic": m.dynamic, "precision": m.precision.value,
                "serves": m.served_shapes.to_json(), "necktool_version": m.version,
                "weights": m.weights.to_dict(), "verification": None}


@dataclasses.dataclass(frozen=True)
class EntryExport:
    """One budget entry's export: the export made now (``result``), or the file kept
    because it was already up to date (``kept``)."""

    name: str
    key_path: str
    result: ExportResult | None
    kept: UpToDate | None = None

    @property
    def passed(self) -> bool:
        return self.result is None or self.result.passed

    @property
    def metadata(self) -> ExportMetadata:
        if self.result is not None:
            return self.result.metadata
        assert self.kept is not None
        return self.kept.metadata

    def failure(self) -> str | None:
        return None if self.result is None else self.result.failure()

    def to_dict(self) -> dict[str, Any]:
        if self.result is None:
            assert self.kept is not None
            return {"entry": self.name, "key_path": self.key_path, **self.kept.to_dict()}
        return {"entry": self.name, "key_path": self.key_path, **self.result.to_dict(),
                "up_to_date": False}


@dataclasses.dataclass(frozen=True)
class ConfigExport(Verdict):
    """Every entry of a config exported; falsy when any entry's verification failed."""

    config: str  # the config file as messages show it
    directory: pathlib.Path
    entries: tuple[EntryExport, ...]

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.entries)

    def failure(self) -> str | None:
        bad = [e for e in self.entries if not e.passed]
        if not bad:
            return None
        return (f"{len(bad)} of {len(self.entries)} export(s) of {self.config} failed "
                f"verification: " + "; ".join(f"{e.name}: {e.failure()}" for e in bad))

    def to_dict(self) -> list[dict[str, Any]]:
        """One object per entry: ``entry`` (its name), ``key_path``, then what
        ``export --format json`` prints for one neck, and ``up_to_date`` (true: the
        existing file was kept, nothing exported or verified now)."""
        return [e.to_dict() for e in self.entries]

    def blocks(self) -> list[Block]:
        rows = []
        for e in self.entries:
            m = e.metadata
            served = {Images.STATIC: "static", Images.ANY: "any HxW",
                      Images.MULTIPLES: "multiples"}[m.served_shapes.images]
            if e.result is None:
                assert e.kept is not None
                path, nbytes, max_abs, verdict = e.kept.path, e.kept.nbytes, "-", "up to date"
            else:
                r = e.result
                v = r.verification
                path, nbytes, max_abs = r.path, r.nbytes, "-" if v is None else f"{v.max_abs:.1e}"
                verdict = ("not verified" if v is None else ("PASS" if v.passed else "FAIL")) \
                    + f", {'written' if r.written else 'NOT written'}"
            rows.append((e.name, m.neck, path.name, f"{size_text(m.input_size)} b{m.batch}",
                         served, m.precision.value, f"{nbytes / 1e6:.2f}", max_abs, verdict))
        out: list[Block] = [table(
            f"{len(self.entries)} budget entries of {self.config} -> {self.directory}",
            ["entry", "neck", "file", "size", "serves", "precision", num("MB"),
             num("max abs"), "result"], rows, verdict=8,
            caption="size: the export size and batch; serves 'any HxW': every image size "
                    "from the coarsest stride up, any batch; max abs: the largest |ort - "
                    "torch| of the verification; up to date: the file's metadata matches "
                    "this export, so it was kept (--force re-exports); every file's details "
                    "in --format json")]
        for e in self.entries:
            if not e.passed:
                out.append(Note(f"{e.name}: {e.failure()}", "fail"))
        return out


def _file_name(config: BudgetConfig, entry: Budget, precision: Precision) -> str:
    """``<entry name>.onnx`` (``<entry name>.fp16.onnx``, ... in another precision), or a
    config error when the name cannot be one file's name."""
    name = entry.name
    why = None
    if "/" in name or "\\" in name:
        why = "it contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "it contains a control character"
    elif name.strip() in (".", "..") or name != name.strip():
        why = "it is '.' or '..', or starts or ends with a space"
    elif len(name.encode("utf-8")) > MAX_NAME_BYTES:
        why = f"it is longer than {MAX_NAME_BYTES} bytes"
    if why:
        raise ConfigError(f"{config.display_path}: {entry.key_path}.name: {name[:60]!r} cannot "
                          f"name the file <entry name>.onnx ({why}); give the entry a name = "
                          "\"...\" usable as a file name")
    return onnx_file_name(name, precision)


def plan_config(config: BudgetConfig, directory: str | pathlib.Path | None,
                request: ExportRequest, *, force: bool = False,
                flags: Mapping[str, Any] | None = None) -> ConfigPlan:
    """Check the export of every budget entry of ``config`` with ``request`` (checked
    once, for all of them); nothing is built. An entry whose existing file is up to date
    (:func:`up_to_date`) is planned as kept, unless ``force``. Each entry brings its own
    neck, input size and batch, so a request that describes one neck (a batch, a weights
    file, calibration data, verification in other runtimes, another format) is refused.

    Raises:
        InputError: the directory is not one, or neither it nor its parent exists (a
            missing directory whose parent exists is created), a destination cannot be
            written, an entry's request is invalid, the request describes one neck.
        ConfigError: an entry's name cannot be a file name.
    """
    check_config_request(request, flags or {})
    folder = pathlib.Path.cwd() if directory is None else pathlib.Path(directory)
    names = [_file_name(config, entry, request.precision) for entry in config.budgets]
    if not folder.is_dir():
        if folder.exists() or not folder.absolute().parent.is_dir():
            state = "is not a directory" if folder.exists() else \
                "does not exist, nor does its parent"
            raise InputError(f"{folder}: {state}; with no NECK, -o names the directory that "
                             "gets one <entry name>.onnx per budget entry (necktool creates "
                             "it when its parent exists)")
        try:  # the user named it; every entry's name is known to be a file name by now
            folder.mkdir()
        except OSError as exc:
            raise InputError(f"cannot create the directory {str(folder)!r}: "
                             f"{(exc.strerror or str(exc)).lower()}") from None
    plans = []
    for entry, name in zip(config.budgets, names, strict=True):
        where = f"{config.display_path}: {entry.key_path} ({entry.name})"
        dest = folder / name
        try:
            plan = ExportPlan.for_spec(entry.spec, dest, request, batch=entry.batch,
                                       check_output=False)
        except NecktoolError as exc:
            _prefix(exc, where)
            raise
        plan = dataclasses.replace(plan, output=check_writable(dest, "the ONNX file"))
        kept = None if force else up_to_date(plan)
        plans.append(EntryPlan(entry.name, entry.key_path, where, plan, kept))
    return ConfigPlan(config.display_path, folder, tuple(plans))


@dataclasses.dataclass(frozen=True)
class EntryPlan:
    """One budget entry's export, checked."""

    name: str
    key_path: str
    where: str  # the entry's place in the config, in front of its errors
    plan: ExportPlan
    kept: UpToDate | None = None  # its file is up to date: nothing to export


@dataclasses.dataclass(frozen=True)
class ConfigPlan:
    """Every entry's export, checked; :attr:`steps` is a progress bar's total."""

    config: str
    directory: pathlib.Path
    entries: tuple[EntryPlan, ...]

    @property
    def todo(self) -> tuple[EntryPlan, ...]:
        """The entries to export (not up to date)."""
        return tuple(e for e in self.entries if e.kept is None)

    @property
    def steps(self) -> int:
        return sum(len(e.plan.steps) for e in self.todo)


def check_config_request(request: ExportRequest, flags: Mapping[str, Any]) -> None:
    """What an export of every budget entry refuses: the options that describe one neck
    (``flags`` are the neck's build flags given).

    Raises:
        InputError: naming the options given, and what to do instead.
    """
    given = [f"--{k.replace('_', '-')}" for k in flags]
    given += [flag for flag, on in (
        ("--batch", request.batch is not None), ("--weights", request.weights.path is not None),
        ("--prefix", request.weights.prefix is not None)) if on]
    if given:
        verb = "describes" if len(given) == 1 else "describe"
        raise InputError(f"{', '.join(given)} {verb} one neck; with no NECK every budget "
                         "entry is exported with its own settings from the config (name a "
                         "NECK to use them)")
    if request.reduction is not None and not request.reduction.plain:
        raise InputError("the data and reduced-precision flags describe one neck; name a NECK")
    if request.to is not ExportTo.ONNX:
        raise InputError(f"--to {request.to.value} needs a NECK (or --weights FILE holding one)")
    if request.runtimes != (Runtime.ORT,):
        raise InputError("--runtime verifies one neck's file; with no NECK (every budget "
                         "entry) leave it out, or name a NECK")


def export_config(config: BudgetConfig, directory: str | pathlib.Path | None = None, *,
                  on_step: Callable[[str], None] | None = None, force: bool = False,
                  **keywords: Any) -> ConfigExport:
    """Export every budget entry of ``config`` to ``<entry name>.onnx`` in ``directory``.

    Args:
        config: From :func:`necktool.budgets.config.load_config`.
        directory: Where the files go; default the current directory. Must exist.
        on_step: Called with ``"<entry>: <step>"`` as each step of each export finishes.
        force: Export every entry, even one whose file is up to date.
        **keywords: The export request's fields (``dynamic``, ``opset``, ``seed``,
            ``verify``, ``options``, ``precision``, ``calibration``, ``upsample``), as for
            :func:`necktool.deploy.export.export_onnx`, for every entry (each entry's own
            spec, input size and batch come from the config).

    Raises:
        InputError: the directory is missing or not a directory, a destination cannot be
            written, a request is invalid or describes one neck (nothing exported).
        ConfigError: an entry's name cannot be a file name (nothing exported), or an
            entry's export failed for another reason than verification.
    """
    # What applies to every entry is checked once and reported without an entry's place.
    request, flags = ExportRequest.of(keywords)
    return run_config(plan_config(config, directory, request, force=force, flags=flags),
                      on_step=on_step)


def run_config(plan: ConfigPlan, *, on_step: Callable[[str], None] | None = None,
               counts: CountCache | None = None) -> ConfigExport:
    """Export every entry of a checked plan that is not up to date (see the module
    docstring); up-to-date entries are reported as kept, and torch is imported only when
    an entry must be exported. ``counts``: a result cache that may hold entries' counts
    (:func:`necktool.deploy.export.run_export`)."""
    step = on_step or (lambda _label: None)
    done = []
    for entry in plan.entries:
        if entry.kept is not None:
            done.append(EntryExport(entry.name, entry.key_path, None, entry.kept))
            continue
        from necktool.deploy.export import run_export  # torch: only for an entry to export

        def entry_step(name: str, label: str = entry.name) -> None:
            step(f"{label}: {name}")

        try:
            result = run_export(entry.plan, on_step=entry_step, counts=counts)
        except NecktoolError as exc:
            _prefix(exc, entry.where)
            raise
        done.append(EntryExport(entry.name, entry.key_path, result))
    return ConfigExport(plan.config, plan.directory, tuple(done))


def up_to_date(plan: ExportPlan) -> UpToDate | None:
    """The file at ``plan.output``, if it is a necktool export whose metadata matches the
    plan: the resolved spec, size and batch, dynamic or static, opset, precision (and int8
    calibration count), upsample form, weights (a seed, or a file's SHA-256) and
    necktool's version. Anything else (no file, not ONNX, damaged or foreign metadata, any
    difference): ``None``, and the entry is exported. Reads with onnx only, never torch.
    """
    from necktool.artifact.metadata import load_model, read_metadata

    path = plan.output
    if not path.is_file():
        return None
    try:
        meta = read_metadata(load_model(str(path)))
    except (InputError, DamagedMetadata):
        return None
    if meta is None:
        return None
    req = plan.request
    request = req.weights
    found = {"version": meta.version, "spec": meta.spec.to_dict(),
             "input_size": tuple(meta.input_size), "batch": meta.batch,
             "dynamic": meta.dynamic, "opset": meta.opset, "precision": meta.precision,
             "calibration": meta.calibration, "upsample": meta.upsample,
             "weights": (meta.weights.sha256 if meta.weights.source == "file"
                         else meta.weights.seed)}
    wanted = {"version": __version__, "spec": plan.spec.to_dict(),
              "input_size": tuple(plan.spec.input_size), "batch": plan.batch,
              "dynamic": req.dynamic, "opset": req.opset, "precision": req.precision,
              "calibration": req.calibration if req.precision is Precision.INT8 else None,
              "upsample": req.upsample,
              "weights": (file_sha256(request.path) if request.path is not None
                          else (request.seed or 0))}
    if found != wanted:
        return None
    return UpToDate(path, meta, path.stat().st_size)


def _prefix(exc: NecktoolError, where: str) -> None:
    """Put the entry's place in the config in front of an error's message."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{where}: {exc.args[0]}", *exc.args[1:])
