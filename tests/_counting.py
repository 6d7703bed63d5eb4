"""Counting a module's calls in tests (a plan checks each thing once: count and see)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest


def count_calls(monkeypatch: pytest.MonkeyPatch, module: Any, names: Iterable[str],
                calls: Counter[str] | None = None) -> Counter[str]:
    """Wrap each global ``names`` of ``module`` so that every call is counted by name (and
    still made)."""
    calls = Counter() if calls is None else calls
    for name in names:
        real = getattr(module, name)

        def wrapper(*args: Any, _real: Callable[..., Any] = real, _name: str = name,
                    **kwargs: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
    return calls


Bars = list[tuple[int, list[str]]]


def record_progress(monkeypatch: pytest.MonkeyPatch, module: Any) -> Bars:
    """Replace ``module.progress`` (the CLI's progress bar) with a recorder: each bar opened
    is appended as ``(total, [advanced step, ...])``, filled in as the command runs."""
    bars: Bars = []

    @contextlib.contextmanager
    def progress(total: int, description: str) -> Iterator[Callable[[str], None]]:
        bar: tuple[int, list[str]] = (total, [])
        bars.append(bar)
        yield bar[1].append

    monkeypatch.setattr(module, "progress", progress)
    return bars
