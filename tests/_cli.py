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


def run_without(args: list[str], *, heavy: tuple[str, ...] = ("torch",), code: int = 0,
                cwd: pathlib.Path | None = None, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """``necktool ARGS`` in a fresh interpreter that must exit ``code`` without importing
    any module in ``heavy``: the one check of "this command never loads torch"."""
    program = textwrap.dedent(f"""
        import sys
        from necktool.cli import app
        try:
            app({args!r})
        except SystemExit as e:
            assert (e.code or 0) == {code!r}, e.code
        loaded = [m for m in {heavy!r} if m in sys.modules]
        assert not loaded, f"imported {{loaded}}"
    """)
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          check=False, cwd=cwd, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc
