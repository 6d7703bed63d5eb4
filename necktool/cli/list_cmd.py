"""``necktool list``: the presets, without importing torch."""

from __future__ import annotations

from typing import Annotated

import typer

from necktool.spec.registry import NeckList

PatternArg = Annotated[str, typer.Argument(
    metavar="PATTERN", help="Shell wildcard, e.g. 'scrfd_*' (quoted).")]


def list_command(pattern: PatternArg = "*") -> NeckList:
    """List the neck presets with their family, channels and default input size."""
    return NeckList.matching(pattern)
