from __future__ import annotations

import os
import pathlib
import tempfile

import pytest
import torch
from _privacy import MARKER


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
def marked(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A folder holding the working directory (``work``), ``$HOME`` (``home``) and
    ``$TMPDIR`` (``tmp``), its path holding the privacy marker (tests/_privacy.py): a file
    written from there must not name any of them."""
    root = tmp_path / f"home_of_{MARKER}"
    for sub in ("work", "home", "tmp"):
        (root / sub).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setenv("TMPDIR", str(root / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    monkeypatch.chdir(root / "work")
    return root


@pytest.fixture(scope="session")
def _templates_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("shared_templates")


@pytest.fixture
def shared_templates(_own_cache: None, _templates_of_the_session: pathlib.Path) -> None:
    """Export templates shared by every test that asks for them (per xdist worker): the
    test's own cache, but its ``templates`` folder is the session's. For the tests that
    export one structure again and again and whose subject is not the exporter (the config
    export, up-to-date files, identify; a wider use found few hits): a structure
    exported before is made from its template, a file byte for byte the cold export's
    (test_deploy_templates.py), so only the dynamo exporter's seconds are saved."""
    cache = pathlib.Path(os.environ["NECKTOOL_CACHE_DIR"])
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "templates").symlink_to(_templates_of_the_session, target_is_directory=True)

