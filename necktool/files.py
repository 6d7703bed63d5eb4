"""Writing result files so that a failure never truncates or replaces a good one.

Every file necktool writes (an ONNX export, a baseline, a plot) goes through here: the
destination is checked before any work, the content is written to a temporary file
beside it, and that file replaces the destination only when the whole job succeeded.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator

from necktool.errors import InputError, NecktoolError

PathLike = str | os.PathLike[str]


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _temp_beside(dest: pathlib.Path, what: str, error: type[NecktoolError]) -> pathlib.Path:
    try:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise error(f"{dest}: cannot write {what}: {_reason(exc)}") from None
    os.close(fd)
    return pathlib.Path(name)


def check_writable(path: PathLike, what: str,
                   error: type[NecktoolError] = InputError) -> pathlib.Path:
    """Raise ``error`` now, before any work, unless ``path`` can be written.

    Writability is probed by creating (and removing) the temporary file the write will
    use: ``os.access`` answers yes to root even on a read-only mount.
    """
    dest = pathlib.Path(path)
    if dest.is_dir():
        raise error(f"{dest}: cannot write {what}: it is a directory; give a file name")
    if not dest.parent.is_dir():
        raise error(f"{dest}: cannot write {what}: directory {dest.parent} does not exist")
    _temp_beside(dest, what, error).unlink()
    return dest


@contextlib.contextmanager
def replace_on_success(path: PathLike, what: str,
                       error: type[NecktoolError] = InputError) -> Iterator[pathlib.Path]:
    """Yield a temporary path beside ``path``; move it over ``path`` if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left untouched. The
    result gets the mode a plain ``open()`` would give it (``mkstemp`` makes 0600 files).
    """
    dest = pathlib.Path(path)
    tmp = _temp_beside(dest, what, error)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, dest)
        except OSError as exc:
            raise error(f"{dest}: cannot write {what}: {_reason(exc)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
