from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_terminal_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output as a pipe sees it, whoever runs the tests: pytest-xdist's workers inherit
    COLUMNS=80 and LINES=24, which would wrap tables that a test reads. A test that wants
    a width sets COLUMNS itself."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
               ) -> None:
    """Every test gets an empty user cache of its own (export templates, counts), never
    the user's ~/.cache: NECKTOOL_CACHE_DIR, and XDG_CACHE_HOME behind it for a test that
    unsets the first. Child processes inherit both. A test that wants a cache shared
    between its exports sets NECKTOOL_CACHE_DIR itself."""
    monkeypatch.setenv("NECKTOOL_CACHE_DIR", str(tmp_path_factory.mktemp("necktool_cache")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
