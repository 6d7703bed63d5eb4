"""Counting a module's calls in tests (a plan checks each thing once: count and see)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
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
