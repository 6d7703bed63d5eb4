"""Typed errors and the exit codes they map to.

The library raises these; only the CLI's entry point turns them into exit codes
(see ``necktool.cli``). Messages are written for the user: what was wrong, the
value given, and what would be valid.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    CHECK_FAILED = 1  # a verification or a budget did not pass
    USAGE = 2  # bad usage or bad input: nothing was checked


class NecktoolError(Exception):
    """Base class of every error necktool raises on purpose."""

    exit_code: ExitCode = ExitCode.USAGE


class UnknownNeckError(NecktoolError, KeyError):
    """A neck name that is neither a preset nor a family."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SpecError(NecktoolError, ValueError):
    """A neck specification that cannot be built (channels, groups, sizes...)."""


class InputError(NecktoolError, ValueError):
    """A malformed value on the command line or in a file (sizes, lists)."""


class ConfigError(NecktoolError, ValueError):
    """A malformed or missing budget configuration."""


class CheckFailed(NecktoolError):
    """A check ran and did not pass (verification, budgets)."""

    exit_code = ExitCode.CHECK_FAILED


class WeightsError(NecktoolError, ValueError):
    """A weights file that cannot be read or does not fit the neck.

    ``report`` holds the key-by-key comparison when there is one
    (a :class:`necktool.weights.WeightsReport`), so callers can show or test it.
    """

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class ExportError(CheckFailed):
    """The ONNX exporter, or a check of the file it wrote, failed; nothing was written."""


class VerificationFailed(CheckFailed):
    """ONNX Runtime's outputs differ from PyTorch's beyond tolerance; nothing was written.

    ``result`` is the full result (an :class:`necktool.export.ExportResult` or a
    :class:`necktool.verify.VerificationResult`) so the CLI can print the report.
    """

    def __init__(self, message: str, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result
