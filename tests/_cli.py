"""Running necktool in tests: in process through Typer's CliRunner, or as a process."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

from typer.testing import CliRunner

from necktool.cli import app

SMALL = ["--input-size", "64"]


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``necktool ARGS`` in process: exit code, stdout, stderr."""
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def necktool(*args: str, cwd: pathlib.Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m necktool ARGS`` as a process of its own."""
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "necktool", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)


def necktool_hooked(tmp_path: pathlib.Path, hook: str, *args: str,
                    timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m necktool ARGS`` in ``tmp_path`` with ``hook`` run first (as
    ``sitecustomize``): a process of its own, signals delivered by the kernel, a fault
    injected exactly where the hook puts it."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(hook))
    path = os.pathsep.join(p for p in (str(hooks), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "necktool", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
