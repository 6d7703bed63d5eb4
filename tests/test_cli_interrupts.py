"""An interrupt is exit 130 with one line, ``necktool: interrupted``, at any moment: inside
the exporter (even when the exporter wraps it in its own error), after the file is written,
while the CLI gives its signal handlers back, and after a ``KeyboardInterrupt`` passed
through an ``exec``'d string (which CPython remembers, and under ``python -m`` would turn
into death by SIGINT, returncode -2)."""

from __future__ import annotations

import pathlib
import signal
from collections.abc import Iterator

import pytest
from _cli import necktool_hooked
from typer.testing import CliRunner

from necktool.cli import app

# --no-cache: the export template cache writes its own file first; these tests watch the
# destination's write alone.
NECK = ["scrfd_0.5g", "--input-size", "64", "--trials", "1", "--no-cache"]
INTERRUPTED = "necktool: interrupted\n"


@pytest.fixture
def handlers() -> Iterator[None]:
    """The entry point installs handlers for the whole process: give the test's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


# -- inside the exporter -------------------------------------------------------------------
def _exporter_wrapping_an_interrupt(*args: object, **kwargs: object) -> None:
    """What torch.onnx.export does when Ctrl-C lands inside torch.export: its own error,
    raised from the interrupt (the issue saw ``TorchExportError`` printed before it)."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as exc:
        raise RuntimeError("\x1b[31mTorchExportError\x1b[0m: Failed to export") from exc


def _exporter_interrupted(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("exporter", [_exporter_wrapping_an_interrupt, _exporter_interrupted])
def test_an_interrupt_inside_the_exporter_is_the_interrupt_not_an_export_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, exporter: object) -> None:
    import torch

    from necktool.deploy.export import export_model
    from necktool.deploy.model import make_model
    from necktool.necks.build import make_inputs
    from necktool.spec.registry import resolve_spec

    monkeypatch.setattr(torch.onnx, "export", exporter)
    spec = resolve_spec("scrfd_0.5g")
    with pytest.raises(KeyboardInterrupt):  # the library re-raises it, unwrapped
        export_model(make_model(spec)[0], spec, make_inputs(spec, (64, 64)), dynamic=False,
                     opset=18)

    dest = tmp_path / "n.onnx"
    result = CliRunner().invoke(app, ["export", *NECK, "-o", str(dest)])
    assert (result.exit_code, result.stdout, result.stderr) == (130, "", INTERRUPTED)
    assert list(tmp_path.iterdir()) == []


def test_a_signal_sent_from_inside_the_exporter_is_exit_130_and_one_line(
        tmp_path: pathlib.Path) -> None:
    """SIGTERM while the real exporter runs (sent by the process to itself from within)."""
    dest = tmp_path / "n.onnx"
    dest.write_bytes(b"old export")
    proc = necktool_hooked(tmp_path, """
        import os, signal, torch
        real = torch.onnx.export
        def export(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)
        torch.onnx.export = export
    """, "export", *NECK, "-o", str(dest))
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", INTERRUPTED)
    assert dest.read_bytes() == b"old export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hooks", "n.onnx"]


# -- after the work, and on the way out ------------------------------------------------------
def test_a_signal_after_the_write_is_exit_130_and_one_line(tmp_path: pathlib.Path) -> None:
    """The file is complete and stays; the process still says it was interrupted (it exited
    143 with no message when the signal came after the CLI gave its handlers back)."""
    dest = tmp_path / "n.onnx"
    proc = necktool_hooked(tmp_path, """
        import os, signal, necktool.files
        real = necktool.files.write_file
        def write_file(*args, **kwargs):
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
        necktool.files.write_file = write_file
    """, "export", *NECK, "-o", str(dest))
    assert (proc.returncode, proc.stderr) == (130, INTERRUPTED)
    import onnx

    onnx.checker.check_model(onnx.load(str(dest)))  # complete, not torn


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_after_the_cli_gave_its_handlers_back_is_exit_130(
        tmp_path: pathlib.Path, sig: str) -> None:
    proc = necktool_hooked(tmp_path, f"""
        import os, signal, necktool.cli.interrupts as interrupts
        real = interrupts.restore
        def restore(previous):
            real(previous)
            os.kill(os.getpid(), signal.{sig})
        interrupts.restore = restore
    """, "list", "scrfd_0.5g")
    assert (proc.returncode, proc.stderr) == (130, INTERRUPTED)


def test_an_interrupt_that_passed_through_an_exec_string_is_exit_130_not_death_by_sigint(
        tmp_path: pathlib.Path) -> None:
    """A dataclass or namedtuple made during a lazy import runs an ``exec``'d string; an
    interrupt that lands there is remembered by CPython, which under ``python -m`` killed
    the process by SIGINT at exit (returncode -2) although necktool had handled it."""
    proc = necktool_hooked(tmp_path, """
        import necktool.spec.registry as registry
        def matching(*args, **kwargs):
            exec("raise KeyboardInterrupt")
        registry.NeckList.matching = matching
    """, "list", "scrfd_0.5g")
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", INTERRUPTED)


# -- the entry point, in process -------------------------------------------------------------
@pytest.mark.parametrize("work", ["done", "interrupted"])
def test_a_signal_while_the_cli_restores_its_handlers_is_exit_130(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], handlers: None,
        work: str) -> None:
    """A signal can land after the command's own handling, while the CLI puts the previous
    handlers back: it must still be exit 130 with one line, never Python's death by SIGINT
    (returncode -2, seen once in CI with SIGTERM during an export)."""
    import necktool.__main__
    import necktool.spec.registry
    from necktool.cli import interrupts

    real = interrupts.restore

    def late_signal(previous: object) -> None:
        real(previous)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # what our handler raises for a signal in this instant

    def exit_now(code: int) -> None:  # os._exit would end pytest
        raise SystemExit(code)

    if work == "interrupted":
        def interrupted(*args: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(necktool.spec.registry.NeckList, "matching", interrupted)
    monkeypatch.setattr(interrupts, "restore", late_signal)
    monkeypatch.setattr(necktool.__main__.os, "_exit", exit_now)
    monkeypatch.setattr("sys.argv", ["necktool", "list", "scrfd_*"])
    with pytest.raises(SystemExit) as stop:
        necktool.__main__.run()
    assert stop.value.code == 130
    assert capsys.readouterr().err == INTERRUPTED  # once, even when both came


def test_the_entry_point_exits_with_the_commands_code(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        handlers: None) -> None:
    import necktool.__main__

    monkeypatch.setattr("sys.argv", ["necktool", "list", "scrfd_0.5g"])
    with pytest.raises(SystemExit) as stop:
        necktool.__main__.run()
    assert stop.value.code == 0 and "scrfd_0.5g" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["necktool", "profile", "no_such_neck"])
    with pytest.raises(SystemExit) as stop:
        necktool.__main__.run()
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("necktool: error: unknown neck 'no_such_neck'")


# -- where Python cannot raise ----------------------------------------------------------------
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("where", ["weakref", "del", "gc"])
def test_a_signal_inside_a_weakref_callback_del_or_gc_is_exit_130_and_one_line(
        tmp_path: pathlib.Path, sig: str, where: str) -> None:
    """The handler's ``KeyboardInterrupt`` raised inside a weakref callback (importlib's module
    locks hold one: the issue's 'Exception ignored in: ... in cb'), a ``__del__`` or a gc
    callback cannot propagate; Python printed it as ignored and the command ran on. It must
    resurface: exit 130, stdout empty (the listing never printed), one line on stderr."""
    proc = necktool_hooked(tmp_path, f"""
        import gc, os, signal, time, weakref
        import necktool.spec.registry as registry

        def land_here():
            os.kill(os.getpid(), signal.{sig})
            for _ in range(100000):  # the handler runs at the first bytecode check in here
                pass

        class Thing:
            def __del__(self):
                if "{where}" == "del":
                    land_here()

        def in_gc(phase, info):
            if phase == "start":
                gc.callbacks.remove(in_gc)
                land_here()

        real = registry.NeckList.matching
        def matching(*args, **kwargs):
            thing = Thing()
            if "{where}" == "weakref":
                ref = weakref.ref(thing, lambda r: land_here())
            del thing
            if "{where}" == "gc":
                gc.callbacks.append(in_gc)
                gc.collect()
            time.sleep(3)  # the command would carry on, and print the listing
            return real(*args, **kwargs)
        registry.NeckList.matching = matching
    """, "list", "scrfd_0.5g")
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", INTERRUPTED)
