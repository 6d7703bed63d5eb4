"""The neutral shape of every result's rendering (torch-free).

A result object gives ``to_dict()`` (its JSON) and ``blocks()``: a list of
:class:`Table`, :class:`Note` and :class:`Heading` values holding plain strings. One
renderer (:mod:`necktool.cli.render`) turns those into rich tables on a terminal, plain
text in a pipe, markdown, or JSON; results never format for a particular output.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


class OutputFormat(enum.StrEnum):
    """What a command prints on stdout."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    GITHUB = "github"  # check only: workflow-command annotations after the markdown


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column; ``numeric`` columns are right-aligned and never wrapped."""

    header: str
    numeric: bool = False


@dataclasses.dataclass(frozen=True)
class Table:
    """A titled table of strings.

    Attributes:
        sections: Indices of rows after which a rule is drawn.
        show_header: False for key/value tables.
        verdict: Index of a column whose ``PASS``/``FAIL`` cells may be coloured.
    """

    title: str | None
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]
    footer: tuple[str, ...] | None = None
    caption: str | None = None
    sections: tuple[int, ...] = ()
    show_header: bool = True
    verdict: int | None = None

    def __post_init__(self) -> None:
        width = len(self.columns)
        bad = [r for r in self.rows if len(r) != width]
        if bad or (self.footer is not None and len(self.footer) != width):
            raise ValueError(f"table {self.title!r}: every row needs {width} cells")


@dataclasses.dataclass(frozen=True)
class Note:
    """A line of text after the tables (``style``: ``""``, ``"fail"`` or ``"warn"``)."""

    text: str
    style: str = ""


@dataclasses.dataclass(frozen=True)
class Heading:
    """A heading line (a markdown ``###``; bold on a terminal). ``mark`` (an emoji such as
    a pass/fail sign) is shown in markdown and on a terminal, never in a pipe's plain text,
    where logs and scripts read it."""

    text: str
    mark: str = ""


Block = Table | Note | Heading


@runtime_checkable
class Result(Protocol):
    """What every command returns: JSON and neutral blocks. A result that can fail is
    also falsy when it failed (the CLI maps that to exit 1, in one place)."""

    def to_dict(self) -> Any: ...

    def blocks(self) -> list[Block]: ...


class Verdict:
    """A result that can fail: falsy exactly when it failed, so the CLI maps it to exit 1
    in one place. A subclass says what ``passed`` means."""

    @property
    def passed(self) -> bool:
        raise NotImplementedError

    def __bool__(self) -> bool:
        return self.passed


class Passes(Protocol):
    @property
    def passed(self) -> bool: ...


def all_passed(parts: Sequence[Passes]) -> bool:
    """At least one part, and every part passed: a comparison of nothing verified nothing,
    so it fails."""
    return bool(parts) and all(p.passed for p in parts)


def table(title: str | None, headers: Sequence[str | Column], rows: Sequence[Sequence[str]],
          **options: Any) -> Table:
    """Shorthand: plain header strings are text columns; pass :class:`Column` for numbers."""
    columns = tuple(h if isinstance(h, Column) else Column(h) for h in headers)
    footer = options.pop("footer", None)
    return Table(title, columns, tuple(tuple(r) for r in rows),
                 footer=tuple(footer) if footer is not None else None, **options)


def num(header: str) -> Column:
    return Column(header, numeric=True)


def channels_text(channels: Sequence[int]) -> str:
    """Output channels as tables show them: ``64`` when every level has them, else per
    level ``64,128,256`` (the YOLO necks)."""
    return str(channels[0]) if len(set(channels)) == 1 else ",".join(map(str, channels))


def share(value: int, total: int) -> str:
    return f"{100 * value / total:.1f}%" if total else "-"


def size_text(size: Sequence[int]) -> str:
    """``640x480``: an image size (H, W) as the flags and tables write it."""
    return "x".join(map(str, size))
