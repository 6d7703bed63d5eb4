from __future__ import annotations

import os

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


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The user's cache (the check cache's MAC key, ...) in a folder of the session's own,
    never the real ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user_cache"))
