"""Keep third-party chatter (prints, C-level output, warnings, logging) off the terminal."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Swallow everything said inside the block: prints, C-level output on fds 1 and 2,
    warnings and logging. Yields the captured Python-level text, so a failure can quote
    its last line."""
    captured = io.StringIO()
    previous_disable = logging.root.manager.disable
    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()  # type: ignore[union-attr]
            # C++ and logging handlers bound to the real fds: point fds 1 and 2 at a sink.
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
            logging.disable(logging.CRITICAL)
            with warnings.catch_warnings(), contextlib.redirect_stdout(captured), \
                    contextlib.redirect_stderr(captured):
                warnings.simplefilter("ignore")
                yield captured
        finally:
            logging.disable(previous_disable)
            for stream in (sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()  # type: ignore[union-attr]
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def onnxruntime() -> Any:
    """Import ONNX Runtime with its own chatter off.

    ``ORT_DISABLE_TELEMETRY`` must be set before the import: ONNX Runtime 1.31 logs a
    coloured "Failed to persist telemetry device ID" warning at import time whenever it
    cannot write its device ID under ``$HOME/.cache``, and no logger setting made after
    the import reaches it. Its default logger is then set to errors only.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    return ort



@contextlib.contextmanager
def no_torch_cache() -> Iterator[None]:
    """Run torch code (``torch.export``, the ONNX exporter) without it leaving an empty
    ``torchinductor_<user>`` folder in ``$TMPDIR``.

    Importing ``torch._dynamo`` (and parts of the export) asks for the inductor cache
    directory, which torch creates, by default as ``$TMPDIR/torchinductor_<user name>``:
    debris that also names the user. necktool compiles nothing, so inside the block the
    cache is a temporary directory, removed on the way out (even on Ctrl-C). A
    ``TORCHINDUCTOR_CACHE_DIR`` the user set is left alone.
    """
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="necktool-") as scratch:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = scratch
        try:
            yield
        finally:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
