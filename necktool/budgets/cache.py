"""The result cache of ``necktool check``: each entry's counts under a content-addressed key
(torch-free).

Counts are a pure function of what is measured (the resolved spec, size and batch) and of
the code that measures them (necktool, torch, fvcore). The key is the SHA-256 of exactly
that, plus :data:`CACHE_SCHEMA`; change any of it and the key changes, so the old entry is
simply never asked for again. One JSON file per key, ``check-<key>.json``, in
``.necktool_cache/`` beside the config (or ``$NECKTOOL_CACHE_DIR``), which holds its own
``.gitignore`` (``*``) as ruff's cache does.

An entry is trusted only if necktool wrote it on this machine: each carries an HMAC-SHA256
over its content under a random key kept outside the project, in the user's cache
(:func:`necktool.user_cache.cache_subdir` ``("keys")``, created once, atomically, mode
0600). A committed, copied or edited entry (even one with the right key and a consistent
checksum) fails the MAC and is a miss, recomputed and rewritten, as is one that does not
parse, is of another schema, is filed under another key or holds malformed counts. When
the key cannot be read or created the cache is simply not used.

The folder is bounded: at most :data:`MAX_ENTRIES` entries; after each write the least
recently used ones (oldest modification time; a hit touches its entry) are removed.

Writes are atomic (:func:`necktool.files.write_file`), so concurrent checks read a whole
entry or none. A cache folder that cannot be created, read or written makes the cache a
no-op, never an error: it only ever saves time.

Custom necks (``package.module:factory``) are never cached: their code is not part of
the key, so an edit to it would go unnoticed.

An export reads the same entries (:class:`ExportCounts`): a structure ``check`` (or an
earlier export) has counted is not counted again. A config export uses the config's
folder, a one-neck export :func:`export_cache_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from necktool.errors import NecktoolError
from necktool.files import write_file
from necktool.spec.fields import is_int
from necktool.spec.neck_spec import NeckSpec
from necktool.units import COUNTING_BUG, CROSS_CHECK, FP32_BYTES
from necktool.user_cache import cache_subdir

CACHE_SCHEMA = 2  # bump when the stored figures change meaning or layout (2: the MAC)
CACHE_DIR_NAME = ".necktool_cache"
CACHE_DIR_ENV = "NECKTOOL_CACHE_DIR"
MAX_ENTRY_BYTES = 1 << 20
GITIGNORE = "# Automatically created by necktool.\n*\n"
#: The code whose behaviour the counts depend on; their versions are part of every key.
MEASURED_BY = ("necktool", "torch", "fvcore")
MEMORY_FIELDS = ("param_bytes", "activation_bytes", "peak_activation_bytes")
MAX_ENTRIES = 256  # entries kept in one cache folder; the least recently used go first
KEY_FILE = "check-cache.key"  # in the user's cache, cache_subdir("keys")
KEY_BYTES = 32


def mac_key() -> bytes | None:
    """The machine's secret for entry MACs: read from the user's cache, or made there once
    (random, written to a private temporary file and linked into place, so two checks
    starting together agree on one key and nobody reads a half-written one). ``None`` when
    it can be neither read nor made: the cache is then not used."""
    folder = cache_subdir("keys")
    path = folder / KEY_FILE
    with contextlib.suppress(OSError):
        return _read_key(path)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".key-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(KEY_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):  # another check made it first
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
        return _read_key(path)
    except OSError:
        return None


def _read_key(path: Path) -> bytes:
    """The key in ``path``, if it is one this user made: a regular file, theirs, private
    (mode 0600, as :func:`mac_key` makes it; a file from a checkout or an archive is not)."""
    with open(path, "rb") as fh:
        info = os.fstat(fh.fileno())
        key = fh.read(KEY_BYTES + 1)
    private = stat.S_ISREG(info.st_mode) and not info.st_mode & 0o077 and (
        not hasattr(os, "getuid") or info.st_uid == os.getuid())
    if len(key) != KEY_BYTES or not private:
        raise OSError(f"{path}: not a private necktool key")
    return key


def entry_mac(key: bytes, document: Mapping[str, Any]) -> str:
    """HMAC-SHA256 (hex) of an entry's content (every field but ``mac``, canonical JSON)."""
    body = {k: v for k, v in document.items() if k != "mac"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def versions() -> dict[str, str]:
    """Installed versions of :data:`MEASURED_BY`, read from package metadata (importing
    torch to ask it would cost the second the cache is there to save)."""
    from importlib.metadata import PackageNotFoundError, version

    from necktool.version import __version__

    out = {}
    for name in MEASURED_BY:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    # An editable install's metadata can lag behind the source; the source is the truth.
    out["necktool"] = __version__
    return out


def entry_key(plan: Mapping[str, Any] | str, found_versions: Mapping[str, str]) -> str:
    """SHA-256 (hex) of the plan (its :meth:`~necktool.analysis.plan.ProfilePlan.content_hash`),
    the versions and :data:`CACHE_SCHEMA`."""
    text = json.dumps({"schema": CACHE_SCHEMA, "plan": plan, "versions": dict(found_versions)},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# -- the figures a check needs, without torch -----------------------------------------
@dataclasses.dataclass(frozen=True)
class CachedLevel:
    """One level's counts, read like :class:`necktool.analysis.profiling.LevelProfile`."""

    name: str
    flops: int
    params: int
    activation_bytes: int

    @property
    def param_bytes(self) -> int:
        return FP32_BYTES * self.params


@dataclasses.dataclass(frozen=True)
class CachedMemory:
    """The whole-neck memory figures a budget can limit (fp32 bytes)."""

    param_bytes: int
    activation_bytes: int
    peak_activation_bytes: int


@dataclasses.dataclass(frozen=True)
class CachedCrossCheck:
    """The two conv counts; only agreeing ones are ever stored (a disagreement is a
    counting bug, recomputed and reported every time)."""

    fvcore_conv_macs: int
    flop_counter_conv_macs: int

    @property
    def agree(self) -> bool:
        return self.fvcore_conv_macs == self.flop_counter_conv_macs

    def to_dict(self) -> dict[str, Any]:
        return {"flop_counter_conv_macs": self.flop_counter_conv_macs,
                "fvcore_conv_macs": self.fvcore_conv_macs, "agree": self.agree}

    def failure(self) -> str:
        return (f"conv MACs differ: {self.fvcore_conv_macs:,} from fvcore vs "
                f"{self.flop_counter_conv_macs:,} from {CROSS_CHECK} ({COUNTING_BUG})")


@dataclasses.dataclass(frozen=True)
class CachedFigures:
    """What ``check`` reads off a profile, stored and read back without torch: the totals,
    the memory figures, the levels and the cross-check, attribute for attribute as on a
    :class:`~necktool.analysis.profiling.ProfileResult`."""

    flops: int
    params: int
    memory: CachedMemory
    levels: tuple[CachedLevel, ...]
    cross_check: CachedCrossCheck

    @classmethod
    def of(cls, profile: Any) -> CachedFigures:
        """The figures of a :class:`~necktool.analysis.profiling.ProfileResult`."""
        return cls(
            flops=profile.flops, params=profile.params,
            memory=CachedMemory(*(getattr(profile.memory, f) for f in MEMORY_FIELDS)),
            levels=tuple(CachedLevel(lv.name, lv.flops, lv.params, lv.activation_bytes)
                         for lv in profile.levels),
            cross_check=CachedCrossCheck(profile.cross_check.fvcore_conv_macs,
                                         profile.cross_check.flop_counter_conv_macs))

    def to_json(self) -> dict[str, Any]:
        return {"flops": self.flops, "params": self.params,
                "memory": dataclasses.asdict(self.memory),
                "levels": [dataclasses.asdict(lv) for lv in self.levels],
                "cross_check": {"fvcore_conv_macs": self.cross_check.fvcore_conv_macs,
                                "flop_counter_conv_macs": self.cross_check.flop_counter_conv_macs}}

    @classmethod
    def from_json(cls, data: Any, level_names: Sequence[str]) -> CachedFigures | None:
        """The figures in ``data``, or ``None`` unless every count is a non-negative
        integer, the levels are exactly ``level_names`` and the cross-check agrees."""
        try:
            levels = tuple(CachedLevel(lv["name"], *(_count(lv[k]) for k in
                                                     ("flops", "params", "activation_bytes")))
                           for lv in data["levels"])
            figures = cls(
                flops=_count(data["flops"]), params=_count(data["params"]),
                memory=CachedMemory(*(_count(data["memory"][f]) for f in MEMORY_FIELDS)),
                levels=levels,
                cross_check=CachedCrossCheck(_count(data["cross_check"]["fvcore_conv_macs"]),
                                             _count(data["cross_check"]
                                                    ["flop_counter_conv_macs"])))
        except (KeyError, TypeError, ValueError):
            return None
        if [lv.name for lv in levels] != list(level_names) or not figures.cross_check.agree:
            return None
        return figures


def _count(value: Any) -> int:
    if not is_int(value) or not 0 <= value < 2**63:
        raise ValueError(value)
    return value


# -- the cache folder -----------------------------------------------------------------
def cache_dir(config_path: Path) -> Path:
    """``$NECKTOOL_CACHE_DIR`` when set, else ``.necktool_cache`` beside the config."""
    chosen = os.environ.get(CACHE_DIR_ENV)
    return Path(chosen) if chosen else config_path.parent / CACHE_DIR_NAME


@dataclasses.dataclass
class ResultCache:
    """Entries in one folder, looked up and stored by key; counts its hits.

    Every failure to read is a miss and every failure to write is skipped: the cache can
    make a check faster, never make it fail or pass.
    """

    directory: Path
    hits: int = 0
    _versions: dict[str, str] | None = None
    _secret: bytes | None = dataclasses.field(default=None, repr=False)
    _secret_read: bool = dataclasses.field(default=False, repr=False)

    @property
    def secret(self) -> bytes | None:
        """The MAC key (:func:`mac_key`), read once; ``None``: the cache is not used."""
        if not self._secret_read:
            self._secret, self._secret_read = mac_key(), True
        return self._secret

    @property
    def usable(self) -> bool:
        return self.secret is not None

    @property
    def found_versions(self) -> dict[str, str]:
        if self._versions is None:
            self._versions = versions()
        return self._versions

    @property
    def label(self) -> str:
        """The folder as messages show it (relative to the working directory when below)."""
        from necktool.budgets.config import display_path

        return display_path(self.directory, Path.cwd())

    def key(self, plan: Mapping[str, Any] | str) -> str:
        return entry_key(plan, self.found_versions)

    def path(self, key: str) -> Path:
        return self.directory / f"check-{key}.json"

    def get(self, key: str, level_names: Sequence[str]) -> CachedFigures | None:
        """The figures filed under ``key``, if the entry there is whole, truly its own and
        written by necktool on this machine (its MAC)."""
        secret = self.secret
        if secret is None:
            return None
        try:
            with open(self.path(key), "rb") as fh:
                raw = fh.read(MAX_ENTRY_BYTES + 1)
            data = json.loads(raw) if len(raw) <= MAX_ENTRY_BYTES else None
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or data.get("schema") != CACHE_SCHEMA \
                or data.get("key") != key or not isinstance(data.get("mac"), str):
            return None
        try:
            authentic = hmac.compare_digest(data["mac"], entry_mac(secret, data))
        except (TypeError, ValueError, RecursionError):  # a non-ASCII mac, odd JSON
            return None
        if not authentic:
            return None
        figures = CachedFigures.from_json(data.get("figures"), level_names)
        if figures is not None:
            self.hits += 1
            with contextlib.suppress(OSError):  # used: the last to be pruned
                os.utime(self.path(key))
        return figures

    def put(self, key: str, plan: Mapping[str, Any] | str, figures: CachedFigures) -> bool:
        """Store ``figures`` under ``key`` (atomically); ``False`` if the folder cannot be
        made or written, which is not an error."""
        secret = self.secret
        if not figures.cross_check.agree or secret is None:
            return False
        document: dict[str, Any] = {"schema": CACHE_SCHEMA, "key": key, "plan": plan,
                                    "versions": self.found_versions,
                                    "figures": figures.to_json()}
        document["mac"] = entry_mac(secret, document)
        try:
            self._prepare()
            write_file(self.path(key), (json.dumps(document, indent=1) + "\n").encode(),
                       "a cache entry")
        except (OSError, NecktoolError):
            return False
        self.prune()
        return True

    def prune(self, keep: int | None = None) -> int:
        """Remove all but the ``keep`` (default :data:`MAX_ENTRIES`) most recently used
        entries; how many went."""
        keep = MAX_ENTRIES if keep is None else keep
        try:
            entries = [(p.stat().st_mtime_ns, p.name, p)
                       for p in self.directory.glob("check-*.json") if p.is_file()]
        except OSError:
            return 0
        removed = 0
        for _, _, path in sorted(entries, reverse=True)[keep:]:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        return removed

    def _prepare(self) -> None:
        """Create the folder and its ``.gitignore`` (once; a folder made by someone else
        keeps whatever it holds)."""
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            ignore = self.directory / ".gitignore"
            if not ignore.exists():
                write_file(ignore, GITIGNORE.encode(), "the cache's .gitignore")


def export_cache_dir() -> Path:
    """Where a one-neck export keeps counts (it has no config): ``$NECKTOOL_CACHE_DIR``
    when set (as ``check`` does), else ``results/`` in the user's necktool cache."""
    chosen = os.environ.get(CACHE_DIR_ENV)
    return Path(chosen) if chosen else cache_subdir("results")


def profile_key(spec: NeckSpec, batch: int) -> str | None:
    """What an entry's key is made of: the profile plan's content hash of ``spec`` (its
    name aside: equal structures share counts) at ``batch``; ``None`` for a custom neck,
    never cached."""
    from necktool.analysis.plan import ProfilePlan, content_hash

    if spec.factory is not None:
        return None
    # check keys a spec without its name, whose label is the family; the spec is not made
    # again without it (an export's run validates nothing twice).
    return content_hash("profile", {**ProfilePlan(spec, batch).to_dict(), "name": spec.family})


@dataclasses.dataclass
class ExportCounts:
    """The result cache as an export's source of counts
    (:class:`necktool.deploy.templates.CountCache`)."""

    cache: ResultCache

    def get(self, spec: NeckSpec, batch: int) -> CachedFigures | None:
        plan = profile_key(spec, batch)
        return None if plan is None else self.cache.get(self.cache.key(plan),
                                                        spec.level_names)

    def put(self, spec: NeckSpec, batch: int, profile: Any) -> None:
        plan = profile_key(spec, batch)
        figures = CachedFigures.of(profile)
        if plan is not None and [lv.name for lv in figures.levels] == list(spec.level_names):
            self.cache.put(self.cache.key(plan), plan, figures)
