"""Where output goes: results on stdout, diagnostics and progress on stderr."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

# Imported before torch on purpose: building rich's style tables after torch's hundreds of
# thousands of objects exist costs ~60 ms more, in garbage-collector passes.
from rich.console import Console
from rich.table import Table as Table


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


def stdout() -> Console:
    return Console(soft_wrap=False)


def stderr() -> Console:
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
