"""Typed errors and the exit codes they map to.

The library raises these; only the CLI's entry point turns them into exit codes
(see ``necktool.cli``). Messages are written for the user: what was wrong, the
value given, and what would be valid.
"""

from __future__ import annotations

import enum
import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # a library's colours (the exporter, torch.load)


class ExitCode(enum.IntEnum):
    """Process exit codes, documented in docs/reference/exit-codes.md."""

    OK = 0
    CHECK_FAILED = 1  # a verification, a budget or a cross-check did not pass
    USAGE = 2  # bad usage or bad input: nothing was checked
    INTERNAL = 70  # a bug in necktool (sysexits' EX_SOFTWARE); NECKTOOL_DEBUG=1 shows it
    INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


class NecktoolError(Exception):
    """Base class of every error necktool raises on purpose.

    ``details`` are a few indented lines shown under the one-line message (missing keys,
    say); the message alone must already say what was wrong.
    """

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, details: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.details = tuple(details)


class UnknownNeckError(NecktoolError, KeyError):
    """A neck name that is neither a preset, a family nor an import path."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SpecError(NecktoolError, ValueError):
    """A neck specification that cannot be built (channels, groups, sizes...)."""


class InputError(NecktoolError, ValueError):
    """A malformed value on the command line or in a file (sizes, lists)."""


class ConfigError(NecktoolError, ValueError):
    """A malformed or missing budget configuration."""


class WeightsError(NecktoolError, ValueError):
    """A weights file that cannot be read or does not fit the neck.

    ``report`` holds the key-by-key comparison when there is one
    (a :class:`necktool.necks.weights.WeightsReport`), so callers can show or test it.
    """

    def __init__(self, message: str, report: object | None = None,
                 details: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message, details)
        self.report = report


class CustomNeckError(NecktoolError):
    """A custom neck that cannot be imported, built or run as a neck."""


class CheckFailed(NecktoolError):
    """A check ran and did not pass (verification, budgets, a count cross-check)."""

    exit_code = ExitCode.CHECK_FAILED


class ExportError(CheckFailed):
    """The ONNX exporter, or a check of the file it wrote, failed; nothing was written."""


class VerificationFailed(CheckFailed):
    """ONNX Runtime's outputs differ from PyTorch's beyond tolerance.

    Deprecated, kept importable: necktool no longer raises it. A failed verification is a
    falsy result (``export_onnx(...)`` returns an ``ExportResult`` with ``written=False``;
    ``verify_onnx`` a falsy report), which the CLI turns into exit 1. Callers may raise it
    themselves with the result attached (``result``).
    """

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result


def first_line(exc: BaseException, limit: int = 300, *, typed: bool = True) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters of it, colour
    codes removed), for a third-party exception quoted inside a one-line error; with
    ``typed=False`` the line alone. Either is the type's name when the message is empty.

    Example:
        >>> first_line(ValueError("bad\\nmore")), first_line(KeyError(), typed=False)
        ('ValueError: bad', 'KeyError')
    """
    text = _ANSI.sub("", str(exc)).strip()
    line = text.splitlines()[0][:limit] if text else ""
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line}" if typed else line


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling or because of, an interrupt.

    A third-party library that catches a ``KeyboardInterrupt`` and raises its own error
    (the ONNX exporter does: ``TorchExportError ... from`` what stopped it) must not turn
    Ctrl-C or SIGTERM into that error: callers wrapping third-party errors re-raise the
    interrupt instead when this is true.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
