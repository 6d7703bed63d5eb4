"""Writing result files so that nothing is ever lost, replaced wrongly or left behind.

Every file necktool writes (an ONNX export, a baseline, a plot) goes through
:func:`write_file`, after :func:`check_writable` has vetted the destination before any
work:

* The content is made in memory; only then is a temporary file created beside the
  destination, written, flushed to disk and moved over it with :func:`os.replace`. The
  temporary file exists for milliseconds, never while a neck is counted or exported.
* Its name, ``.NAME.PID.RANDOM.tmp``, records the writing process: a write removes the
  leftovers of writers that no longer run (a ``SIGKILL`` at the wrong millisecond), never
  those of a live one. Interrupts (Ctrl-C, ``SIGTERM``) remove the file on the way out.
* A symlink keeps being a link: its target is replaced. A destination that is not a
  regular file (``/dev/null``, a FIFO, a character device) is written straight through and
  never replaced.
* Any failure (no such directory, permission, read-only file system, a name too long, a
  full disk) is one line naming the file and the reason; an existing file is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
import stat
import tempfile

from necktool.errors import InputError, NecktoolError

PathLike = str | os.PathLike[str]
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp$")


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long (at most 255 bytes a name here)"
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return (exc.strerror or str(exc)).lower()


def _named(path: PathLike, what: str, error: type[NecktoolError]) -> pathlib.Path:
    """The path, unless it holds a NUL byte (no OS call accepts one)."""
    if "\x00" in os.fspath(path):
        raise error(f"{str(path)!r}: cannot write {what}: not a file name")
    return pathlib.Path(path)


def _target(path: PathLike) -> pathlib.Path:
    """Where a regular file's bytes go: a symlink's final target, else the path itself."""
    dest = pathlib.Path(path)
    return pathlib.Path(os.path.realpath(dest)) if dest.is_symlink() else dest


def _is_special(path: pathlib.Path) -> bool:
    """An existing destination (links followed, ``/dev/stdout`` too) that is neither a
    regular file nor a directory: a device, a FIFO, a pipe, a socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_writable(path: PathLike, what: str,
                   error: type[NecktoolError] = InputError) -> pathlib.Path:
    """Raise ``error`` now, before any work, unless ``path`` can be written.

    Writability is probed by creating (and at once removing) the temporary file a write
    would use: ``os.access`` answers yes to root even on a read-only mount. A device or
    FIFO is checked with ``os.access`` instead: opening a FIFO would wait for a reader.
    """
    dest = _named(path, what, error)
    try:
        if _is_special(dest):
            if not os.access(dest, os.W_OK):
                raise error(f"{dest}: cannot write {what}: permission denied")
            return dest
        fd, name = _mkstemp(_regular_target(dest, what, error))
    except OSError as exc:
        raise error(f"{dest}: cannot write {what}: {_reason(exc)}") from None
    os.close(fd)
    os.unlink(name)
    return dest


def _regular_target(dest: pathlib.Path, what: str,
                    error: type[NecktoolError]) -> pathlib.Path:
    """The file a regular write replaces (a link's target), checked to be writable there."""
    target = _target(dest)
    if target.is_dir():
        raise error(f"{dest}: cannot write {what}: it is a directory; give a file name")
    if not target.parent.is_dir():
        raise error(f"{dest}: cannot write {what}: directory {target.parent} does not exist")
    return target


def _mkstemp(target: pathlib.Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp",
                            dir=target.parent)


def write_file(path: PathLike, data: bytes, what: str,
               error: type[NecktoolError] = InputError) -> pathlib.Path:
    """Write ``data`` to ``path`` atomically (or straight through, for a device or FIFO).

    Returns:
        The destination as given.

    Raises:
        ``error``: the destination cannot be written; an existing file is left untouched.
    """
    dest = _named(path, what, error)
    try:
        if _is_special(dest):  # /dev/null, a FIFO, a pipe: never replace the node itself
            with open(dest, "wb") as fh:
                fh.write(data)
            return dest
        target = _regular_target(dest, what, error)
        remove_stale_temps(target)
        fd, name = _mkstemp(target)
    except OSError as exc:
        raise error(f"{dest}: cannot write {what}: {_reason(exc)}") from None
    tmp = pathlib.Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give what open() would
        os.replace(tmp, target)
    except OSError as exc:
        raise error(f"{dest}: cannot write {what}: {_reason(exc)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def remove_stale_temps(target: pathlib.Path) -> list[pathlib.Path]:
    """Remove ``.NAME.PID.*.tmp`` siblings of ``target`` left by processes that no longer
    run (killed mid-write); a live writer's file is left alone."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            found = _TEMP.match(entry.name)
            if not found or found["name"] != target.name or _alive(int(found["pid"])):
                continue
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes.

    Raises:
        InputError: the file cannot be read.
    """
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return digest.hexdigest()
