"""No third-party noise (necktool.quiet), even with an unwritable home directory."""

from __future__ import annotations

import pathlib

from _cli import SMALL, necktool


# -- noise ----------------------------------------------------------------------------------
def test_no_third_party_noise_with_an_unwritable_home(tmp_path: pathlib.Path) -> None:
    env = {"HOME": "/dev/null", "XDG_CACHE_HOME": "/dev/null/cache", "MPLCONFIGDIR": ""}
    (tmp_path / "necktool.toml").write_text(
        '[[budget]]\nneck = "scrfd_0.5g"\ninput-size = 64\nmax-gflops = 1\n')
    onnx_file = str(tmp_path / "n.onnx")
    for args in (["list"], ["profile", "scrfd_0.5g", *SMALL],
                 ["export", "scrfd_0.5g", *SMALL, "--trials", "1", "-o", onnx_file],
                 ["verify", onnx_file, "--trials", "1"], ["check"],
                 ["sweep", "scrfd_0.5g", "--sizes", "64", "--plot", str(tmp_path / "p.png")],
                 ["bench", "scrfd_0.5g", *SMALL, "--repeat", "2", "--warmup", "1"]):
        proc = necktool(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stderr == "", (args, proc.stderr)
        assert "\x1b[" not in proc.stdout
