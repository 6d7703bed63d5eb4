"""Where necktool keeps what it learns across runs on this machine (torch-free).

One directory, the user's cache: ``$NECKTOOL_CACHE_DIR`` when set, else
``$XDG_CACHE_HOME/necktool``, else ``~/.cache/necktool``. Each kind of entry lives in its own
subdirectory (:func:`cache_subdir`). Nothing here creates a directory: a writer creates what
it needs and treats a read-only or missing cache as "no cache", never as an error.
"""

from __future__ import annotations

import os
import pathlib

#: The environment variable that moves the whole cache (documented in the docs' reference).
CACHE_ENV = "NECKTOOL_CACHE_DIR"


def cache_root() -> pathlib.Path:
    """The user's necktool cache directory (it may not exist yet)."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return pathlib.Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg and os.path.isabs(xdg) else (
        pathlib.Path.home() / ".cache")
    return base / "necktool"


def cache_subdir(kind: str) -> pathlib.Path:
    """The directory of one kind of entry (``templates``, ``keys``, ...), not created."""
    return cache_root() / kind
