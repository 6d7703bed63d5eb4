"""Files out never lose or leave anything: links, devices, FIFOs, long names, full and
read-only disks, and kills at several moments of `export` and `check --save-baseline`."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from _cli import necktool_hooked
from typer.testing import CliRunner

from necktool.cli import app
from necktool.errors import InputError
from necktool.files import remove_stale_temps, write_file

# --no-cache: the export template cache writes its own file first; these tests watch the
# destination's write alone.
NECK = ["scrfd_0.5g", "--input-size", "64", "--trials", "1", "--no-cache"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def temps(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- write_file ---------------------------------------------------------------------------
def test_write_replaces_atomically_with_open_modes(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "a.bin"
    write_file(dest, b"one", "it")
    old_umask = os.umask(0o022)
    os.umask(old_umask)
    assert dest.read_bytes() == b"one"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~old_umask
    write_file(dest, b"two", "it")
    assert dest.read_bytes() == b"two" and temps(tmp_path) == []


def test_a_symlink_stays_a_link_and_its_target_is_replaced(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "real" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "latest.onnx"
    link.symlink_to(target)
    write_file(link, b"new", "it")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"
    assert temps(tmp_path) == [] and temps(target.parent) == []


def test_a_device_is_written_through_and_never_replaced() -> None:
    before = os.stat("/dev/null")
    write_file("/dev/null", b"bytes nobody keeps", "it")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_a_fifo_is_written_through(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_file(fifo, b"streamed", "it")
    reader.join(timeout=10)
    assert got == [b"streamed"] and stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize(("name", "says"), [
    ("x" * 300 + ".onnx", "file name too long"),
    ("missing/dir/a.onnx", "does not exist"),
    (".", "it is a directory"),
])
def test_bad_destinations_are_one_line(tmp_path: pathlib.Path, name: str, says: str) -> None:
    with pytest.raises(InputError, match=says):
        write_file(tmp_path / name, b"x", "the ONNX file")
    code, out, err = run("export", *NECK, "-o", str(tmp_path / name))
    assert code == 2 and out == "" and says in err and err.count("\n") == 1


def test_leftovers_of_dead_writers_go_live_ones_stay(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "m.onnx"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        stale = tmp_path / f".m.onnx.{dead}.abc123.tmp"
        busy = tmp_path / f".m.onnx.{live.pid}.def456.tmp"
        other = tmp_path / f".other.onnx.{dead}.abc123.tmp"
        for path in (stale, busy, other):
            path.write_bytes(b"partial")
        assert remove_stale_temps(dest) == [stale]
        write_file(dest, b"good", "it")
        assert not stale.exists() and busy.exists() and other.exists()
        live.kill()


# -- full, read-only ----------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_one_line_and_the_old_file_stays(tmp_path: pathlib.Path) -> None:
    with tmpfs(tmp_path / "small", "48k") as disk:
        dest = disk / "fpn.onnx"
        dest.write_bytes(b"old export")
        # the fpn neck's ONNX file is about 600 kB: it cannot fit
        code, out, err = run("export", "fpn", "--input-size", "64", "--trials", "1", "-o",
                             str(dest))
        assert code == 2 and out == ""
        assert err.strip() == f"necktool: error: {dest}: cannot write the ONNX file: no " \
                              "space left on device"
        assert dest.read_bytes() == b"old export" and temps(disk) == []


def test_a_read_only_disk_is_one_line_and_the_old_file_stays(tmp_path: pathlib.Path) -> None:
    with tmpfs(tmp_path / "ro", "1m") as disk:
        dest = disk / "a.onnx"
        dest.write_bytes(b"old export")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code, _, err = run("export", *NECK, "-o", str(dest))
        assert code == 2 and "read-only file system" in err and err.count("\n") == 1
        assert dest.read_bytes() == b"old export"


# -- signals -------------------------------------------------------------------------------
def _start(args: list[str], cwd: pathlib.Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "necktool", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_torch(proc: subprocess.Popen[str], then: float) -> None:
    """Wait until the child has loaded torch (the work has begun), then ``then`` seconds."""
    maps = pathlib.Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if "libtorch_cpu" in maps.read_text():
                break
        time.sleep(0.05)
    time.sleep(then)


# A kill cannot be raced to land mid-write reliably, and "not the old bytes" would pass a torn
# file: the fault is injected at each step of the write instead, and the file checked whole.
DEATHS = {
    "while the temporary file is written": "os.fsync",
    "just before the rename": "os.replace",
}


def _die_at(call: str, after: bool = False) -> str:
    """A hook that kills the process by SIGKILL (no finally runs) at ``call``."""
    module = call.rpartition(".")[0]
    first, then = ("real(*args, **kwargs)", "os.kill(os.getpid(), signal.SIGKILL)") if after \
        else ("os.kill(os.getpid(), signal.SIGKILL)", "real(*args, **kwargs)")
    return f"""
        import os, signal, {module}
        real = {call}
        def killed(*args, **kwargs):
            {first}
            {then}
        {call} = killed
    """


def _onnx_is_whole(path: pathlib.Path) -> bool:
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return True


@pytest.mark.parametrize("moment", list(DEATHS))
def test_a_kill_during_the_write_keeps_the_old_file_and_the_next_run_cleans_up(
        tmp_path: pathlib.Path, moment: str) -> None:
    dest = tmp_path / "n.onnx"
    dest.write_bytes(b"old export")
    proc = necktool_hooked(tmp_path, _die_at(DEATHS[moment]), "export", *NECK, "-o",
                           str(dest))
    assert proc.returncode == -signal.SIGKILL
    assert dest.read_bytes() == b"old export"  # byte for byte: nothing torn
    assert len(temps(tmp_path)) == 1  # the dead writer's, left because no finally ran
    # the next write removes the dead writer's temporary file and writes a whole file
    code, _, err = run("export", *NECK, "-o", str(dest))
    assert code == 0, err
    assert temps(tmp_path) == [] and _onnx_is_whole(dest)


def test_a_kill_just_after_the_rename_leaves_the_whole_new_file(
        tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "n.onnx"
    dest.write_bytes(b"old export")
    proc = necktool_hooked(tmp_path, _die_at("os.replace", after=True), "export", *NECK,
                           "-o", str(dest))
    assert proc.returncode == -signal.SIGKILL
    assert temps(tmp_path) == [] and _onnx_is_whole(dest)


def test_an_interrupt_at_the_rename_keeps_the_old_file_and_leaves_nothing(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the interrupt unwinds through write_file's finally."""
    dest = tmp_path / "n.bin"
    dest.write_bytes(b"old")

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_file(dest, b"new", "it")
    assert dest.read_bytes() == b"old" and temps(tmp_path) == []


def test_sigterm_during_export_is_exit_130_and_leaves_nothing(tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "n.onnx"
    dest.write_bytes(b"old export")
    proc = _start(["export", *NECK, "-o", str(dest)], tmp_path)
    _wait_for_torch(proc, 0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the export finished before the signal arrived")
    assert (proc.returncode, err) == (130, "necktool: interrupted\n")  # nothing "ignored"
    assert dest.read_bytes() == b"old export" and temps(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_kill_during_check_keeps_the_old_baseline(tmp_path: pathlib.Path,
                                                    sig: signal.Signals) -> None:
    # six different sizes: six traces, a few seconds of work to land in
    (tmp_path / "necktool.toml").write_text("".join(
        f'[[budget]]\nname = "n{i}"\nneck = "scrfd_34g"\ninput-size = {1024 + 64 * i}\n'
        "max-gflops = 100\n" for i in range(6)))
    base = tmp_path / "base.json"
    base.write_text("old baseline")
    proc = _start(["check", "--save-baseline", str(base)], tmp_path)
    _wait_for_torch(proc, 0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the check finished before the signal arrived")
    assert "Traceback" not in err
    if sig != signal.SIGKILL:
        assert (proc.returncode, err) == (130, "necktool: interrupted\n")
    assert base.read_text() == "old baseline" and temps(tmp_path) == []


def test_save_baseline_to_dev_stdout_writes_through(tmp_path: pathlib.Path) -> None:
    (tmp_path / "necktool.toml").write_text(
        '[[budget]]\nneck = "scrfd_0.5g"\ninput-size = 64\nmax-gflops = 1\n')
    proc = subprocess.run([sys.executable, "-m", "necktool", "check", "--format", "json",
                           "--save-baseline", "/dev/stdout"], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert '"version": 1' in proc.stdout and '"passed": true' in proc.stdout
    assert os.path.islink("/dev/stdout")
