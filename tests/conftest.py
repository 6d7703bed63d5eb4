from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest
import torch
from _privacy import marked_folder


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
def _session_user_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """XDG_CACHE_HOME, for the whole session, in a folder of its own, never the user's
    ~/.cache: the check cache's MAC key lives there, so entries one test writes stay
    trusted in the next (tests that drop NECKTOOL_CACHE_DIR fall back to it)."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
               ) -> None:
    """Every test gets an empty necktool cache of its own (export templates, counts, a
    key): NECKTOOL_CACHE_DIR, which child processes inherit. A test that wants a cache
    shared between its exports sets NECKTOOL_CACHE_DIR itself."""
    monkeypatch.setenv("NECKTOOL_CACHE_DIR", str(tmp_path_factory.mktemp("necktool_cache")))


@pytest.fixture
def marked(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[pathlib.Path]:
    """A working directory, ``$HOME`` and ``$TMPDIR`` whose paths hold the privacy marker
    (tests/_privacy.py): a file written from there must not name any of them."""
    yield from marked_folder(tmp_path, monkeypatch)
