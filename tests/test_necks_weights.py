"""Weights files (necktool.necks.weights): a malicious pickle is refused, dtypes are
converted or refused, a prefix mismatch is one line and a short block."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

from _cli import SMALL, necktool, run


# -- weights --------------------------------------------------------------------------------
def _fpn_state() -> dict[str, object]:
    from necktool.necks.weights import seeded_model

    return dict(seeded_model(__import__("necktool").get_spec("fpn")).state_dict())


def test_a_malicious_pickle_is_refused_naming_what_it_would_call(
        tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned.txt"
    payload = textwrap.dedent(f"""
        import os, torch
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned > {marker}",))
        torch.save({{"state_dict": {{"output1.0.weight": Evil()}}}}, {str(tmp_path / 'evil.pth')!r})
    """)
    subprocess.run([sys.executable, "-c", payload], check=True)
    proc = necktool("export", "fpn", *SMALL, "--weights", str(tmp_path / "evil.pth"),
                    "-o", str(tmp_path / "x.onnx"))
    assert proc.returncode == 2 and not marker.exists()
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("necktool: error: refused to load") and "posix.system" in lines[0]
    assert len(lines) == 2 and "Warning" not in proc.stderr and "weights_only=False" in lines[1]


def test_weights_dtypes_are_converted_or_refused(tmp_path: pathlib.Path) -> None:
    import torch

    state = _fpn_state()
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(half, tmp_path / "half.pth")
    code, out, err = run("export", "fpn", *SMALL, "--trials", "1", "--weights",
                         str(tmp_path / "half.pth"), "-o", str(tmp_path / "h.onnx"), "--json")
    assert code == 0, err  # float16 read as float32; num_batches_tracked stays int64
    assert json.loads(out)["verification"]["passed"] is True
    for dtype in (torch.int64, torch.bool, torch.complex64):
        bad = dict(state)
        bad["merge1.0.weight"] = state["merge1.0.weight"].to(dtype)
        torch.save(bad, tmp_path / "bad.pth")
        code, out, err = run("export", "fpn", *SMALL, "--weights", str(tmp_path / "bad.pth"),
                             "-o", str(tmp_path / "b.onnx"))
        assert code == 2 and out == "" and err.count("\n") == 1
        assert f"merge1.0.weight is {dtype}" in err and "Warning" not in err
        assert not (tmp_path / "b.onnx").exists()


def test_a_prefix_mismatch_is_one_line_and_a_short_block(tmp_path: pathlib.Path) -> None:
    import torch

    torch.save({f"fpn.{k}": v for k, v in _fpn_state().items()}, tmp_path / "p.pth")
    code, out, err = run("export", "fpn", *SMALL, "--weights", str(tmp_path / "p.pth"),
                         "-o", str(tmp_path / "x.onnx"))
    lines = err.splitlines()
    assert code == 2 and out == "" and 2 <= len(lines) <= 7
    assert lines[0].endswith("the keys under 'fpn.' fit: try --prefix fpn.")
    assert all(line.startswith("  ") for line in lines[1:])
