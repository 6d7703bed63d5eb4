"""What ships stays private: the words of this machine that no written file may carry, and
the check that finds them (used by the privacy tests and by every preset's export test,
which export from a folder, ``$HOME`` and ``$TMPDIR`` named with :data:`MARKER`: the
``marked`` fixture in conftest.py)."""

from __future__ import annotations

import getpass
import pathlib
import socket
import sys

import onnx

import necktool as package

MARKER = "Mk7qPrivate"


def machine_words() -> list[str]:
    """What must not ship: the marker, this Python's and necktool's folders (the stack
    traces point into both), the user name and the host name."""
    words = [MARKER, sys.prefix, str(pathlib.Path(package.__file__).resolve().parents[1])]
    words += [w for w in (getpass.getuser(), socket.gethostname()) if len(w) >= 3]
    return words


def text_of(path: pathlib.Path) -> bytes:
    """A file's bytes; for ONNX, every string in it (the tensors' raw bytes left out, where a
    short user name could turn up by chance)."""
    data = path.read_bytes()
    if path.suffix != ".onnx":
        return data
    model = onnx.load_from_string(data)
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
    return model.SerializeToString()


def leaks(paths: list[pathlib.Path]) -> list[str]:
    """``file: word`` for each machine word found in each file (the marker in any byte,
    the others in the file's strings)."""
    found = []
    for path in paths:
        data, text = path.read_bytes(), text_of(path)
        for word in machine_words():
            if (MARKER in word and word.encode() in data) or word.encode() in text:
                found.append(f"{path.name}: {word!r}")
    return found


def written(root: pathlib.Path) -> list[pathlib.Path]:
    """Every file an export may have written below ``root``."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (
        ".onnx", ".param", ".bin", ".json", ".png", ".svg"))
