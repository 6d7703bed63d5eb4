"""Ctrl-C and SIGTERM: unwind cleanly, and never be forgotten.

Both raise ``KeyboardInterrupt``, so every ``finally`` (a temporary file) runs on the way
out. Both are also remembered: a library that swallows the exception (a bare ``except``
around an optional import) cannot make necktool carry on as if nothing happened, and an
interrupt that lands inside an import and resurfaces later as some other error is still
reported as the interrupt it is. :func:`checkpoint` raises again at safe points.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from necktool import unraisable

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested = threading.Event()
_reported = threading.Event()


def _handler(signum: int, frame: Any) -> None:
    _requested.set()
    raise KeyboardInterrupt


def install() -> dict[int, Any] | None:
    """Handle SIGINT and SIGTERM (main thread only), and an interrupt raised where Python
    can only ignore it (:mod:`necktool.unraisable`); return the previous handlers."""
    _requested.clear()
    _reported.clear()
    unraisable.clear()
    if threading.current_thread() is not threading.main_thread():
        return None
    unraisable.install()
    return {sig: signal.signal(sig, _handler) for sig in _SIGNALS}


def restore(previous: dict[int, Any] | None) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)
    if previous is not None:
        unraisable.uninstall()


def requested() -> bool:
    return _requested.is_set() or unraisable.swallowed()


def checkpoint() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt came and was swallowed somewhere."""
    if _requested.is_set():
        raise KeyboardInterrupt


def report() -> None:
    """Say ``necktool: interrupted`` on stderr, once per invocation."""
    if not _reported.is_set():
        _reported.set()
        sys.stderr.write("necktool: interrupted\n")
