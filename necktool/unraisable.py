"""An interrupt that lands where Python cannot raise it is delivered again, never printed.

necktool's signal handlers raise ``KeyboardInterrupt`` (so every ``finally`` runs on the way
out). When the signal lands inside a weak-reference callback (importlib's module locks hold
one), a ``__del__`` or a garbage-collector callback, Python cannot propagate the exception:
it hands it to :data:`sys.unraisablehook`, whose default prints ``Exception ignored in:
...`` and a traceback, and the work carries on. :func:`hook` takes such a
``KeyboardInterrupt`` instead: it prints nothing, remembers it (:func:`swallowed`) and, from
a helper thread once the callback is over, sends ``SIGINT`` to the main thread again, so the
interrupt surfaces in ordinary code, where it unwinds cleanly. Any other unraisable
exception goes to the hook that was there before.

The helper thread only re-sends while the hook is installed and a Python-level handler is
installed for ``SIGINT`` (the CLI's, or the entry point's): under the default disposition a
resent signal would kill the process; the remembered interrupt decides the exit code then.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

#: How long the helper waits before re-sending: the callback that swallowed the interrupt
#: returns in far less; should the signal land in another such spot, it is caught again.
RESEND_AFTER_S = 0.02

_swallowed = threading.Event()
_previous: list[Any] = []


def hook(unraisable: Any) -> None:
    """:data:`sys.unraisablehook`: swallow and re-deliver a ``KeyboardInterrupt``, pass
    anything else on."""
    try:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) or (
                isinstance(unraisable.exc_type, type)
                and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            _swallowed.set()
            _resend()
            return
    except KeyboardInterrupt:  # the re-sent signal landed in here: send it once more
        _swallowed.set()
        _resend()
        return
    earlier = next((h for h in reversed(_previous) if h is not hook), sys.__unraisablehook__)
    earlier(unraisable)


def _resend() -> None:
    for _ in range(3):  # a resent signal landing in here must not end the resending
        try:
            threading.Thread(target=_interrupt_main, name="necktool-interrupt",
                             daemon=True).start()
            return
        except KeyboardInterrupt:
            continue
        except RuntimeError:  # interpreter shutdown: the record (swallowed()) must do
            return


def _interrupt_main() -> None:
    time.sleep(RESEND_AFTER_S)
    # Only while installed: a CLI run in process (a test) has given the handlers back.
    if sys.unraisablehook is hook and callable(signal.getsignal(signal.SIGINT)):
        ident = threading.main_thread().ident
        if ident is not None:
            signal.pthread_kill(ident, signal.SIGINT)


def install() -> None:
    """Make :func:`hook` the process's unraisable hook; calls nest (the entry point's, then
    the CLI's), each undone by one :func:`uninstall`."""
    _previous.append(sys.unraisablehook)
    sys.unraisablehook = hook


def uninstall() -> None:
    """Undo the latest :func:`install`."""
    if _previous:
        sys.unraisablehook = _previous.pop()


def swallowed() -> bool:
    """A ``KeyboardInterrupt`` was raised where Python could only ignore it."""
    return _swallowed.is_set()


def clear() -> None:
    _swallowed.clear()
