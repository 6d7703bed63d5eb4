"""The one renderer: any result's blocks to a terminal, a pipe, markdown, JSON or GitHub.

Results on stdout; diagnostics and progress on stderr. On a terminal tables are rich
tables with colour; in a pipe the same tables in plain text. A table that does not fit
the width first drops its box, then becomes one ``column: value`` record per row: a
number or a name is never cut.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from necktool.cli import interrupts
from necktool.report import Block, Heading, Note, OutputFormat, Result, Table

# A pipe has no width: tables keep their natural one up to this (or $COLUMNS), and
# captions and notes wrap at the same width, so no block is sized differently from another.
PIPE_WIDTH = 200


def load_heavy(*, counting: bool = False) -> None:
    """Import torch and fvcore, then freeze what exists so far out of the collector's view.

    Every command that counts or runs a neck calls this first. Later collections then skip
    torch's long-lived objects, which saves ~70 ms per command on these machines.

    Args:
        counting: The command only counts FLOPs (profile, check, sweep): run it on one
            intra-op thread unless ``OMP_NUM_THREADS`` says otherwise. Counting needs no
            fast kernels, and on a busy 2-core runner OpenMP threads spinning against each
            other made it several times slower. Commands that time or compare kernels
            (export's verification, bench) keep torch's default.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import-time DeprecationWarnings
        import fvcore.nn  # noqa: F401
        import torch
    if counting and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    gc.freeze()


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich exits 1 here; a reader that stopped reading (`| head`) is not a failure:
        # let the CLI end quietly with 0.
        self.quiet = True
        raise BrokenPipeError


def stdout_console() -> Console:
    console = _Console(soft_wrap=False, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def diagnostic(message: str) -> None:
    """A line for people on stderr (never for scripts: only when stderr is a terminal)."""
    console = stderr_console()
    if console.is_terminal:
        console.print(message, markup=False)


# -- rendering ------------------------------------------------------------------------
def emit(result: Result, fmt: OutputFormat) -> None:
    """Print ``result`` on stdout in ``fmt``."""
    if fmt is OutputFormat.JSON:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    elif fmt is OutputFormat.MARKDOWN:
        sys.stdout.write(to_markdown(result.blocks()))
    elif fmt is OutputFormat.GITHUB:
        # The markdown reads well in a raw log; annotations go last, one per line.
        sys.stdout.write(to_markdown(result.blocks()))
        for line in getattr(result, "annotations", list)():
            sys.stdout.write(line + "\n")
    else:
        console = stdout_console()
        for block in result.blocks():
            console.print(_renderable(block, console))
    sys.stdout.flush()


def _renderable(block: Block, console: Console) -> RenderableType:
    if isinstance(block, Heading):
        mark = f"{block.mark} " if block.mark and console.is_terminal else ""
        return Text(mark + block.text, style="bold")
    if isinstance(block, Note):
        prefix = {"fail": ("FAIL ", "bold red"), "warn": ("warning: ", "yellow")}.get(
            block.style)
        text = Text()
        if prefix:
            text.append(*prefix)
        text.append(block.text)
        return text
    return fit_table(block, console)


def min_widths(t: Table) -> list[int]:
    """The narrowest each column can be without cutting anything: a numeric column's
    longest cell; otherwise the longest word (headers and text wrap only between words)."""
    rows = [*t.rows, *([t.footer] if t.footer is not None else [])]
    widths = []
    for i, col in enumerate(t.columns):
        words = [w for c in ([col.header] if t.show_header else []) for w in c.split()]
        cells = [row[i] for row in rows]
        if col.numeric:
            longest = [len(line) for c in cells for line in c.splitlines()]
        else:
            longest = [len(w) for c in cells for w in c.split()]
        widths.append(max([*longest, *map(len, words)], default=0))
    return widths


def _rich_table(t: Table, plain: bool, widths: list[int]) -> RenderableType:
    # Loaded here, after torch: load_heavy froze torch's objects out of the collector's
    # view, so rich's style tables no longer cost garbage-collector passes.
    from rich import box
    from rich.table import Table as RichTable

    table = RichTable(title=t.title, show_header=t.show_header, show_footer=t.footer is not None,
                      box=None if plain else box.HEAVY_HEAD,
                      padding=(0, 1), show_edge=not plain, pad_edge=not plain)
    for i, col in enumerate(t.columns):
        table.add_column(col.header, justify="right" if col.numeric else "left",
                         overflow="fold", min_width=widths[i],
                         footer=t.footer[i] if t.footer is not None else "",
                         style="bold" if not t.show_header and i == 0 else None)
    for r, row in enumerate(t.rows):
        cells: list[RenderableType] = [
            # Text, not markup: a cell such as "[[budget]]" is data, never a style tag.
            _verdict(cell) if i == t.verdict else Text(cell) for i, cell in enumerate(row)]
        table.add_row(*cells, end_section=r in t.sections and r != len(t.rows) - 1)
    if not t.caption:
        return table
    # The caption under the table, wrapped at the console's width like any note (a caption
    # wrapped at a narrow table's width splits its sentences line by line).
    return Group(table, Text(t.caption))


def _verdict(cell: str) -> Text:
    if cell.startswith("PASS"):
        return Text(cell, style="green")
    if cell.startswith("FAIL"):
        return Text(cell, style="bold red")
    return Text(cell)


def fit_table(t: Table, console: Console) -> RenderableType:
    """The table as wide as it needs up to the console's width; narrower, without its box;
    narrower still, one record per row. Numbers and names are never cut."""
    widths = min_widths(t)
    n = len(widths)
    # A boxed table adds a rule and a space each side per column; a plain one, one space
    # between columns on each side.
    for plain, extra in ((False, 3 * n + 1), (True, 2 * (n - 1))):
        if sum(widths) + extra <= console.width:
            return _rich_table(t, plain, widths)
    return _records(t)


def _records(t: Table) -> RenderableType:
    """Each row as ``column: value`` lines, for terminals too narrow for the table."""
    lines: list[RenderableType] = []
    if t.title:
        lines.append(Text(t.title, style="bold"))
    rows = [*t.rows, *([t.footer] if t.footer is not None else [])]
    for row in rows:
        for col, cell in zip(t.columns, row, strict=True):
            if cell:
                label = f"{col.header}: " if t.show_header else ""
                lines.append(Text(f"  {label}{cell}"))
        lines.append(Text(""))
    if t.caption:
        lines.append(Text(t.caption))
    return Group(*lines)


def to_markdown(blocks: Sequence[Block]) -> str:
    """Blocks as GitHub-flavoured markdown (for a PR comment or a job summary)."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += [f"### {block.mark + ' ' if block.mark else ''}{block.text}", ""]
        elif isinstance(block, Note):
            out.append(f"- {_md(block.text)}" if block.style else _md(block.text))
            if not block.style:
                out.append("")
        else:
            out += _markdown_table(block)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def _markdown_table(t: Table) -> list[str]:
    lines = [f"**{_md(t.title)}**", ""] if t.title else []
    headers = [c.header for c in t.columns] if t.show_header else \
        ["field", "value"][:len(t.columns)] + [""] * max(0, len(t.columns) - 2)
    lines.append("| " + " | ".join(_md(h) for h in headers) + " |")
    lines.append("|" + "|".join("---:" if c.numeric else "---" for c in t.columns) + "|")
    for row in t.rows:
        cells = [_md(cell) for cell in row]
        if t.verdict is not None and row[t.verdict].startswith("FAIL"):
            cells[t.verdict] = f"**{cells[t.verdict]}**"
        lines.append("| " + " | ".join(cells) + " |")
    if t.footer is not None:
        lines.append("| " + " | ".join(f"**{_md(c)}**" if c else "" for c in t.footer) + " |")
    lines.append("")
    if t.caption:
        lines += [f"_{_md(line)}_" for line in t.caption.splitlines() if line] + [""]
    return lines


def _md(text: str) -> str:
    return text.replace("|", r"\|").replace("\n", "<br>")


# -- progress ----------------------------------------------------------------------------
@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Any]:
    """A transient progress bar on stderr (silent when stderr is not a terminal).

    Yields a callable ``advance(label)`` to call as each item finishes.
    """
    console = stderr_console()
    if not console.is_terminal:  # nothing to animate: skip importing rich.progress at all
        yield lambda label="": interrupts.checkpoint()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   MofNCompleteColumn(), console=console, transient=True)
    with bar:
        task = bar.add_task(description, total=total)

        def advance(label: str = "") -> None:
            interrupts.checkpoint()
            bar.update(task, advance=1, description=f"{description} {label}".strip())

        yield advance
