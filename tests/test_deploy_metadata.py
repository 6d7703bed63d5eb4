"""What an exported file says about itself is data, never code: a custom neck named in
metadata is imported only when the user names it."""

from __future__ import annotations

import json
import pathlib
import textwrap

import onnx
from _cli import SMALL, necktool, run


# -- code named by a file --------------------------------------------------------------------
def test_a_custom_neck_in_metadata_is_never_imported_unasked(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "imported.txt"
    (tmp_path / "evilpkg.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").write("module code ran")
        def make(in_channels, out_channels):
            raise SystemExit(0)
    """))
    exported = tmp_path / "n.onnx"
    code, _, err = run("export", "scrfd_0.5g", *SMALL, "--trials", "1", "-o", str(exported))
    assert code == 0, err
    model = onnx.load(str(exported))
    props = {p.key: p for p in model.metadata_props}
    spec = json.loads(props["necktool.spec"].value)
    props["necktool.spec"].value = json.dumps({"family": "custom", "factory": "evilpkg:make",
                                               "in_channels": spec["in_channels"],
                                               "out_channels": 16, "input_size": [64, 64]})
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    proc = necktool("verify", str(edited), cwd=tmp_path)
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr == (f"necktool: error: {str(edited)!r} records the custom neck "
                           "'evilpkg:make'; necktool imports a module only when you name "
                           "it: pass --neck evilpkg:make to allow it\n")
    # named, it is imported, and its factory's SystemExit is a bad neck, not an exit 0
    proc = necktool("verify", str(edited), "--neck", "evilpkg:make", cwd=tmp_path)
    assert marker.exists()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "custom neck 'evilpkg:make' raised SystemExit" in proc.stderr
