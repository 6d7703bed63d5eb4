"""Where output goes: results on stdout, diagnostics and progress on stderr."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def stdout() -> Console:
    from rich.console import Console

    return Console(soft_wrap=False)


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def print_json(data: Any) -> None:
    """Stable JSON: keys in the order the result defines them, two-space indent."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Any]:
    """A transient progress bar on stderr (silent when stderr is not a terminal).

    Yields a callable ``advance(label)`` to call as each item finishes.
    """
    console = stderr()
    if not console.is_terminal:  # nothing to animate: skip importing rich.progress at all
        yield lambda label="": None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   MofNCompleteColumn(), console=console, transient=True)
    with bar:
        task = bar.add_task(description, total=total)

        def advance(label: str = "") -> None:
            bar.update(task, advance=1, description=f"{description} {label}".strip())

        yield advance
