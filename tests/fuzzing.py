"""A seeded fuzzer for every command and flag, shared by ``tests/test_fuzz.py`` (a bounded
run in CI) and ``scripts/fuzz.py`` (10,000+ runs with counts).

Each seed makes one invocation: a command, maybe a NECK or a file argument, and a random
subset of that command's options, read off the real Typer commands (so a new flag is
fuzzed the day it exists), each given a hostile value: Unicode digits, huge and negative
numbers, NaN and infinities, whitespace, empty strings, directories, devices, links,
missing and over-long paths, and files with random bytes, non-UTF-8 text, deep nesting or
damaged ONNX metadata. Each invocation runs in process and is judged by :func:`verdict`.

The new surfaces are drawn too: a neck file against detector files (``verify --against``),
images through a detector as ``--backbone`` (folders of tiny, huge, odd-mode and broken
pictures), ``.npz`` archives with odd members (encrypted, unreadable compression, pickled,
lying headers). ``$TMPDIR`` is a folder of the run's own, which must stay empty.

The exporter itself (``torch.onnx.export``) is replaced by a stub that fails at once:
the fuzzer attacks necktool's handling of input, and a real export of every valid
combination would take seconds each; the export tests cover the exporter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import random
import struct
from collections.abc import Iterator
from typing import Any

from typer.testing import CliRunner

from necktool.cli import COMMANDS, app, load_command

ALLOWED_CODES = {0, 1, 2, 130}
MAX_ERROR_LINES = 7  # the error line and at most six detail lines

NUMBERS = ["", " ", "0", "1", "2", "7", "64", "-1", "-0", "+3", "1_000", "0x10", "1e3", "²",
           "٣٤", "Ⅻ", "9" * 5000, "99999999999999999999999999999", "18446744073709551617",
           "nan", "inf", "-inf", "1e308", "1e-400", "0.5", " 64 ", "64\n", "\x00", "64,",
           "١٢٨", "6 4", "--", "-", "None", "true"]
SIZES = ["640", "640x480", "640X480", "³x³", "0x0", "0x640", "64x", "x64", "64x64x64",
         "99999", "8193x8193", "8192", "32", "31", "33x47", "1e3x64", "64 x 64",
         "\uff16\uff14"]  # the last is 64 in fullwidth digits
CHANNELS = ["64,128,256", "16,32", "1000000000,64,64", ",", "64,,128", "-1,2,3", "0,1",
            "9" * 400, "64;128", "1," * 80, "16384,16384", "16385,1", "4096,4096,4096",
            "2,2,2,2,2,2,2"]
WORDS = ["", " ", "x", "none", "gn", "bn", "relu", "leaky_relu", "elemwise", "mean", "p99",
         "GN", "table", "json", "markdown", "github", "yaml", "cpu", "cuda", "CPU",
         "CPUExecutionProvider", "onnxruntime", "torch", "\u202e", "é", "a" * 300]
TOLERANCES = ["1e-4", "0", "-1", "nan", "inf", "1e-4 p5:1e-3", "p9:1", "p5:1e-3",
              "1e-4 1e-3", "p5:x", ":1", "p5:", "1e400"]
PERCENTS = ["2%", "2", "0", "-1%", "nan", "inf", "1e400", "%", "2%%", "two", "1e6", "1e7"]
NECKS = ["scrfd_2.5g", "scrfd_0.5g", "fpn", "pafpn", "retinaface_mnet", "retinaface_r50",
         "scrfd_*", "nope_*", "scrfd_25g", "", " ", "torch.nn:Identity", "os:system",
         "examples.custom_neck:BiFPN", "a:b:c", ":", "x" * 500, "scrfd_2.5g\x00"]
SIZE_LISTS = ["320,640", "320:640:160", "1:99999999999999999999:1", "640:320:160",
              "320:640:0", ",", "abc", "²:640:160", "64", "16", "64x48,64", "1:" * 30]


@dataclasses.dataclass
class Invocation:
    seed: int
    args: list[str]

    def __str__(self) -> str:
        return f"seed {self.seed}: necktool {' '.join(map(repr, self.args))}"


@dataclasses.dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr or "Traceback" in self.stdout



def mark_zip_member(path: pathlib.Path, *, flags: int = 0, method: int | None = None) -> None:
    """Rewrite a one-member zip's local and central headers in place: ``flags`` (bit 0:
    encrypted) and the compression ``method``, which zipfile then cannot read."""
    data = bytearray(path.read_bytes())
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.index(signature)
        if flags:
            struct.pack_into("<H", data, at + flag_at, flags)
        if method is not None:
            struct.pack_into("<H", data, at + method_at, method)
    path.write_bytes(bytes(data))

def verdict(outcome: Outcome) -> str | None:
    """``None`` when the invocation behaved; else what was wrong with it."""
    if outcome.exception is not None and not isinstance(outcome.exception, SystemExit):
        return f"raised {type(outcome.exception).__name__}: {outcome.exception}"
    if outcome.code == 70:
        return f"internal error: {outcome.stderr.strip()[:300]}"
    if outcome.code not in ALLOWED_CODES:
        return f"exit code {outcome.code}"
    if outcome.traceback:
        return "printed a traceback"
    if "Warning: " in outcome.stderr or "Exception ignored" in outcome.stderr:
        return f"third-party noise on stderr: {outcome.stderr.strip()[:200]}"
    if outcome.code == 2:
        lines = outcome.stderr.splitlines()
        if not lines or not lines[0].startswith("necktool: error: "):
            return f"exit 2 without a 'necktool: error:' line: {outcome.stderr[:200]!r}"
        if len(lines) > MAX_ERROR_LINES:
            return f"an error of {len(lines)} lines"
    return None


# -- files ---------------------------------------------------------------------------------
class Files:
    """Hostile files, made once per directory and reused by every invocation."""

    def __init__(self, root: pathlib.Path, onnx_file: pathlib.Path | None) -> None:
        self.root = root
        self.paths: list[str] = []
        self.configs: list[str] = []
        self.onnx: list[str] = []
        self.weights: list[str] = []
        self.detectors: list[str] = []  # detector ONNX files whose necks differ from good.onnx's
        self.archives: list[str] = []  # .npz files with odd members, and folders of them
        self.images: list[str] = []  # folders of tiny, huge and odd-mode pictures
        self._make(onnx_file)
        self._make_archives()
        self._make_images()
        self._make_detectors()

    def _make_archives(self) -> None:
        """One .npz per oddity: the good shape for scrfd_0.5g, an encrypted member, a
        compression zipfile cannot read, a pickled object, a header claiming more than the
        file holds, other channels, other sizes, 1x1 levels, an integer array, NaN."""
        import io
        import zipfile

        import numpy as np

        rng = np.random.default_rng(0)
        folder = self.root / "npz"
        folder.mkdir(exist_ok=True)

        def save(name: str, arrays: dict[str, Any]) -> str:
            path = folder / name
            np.savez(path, **arrays)
            return str(path)

        def levels(channels: tuple[int, ...] = (72, 152, 288), side: int = 8,
                   dtype: Any = np.float32) -> dict[str, Any]:
            return {f"c{3 + i}": rng.random((1, c, side >> i or 1, side >> i or 1)).astype(dtype)
                    for i, c in enumerate(channels)}

        def patched(name: str, flags: int = 0, method: int | None = None) -> str:
            path = folder / name
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
                for key, array in levels().items():
                    buffer = io.BytesIO()
                    np.save(buffer, array)
                    archive.writestr(f"{key}.npy", buffer.getvalue())
            mark_zip_member(path, flags=flags, method=method)
            return str(path)

        nan = levels()
        nan["c3"][0, 0, 0, 0] = np.nan
        self.archives = [
            save("good.npz", levels()), patched("encrypted.npz", flags=1),
            patched("deflate64.npz", method=9), patched("lzma.npz", method=14),
            save("channels.npz", levels((16, 24, 32))), save("sizes.npz", levels(side=16)),
            save("tiny.npz", levels(side=1)), save("ints.npz", levels(dtype=np.int32)),
            save("nan.npz", nan), save("one.npz", {"x": np.ones((1, 72, 8, 8), np.float32)}),
            self._write("claims.npz", self._claiming_npz()),
            str(folder), *self.paths[:4]]
        with contextlib.suppress(ValueError):  # numpy refuses to write object arrays unpickled
            np.savez(folder / "objects.npz", c3=np.array([{"a": 1}], dtype=object))
            self.archives.append(str(folder / "objects.npz"))

    def _claiming_npz(self) -> bytes:
        """A member whose header claims a (10**6, 10**6) array in a few bytes."""
        import io
        import zipfile

        header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }"
        npy = b"\x93NUMPY\x01\x00" + len(header.ljust(118) + "\n").to_bytes(2, "little") + \
            (header.ljust(118) + "\n").encode()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("c3.npy", npy + b"\x00" * 16)
        return buffer.getvalue()

    def _make_images(self) -> None:
        """Folders of pictures: 1x1, 1x2000, 4000x3, palette with transparency, 16-bit
        grey, CMYK JPEG, 1-bit, LA, a truncated PNG, text named .png."""
        with contextlib.suppress(ImportError):
            from PIL import Image

            odd = self.root / "images_odd"
            odd.mkdir(exist_ok=True)
            Image.new("RGB", (1, 1), (9, 9, 9)).save(odd / "one.png")
            Image.new("RGB", (2000, 1)).save(odd / "wide.png")
            Image.new("L", (3, 4000)).save(odd / "tall.png")
            palette = Image.new("P", (40, 30))
            palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
            palette.save(odd / "palette.png", transparency=b"\x00\xff")
            Image.new("I;16", (50, 40)).save(odd / "grey16.png")
            Image.new("CMYK", (64, 64)).save(odd / "cmyk.jpg")
            Image.new("1", (70, 60)).save(odd / "bits.png")
            Image.new("LA", (64, 48)).save(odd / "la.png")
            tiny = self.root / "images_tiny"
            tiny.mkdir(exist_ok=True)
            for i in range(3):
                Image.new("RGB", (1 + i, 1), (i, i, i)).save(tiny / f"t{i}.png")
            broken = self.root / "images_broken"
            broken.mkdir(exist_ok=True)
            good = odd / "cmyk.jpg"
            (broken / "cut.jpg").write_bytes(good.read_bytes()[:200])
            (broken / "text.png").write_text("not a picture")
            normal = self.root / "images_normal"
            normal.mkdir(exist_ok=True)
            for i in range(3):
                Image.new("RGB", (128, 128), (40 * i, 80, 120)).save(normal / f"n{i}.png")
            self.images = [str(odd), str(tiny), str(broken), str(normal), *self.paths[:4]]

    def _make_detectors(self) -> None:
        """Small detectors (tests/detectors.py): SCRFD-like (another neck than good.onnx's)
        and RetinaFace-like, static and dynamic, and a classifier with no neck."""
        with contextlib.suppress(ImportError):
            import detectors

            scrfd = detectors.Detector(detectors.spec_of("scrfd3"))
            retina = detectors.Detector(detectors.spec_of("retinaface"))
            made = {"det_scrfd.onnx": detectors.export_torchscript(scrfd),
                    "det_scrfd_dynamic.onnx": detectors.export_torchscript(scrfd, dynamic=True),
                    "det_retina.onnx": detectors.export_torchscript(retina),
                    "classifier.onnx": detectors.export_plain(detectors.classifier())}
            self.detectors = [str(detectors.save(m, self.root / n)) for n, m in made.items()]

    def _write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def _make(self, onnx_file: pathlib.Path | None) -> None:
        rng = random.Random(0)
        noise = bytes(rng.randrange(256) for _ in range(2048))
        (self.root / "adir").mkdir(exist_ok=True)
        link = self.root / "dangling"
        if not link.is_symlink():
            link.symlink_to(self.root / "nowhere")
        self.paths = [str(self.root / "adir"), "/dev/null", str(link), str(self.root / "missing"),
                      str(self.root / ("n" * 300)), "", " ", "/proc/self/mem", "/",
                      self._write("noise.bin", noise), str(self.root / "missing" / "x.onnx")]
        good = ('[[budget]]\nneck = "scrfd_0.5g"\ninput-size = 64\nmax-gflops = 1\n'
                'levels = { P3 = { max-gflops = 0.5 } }\n')
        self.configs = [
            self._write("good.toml", good.encode()),
            self._write("latin1.toml", "# caf\xe9\n".encode("latin-1") + good.encode()),
            self._write("utf16.toml", good.encode("utf-16")),
            self._write("noise.toml", noise),
            self._write("nested.toml", b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
            self._write("bigint.toml", good.encode() + b"batch = " + b"9" * 5000 + b"\n"),
            self._write("typo.toml", good.replace("max-gflops = 1", "max-gflop = 1").encode()),
            self._write("types.toml", b'[[budget]]\nneck = 3\nmax-gflops = "a"\n'),
            self._write("huge.toml", b'[[budget]]\nneck = "pafpn"\nin-channels = '
                        b'[1000000000, 64, 64]\nmax-gflops = 1\n'),
            self._write("empty.toml", b""),
            self._write("pyproject.toml", b"[project]\nname = 'x'\n"),
            *self.paths[:4],
        ]
        self.weights = [self._write("noise.pth", noise), self._write("text.pt", b"hello"),
                        self._write("w.safetensors", noise), *self.paths[:4]]
        with contextlib.suppress(ImportError):
            import torch

            self.weights += [
                self._write_torch("ints.pth", {"output1.0.weight": torch.ones(2, 2,
                                                                              dtype=torch.int64)}),
                self._write_torch("nested.pth", {"state_dict": {"a": {"b": [1, 2]}}}),
                self._write_torch("empty.pth", {}),
                self._write_torch("list.pth", [torch.zeros(1)]),
            ]
        self.onnx = [*self.paths[:4], self._write("noise.onnx", noise)]
        if onnx_file is not None:
            self.onnx.append(str(onnx_file))
            self.onnx += [self._damaged(onnx_file, key, value) for key, value in (
                ("spec", "null"), ("spec", "[1, 2]"), ("spec", "[" * 4000 + "]" * 4000),
                ("spec", json.dumps({"family": "pafpn", "in_channels": [10**9, 64, 64],
                                     "out_channels": 10**9})),
                ("spec", json.dumps({"family": "custom", "factory": "os:system",
                                     "in_channels": [8, 8], "out_channels": 8})),
                ("input_size", "99999999x9"), ("batch", "9" * 400), ("weights", "{}"),
                ("dynamic", "7"), ("opset", "x"), ("version", "x" * 100000))]

    def _write_torch(self, name: str, obj: Any) -> str:
        import torch

        path = self.root / name
        torch.save(obj, path)
        return str(path)

    def _damaged(self, source: pathlib.Path, key: str, value: str) -> str:
        import onnx

        model = onnx.load(str(source))
        for prop in model.metadata_props:
            if prop.key == f"necktool.{key}":
                prop.value = value
        path = self.root / f"damaged_{key}_{abs(hash(value)) % 10**6}.onnx"
        onnx.save(model, str(path))
        return str(path)


# -- invocations --------------------------------------------------------------------------
def _options(command: str) -> list[tuple[str, bool, str]]:
    """``(flag, is_flag, metavar)`` for every option of a command, read off Typer."""
    out = []
    for param in load_command(command).params:
        if param.param_type_name != "option" or "--help" in param.opts:
            continue
        flag = next(o for o in param.opts if o.startswith("--"))
        out.append((flag, bool(getattr(param, "is_flag", False)), param.metavar or ""))
    return out


def _value(flag: str, metavar: str, rng: random.Random, files: Files) -> str:
    pools: dict[str, list[str]] = {
        "HxW": SIZES, "C3,C4,...": CHANNELS, "TOL": TOLERANCES, "PCT": PERCENTS,
        "SIZES": SIZE_LISTS, "NECK": NECKS, "SIZE": ["64G", "1k", "none", "-1", "x", "1e3T"],
        "fp32,fp16,int8": ["fp32", "fp16,int8", "fp32,fp16,int8", "int8,int8", "fp8", ",",
                           "fp16,", "", " fp16 ", "FP16", "int8;fp16"],
    }
    if flag in ("--config",):
        pool = files.configs
    elif flag in ("--weights",):
        pool = files.weights + files.detectors
    elif flag in ("--against", "--backbone"):
        pool = files.detectors + files.onnx
    elif flag == "--calibration-data":
        pool = files.archives
    elif flag == "--images":
        pool = files.images or files.paths
    elif metavar in ("PATH", "FILE") or flag in ("--output", "--plot", "--save-baseline",
                                                    "--baseline"):
        pool = [*files.paths, str(files.root / "out.onnx"), str(files.root / "p.png"),
                str(files.root / "b.json"), str(files.root / "p.svg"), str(files.root / "p.gif")]
    elif metavar in pools:
        pool = pools[metavar]
    elif metavar.startswith("["):
        pool = [*metavar.strip("[]").split("|"), *WORDS]
    elif metavar in ("N", "G", "X", "SLOPE"):
        pool = NUMBERS
    else:
        pool = WORDS + NUMBERS
    return rng.choice(pool) if rng.random() < 0.9 else rng.choice(NUMBERS + WORDS + SIZES)


_OPTIONS: dict[str, list[tuple[str, bool, str]]] = {}


def invocation(seed: int, files: Files) -> Invocation:
    rng = random.Random(seed)
    command = rng.choice(list(COMMANDS))
    options = _OPTIONS.setdefault(command, _options(command))
    args = [command]
    if command in ("profile", "sweep"):
        args += [rng.choice(NECKS) for _ in range(rng.choice([1, 1, 2]))]
    elif command == "export" and rng.random() < 0.2:
        pass  # no NECK: every budget entry of the config (--config, or none found: exit 2)
    elif command in ("export", "bench"):
        args.append(rng.choice(NECKS))
    elif command == "verify":
        args.append(rng.choice(files.onnx))
    elif command == "inspect":
        args.append(rng.choice(files.weights + files.onnx))
    elif command == "list" and rng.random() < 0.7:
        args.append(rng.choice(NECKS))
    for flag, is_flag, metavar in rng.sample(options, k=min(len(options), rng.randint(0, 4))):
        args.append(flag)
        if not is_flag:
            args.append(_value(flag, metavar, rng, files))
    if command in ("verify", "export") and files.detectors and rng.random() < 0.25:
        # the pairs: a neck file against a detector, images through a detector as backbone
        det = rng.choice(files.detectors)
        if command == "verify" and rng.random() < 0.5:
            args += ["--against", det] + (["--images", rng.choice(files.images)]
                                          if files.images and rng.random() < 0.5 else [])
        elif files.images:
            args += ["--images", rng.choice(files.images), "--backbone", det]
            if command == "export":
                args += ["--precision", rng.choice(["int8", "fp16"])] + (
                    ["--static", "--input-size", rng.choice(["64", "128", "96x64"])]
                    if rng.random() < 0.5 else [])
    if command == "check" and rng.random() < 0.2:  # the success path too, with one option
        args = ["check", "--config", files.configs[0], *args[1:3]]
    if command == "export" and "--output" not in args and "-o" not in args:
        # never write into the working directory (with no NECK, -o names a directory)
        args += ["-o", str(files.root / ("out.onnx" if len(args) > 1 and
                                         not args[1].startswith("-") else "adir"))]
    if rng.random() < 0.05:
        args.insert(0, rng.choice(["--max-memory", "--version"]))
        if args[0] == "--max-memory":
            args.insert(1, rng.choice(["64G", "1k", "none", "lots", ""]))
    return Invocation(seed, args)


@contextlib.contextmanager
def fuzz_environment(root: pathlib.Path) -> Iterator[None]:
    """The working directory, a memory limit that refuses large work quickly, and the
    exporter stubbed (see the module docstring)."""
    import torch.onnx

    def stub(*args: object, **kwargs: object) -> None:
        raise RuntimeError("fuzz: the exporter is stubbed out")

    import tempfile

    real_export, cwd = torch.onnx.export, os.getcwd()
    old_tmp = os.environ.get("TMPDIR")
    os.environ["NECKTOOL_MAX_MEMORY"] = "2G"
    (root / "tmp").mkdir(exist_ok=True)  # $TMPDIR: what is left there is debris (leftovers)
    os.environ["TMPDIR"] = str(root / "tmp")
    tempfile.tempdir = None
    torch.onnx.export = stub  # type: ignore[assignment]
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(cwd)
        torch.onnx.export = real_export
        os.environ.pop("NECKTOOL_MAX_MEMORY", None)
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp
        tempfile.tempdir = None


def leftovers(root: pathlib.Path) -> list[str]:
    """What the invocations left in the fuzz environment's ``$TMPDIR``."""
    folder = root / "tmp"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def execute(inv: Invocation) -> Outcome:
    result = CliRunner().invoke(app, inv.args)
    return Outcome(result.exit_code, result.stdout, result.stderr, result.exception)
