"""``python -m necktool`` and the ``necktool`` console script."""

import contextlib
import os
import signal
import sys

INTERRUPTED = 130  # necktool.errors.ExitCode.INTERRUPTED, before anything is imported
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def run() -> None:
    """Entry point: run the command line, then end the process with its exit code.

    Ctrl-C and SIGTERM raise ``KeyboardInterrupt`` from the first instruction to the last
    (the CLI installs its own handler, and the one it gives back on the way out raises
    too), so an interrupt at any moment, loading included, is exit 130 with one line.
    """
    code = INTERRUPTED
    try:
        # An interrupt raised inside a weakref callback (an import's module lock), __del__
        # or gc is delivered again, never printed as "Exception ignored".
        from necktool import unraisable

        unraisable.install()
        for sig in _SIGNALS:  # until the CLI's own, and again once it gives them back
            signal.signal(sig, signal.default_int_handler)  # (also over an inherited SIG_IGN)
        from necktool.cli import main

        code = main(standalone=False)
    except KeyboardInterrupt:
        code = INTERRUPTED
    if "necktool.unraisable" in sys.modules and sys.modules["necktool.unraisable"].swallowed():
        code = INTERRUPTED
    end(code)


def end(code: int) -> None:
    """Say the last word and exit with ``code``, or with 130 if an interrupt came first.

    From here on a signal only records itself (in any thread it lands on): one that came
    before is reported as the interrupt; one that comes during the interpreter's own
    shutdown cannot end the process by the signal (143) or by a ``KeyboardInterrupt``
    there. An interrupted process then ends at once with ``os._exit``: CPython remembers a
    ``KeyboardInterrupt`` that passed through any ``exec``'d string (a dataclass made
    during a lazy import, say) and, under ``python -m``, would kill the process by SIGINT
    at exit (returncode -2) although necktool handled it.
    """
    late: list[int] = []
    while True:
        try:
            for sig in _SIGNALS:  # runs a handler still pending from before, which raises
                signal.signal(sig, lambda signum, frame: late.append(signum))
            _flush()
            if late:
                code = INTERRUPTED
            if code == INTERRUPTED:
                _report()
                _flush()
                os._exit(INTERRUPTED)
            sys.exit(code)
        except KeyboardInterrupt:
            code = INTERRUPTED


def _report() -> None:
    interrupts = sys.modules.get("necktool.cli.interrupts")
    if interrupts is not None:
        interrupts.report()  # once, if the CLI has not already said it
    else:
        sys.stderr.write("necktool: interrupted\n")


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe has nothing to say
            stream.flush()


if __name__ == "__main__":
    run()
