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
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from necktool.budgets.config import Budget, BudgetConfig
from necktool.deploy.metadata import DEFAULT_OPSET, WeightsRequest
from necktool.deploy.options import Precision, Upsample, VerifyOptions
from necktool.deploy.plan import ExportPlan, ExportSettings
from necktool.deploy.serving import Images
from necktool.errors import ConfigError, InputError, NecktoolError
from necktool.files import check_writable
from necktool.report import Block, Note, num, size_text, table

if TYPE_CHECKING:
    from necktool.deploy.export import ExportResult

MAX_NAME_BYTES = 250  # a file name is at most 255 bytes on the usual file systems


@dataclasses.dataclass(frozen=True)
class EntryExport:
    """One budget entry's export."""

    name: str
    key_path: str
    result: ExportResult

    @property
    def passed(self) -> bool:
        return self.result.passed


@dataclasses.dataclass(frozen=True)
class ConfigExport:
    """Every entry of a config exported; falsy when any entry's verification failed."""

    config: str  # the config file as messages show it
    directory: pathlib.Path
    entries: tuple[EntryExport, ...]

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.entries)

    def __bool__(self) -> bool:
        return self.passed

    def failure(self) -> str | None:
        bad = [e for e in self.entries if not e.passed]
        if not bad:
            return None
        return (f"{len(bad)} of {len(self.entries)} export(s) of {self.config} failed "
                f"verification: " + "; ".join(f"{e.name}: {e.result.failure()}" for e in bad))

    def to_dict(self) -> list[dict[str, Any]]:
        """One object per entry: ``entry`` (its name), ``key_path``, then what
        ``export --format json`` prints for one neck."""
        return [{"entry": e.name, "key_path": e.key_path, **e.result.to_dict()}
                for e in self.entries]

    def blocks(self) -> list[Block]:
        rows = []
        for e in self.entries:
            r = e.result
            m = r.metadata
            v = r.verification
            verdict = "not verified" if v is None else ("PASS" if v.passed else "FAIL")
            served = {Images.STATIC: "static", Images.ANY: "any HxW",
                      Images.MULTIPLES: "multiples"}[m.serves.images]
            rows.append((e.name, m.neck, r.path.name, f"{size_text(m.input_size)} b{m.batch}",
                         served, m.precision.value, f"{r.nbytes / 1e6:.2f}",
                         "-" if v is None else f"{v.max_abs:.1e}",
                         f"{verdict}, {'written' if r.written else 'NOT written'}"))
        out: list[Block] = [table(
            f"{len(self.entries)} budget entries of {self.config} -> {self.directory}",
            ["entry", "neck", "file", "size", "serves", "precision", num("MB"),
             num("max abs"), "result"], rows, verdict=8,
            caption="size: the export size and batch; serves 'any HxW': every image size "
                    "from the coarsest stride up, any batch; max abs: the largest |ort - "
                    "torch| of the verification; every file's details in --format json")]
        for e in self.entries:
            if not e.passed:
                out.append(Note(f"{e.name}: {e.result.failure()}", "fail"))
        return out


def _file_name(config: BudgetConfig, entry: Budget) -> str:
    """``<entry name>.onnx``, or a config error when the name cannot be one file's name."""
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
    return f"{name}.onnx"


def plan_config(config: BudgetConfig, directory: str | pathlib.Path | None,
                settings: ExportSettings) -> ConfigPlan:
    """Check the export of every budget entry of ``config`` with ``settings`` (checked
    once, for all of them); nothing is built. Each entry's
    :class:`~necktool.deploy.plan.ExportPlan` has the content hash a cache of config
    exports keys on.

    Raises:
        InputError: the directory is missing or not a directory, a destination cannot be
            written, an entry's request is invalid.
        ConfigError: an entry's name cannot be a file name.
    """
    folder = pathlib.Path.cwd() if directory is None else pathlib.Path(directory)
    if not folder.is_dir():
        state = "does not exist" if not folder.exists() else "is not a directory"
        raise InputError(f"{folder}: {state}; with no NECK, -o names the directory that gets "
                         "one <entry name>.onnx per budget entry (create it first)")
    plans = []
    for entry in config.budgets:
        where = f"{config.display_path}: {entry.key_path} ({entry.name})"
        dest = folder / _file_name(config, entry)
        try:
            plan = ExportPlan.for_spec(entry.spec, dest, entry.batch, settings,
                                       check_output=False)
        except NecktoolError as exc:
            _prefix(exc, where)
            raise
        plan = dataclasses.replace(plan, output=check_writable(dest, "the ONNX file"))
        plans.append(EntryPlan(entry.name, entry.key_path, where, plan))
    return ConfigPlan(config.display_path, folder, tuple(plans))


@dataclasses.dataclass(frozen=True)
class EntryPlan:
    """One budget entry's export, checked."""

    name: str
    key_path: str
    where: str  # the entry's place in the config, in front of its errors
    plan: ExportPlan


@dataclasses.dataclass(frozen=True)
class ConfigPlan:
    """Every entry's export, checked; :attr:`steps` is a progress bar's total."""

    config: str
    directory: pathlib.Path
    entries: tuple[EntryPlan, ...]

    @property
    def steps(self) -> int:
        return sum(len(e.plan.steps) for e in self.entries)


def export_config(
    config: BudgetConfig,
    directory: str | pathlib.Path | None = None,
    *,
    dynamic: bool = True,
    opset: int | None = None,
    seed: int = 0,
    verify: bool = True,
    options: VerifyOptions | None = None,
    precision: Precision | str = Precision.FP32,
    calibration: int | None = None,
    on_step: Callable[[str], None] | None = None,
    upsample: Upsample | str = Upsample.SIZE,
) -> ConfigExport:
    """Export every budget entry of ``config`` to ``<entry name>.onnx`` in ``directory``.

    Args:
        config: From :func:`necktool.budgets.config.load_config`.
        directory: Where the files go; default the current directory. Must exist.
        dynamic, opset, seed, verify, options, precision, calibration, upsample: As for
            :func:`necktool.deploy.export.export_onnx`, for every entry (each entry's own spec,
            input size and batch come from the config).
        on_step: Called with ``"<entry>: <step>"`` as each step of each export finishes.

    Raises:
        InputError: the directory is missing or not a directory, a destination cannot be
            written, a request is invalid (nothing exported).
        ConfigError: an entry's name cannot be a file name (nothing exported), or an
            entry's export failed for another reason than verification.
    """
    # What applies to every entry is checked once and reported without an entry's place.
    settings = ExportSettings.check(dynamic=dynamic,
                                    opset=DEFAULT_OPSET if opset is None else opset,
                                    weights=WeightsRequest(seed=seed), verify=verify,
                                    options=options, precision=precision,
                                    calibration=calibration, upsample=upsample)
    return run_config(plan_config(config, directory, settings), on_step=on_step)


def run_config(plan: ConfigPlan, *, on_step: Callable[[str], None] | None = None
               ) -> ConfigExport:
    """Export every entry of a checked plan (see the module docstring)."""
    from necktool.deploy.export import run_export  # torch: only once everything is checked

    step = on_step or (lambda _label: None)
    done = []
    for entry in plan.entries:
        def entry_step(name: str, label: str = entry.name) -> None:
            step(f"{label}: {name}")

        try:
            result = run_export(entry.plan, on_step=entry_step)
        except NecktoolError as exc:
            _prefix(exc, entry.where)
            raise
        done.append(EntryExport(entry.name, entry.key_path, result))
    return ConfigExport(plan.config, plan.directory, tuple(done))


def _prefix(exc: NecktoolError, where: str) -> None:
    """Put the entry's place in the config in front of an error's message."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{where}: {exc.args[0]}", *exc.args[1:])
