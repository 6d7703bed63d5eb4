"""Run every documented example and keep the pages' sample outputs true.

    python scripts/docs.py --check     # CI: exit 1 when a page is out of date or an example fails
    python scripts/docs.py --write     # regenerate the sample outputs in place

What is run, per page (README.md, docs/**/*.md), in a scratch directory of its own, in page
order (so a page can build a file in one example and use it in the next):

* ``<!-- docs: CMD -->`` followed by a fenced block: CMD runs under bash and the block is
  its output (stdout; add ``2>&1`` for both). A trailing ``# exit=N`` says the exit code
  the page documents (default 0); ``# vary=NAME,...`` names the machine-dependent values
  that are normalised before comparing (see :data:`VARY`); the page must say in words that
  those figures depend on the machine.
* every line of a ```` ```bash ```` block that starts with ``necktool`` (with its
  backslash-continued lines): run, and must exit 0 (or the ``# exit=N`` at its end). A
  line that needs what the page cannot make says so with ``# docs: skip (REASON)``.
* every ```` ```python ```` block: run with the package importable; must not raise.

Commands run with ``COLUMNS=88`` and no terminal (tables in plain text, no colour), the
repository root importable (``examples.custom_neck:BiFPN``), and the scratch directory as
the working directory (a path printed inside it is shown as ``./``). The repository's
``examples/`` folder is copied into each scratch directory, so ``--config
examples/necktool.toml`` works as in a checkout and nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import difflib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
WIDTH = 88
TIMEOUT = 600

MARKER = re.compile(r"^<!-- docs: (?P<cmd>.*?) -->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
_OPT = r"(?:exit=\d+|vary=[\w,-]+)"
OPTIONS = re.compile(rf"\s+#\s*(?P<opts>{_OPT}(?:\s+{_OPT})*)\s*$")
SKIP = re.compile(r"#\s*docs:\s*skip\b")

#: what varies from machine to machine, and how it is normalised before comparing
VARY: dict[str, tuple[re.Pattern[str], str]] = {
    # latencies and durations: 12.3 ms, 0.84 s, 1.2e-03 s, 3.1x
    "timings": (re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?\s?(?:ms|µs|us|s|x)\b"), "<time>"),
    # GFLOP/s and other throughput figures
    "throughput": (re.compile(r"\d[\d,]*(?:\.\d+)?(?= ?GFLOP/s)"), "<rate>"),
    # the memory a machine has available
    "memory": (re.compile(r"\d+(?:\.\d+)? ?[KMGT]i?B available"), "<memory> available"),
    # reduced-precision errors depend on the CPU's kernels (fp16/int8 rounding paths)
    "errors": (re.compile(r"\d\.\d+e[-+]\d+|\d+\.\d+ dB"), "<err>"),
    # every decimal figure (a bench table's latency cells carry no unit): 24.87, 1.0-13.1
    "latency": (re.compile(r"\d+\.\d+(?:e[-+]?\d+)?"), "<n>"),
}
#: with any vary=, a table's column widths follow the figures: runs of spaces and rules
#: collapse before comparing
LAYOUT = re.compile(r"[ ─━]{2,}")


@dataclass
class Example:
    page: str
    line: int  # 1-based line of the command
    kind: str  # "output", "bash" or "python"
    command: str
    exit_code: int = 0
    vary: tuple[str, ...] = ()
    block: tuple[int, int] | None = None  # the output block's content lines [start, end)


def parse_options(command: str) -> tuple[str, int, tuple[str, ...]]:
    match = OPTIONS.search(command)
    if not match:
        return command.strip(), 0, ()
    exit_code, vary = 0, ()
    for opt in match.group("opts").split():
        key, _, value = opt.partition("=")
        if key == "exit":
            exit_code = int(value)
        else:
            vary = tuple(v for v in value.split(",") if v)
            unknown = set(vary) - set(VARY)
            if unknown:
                raise SystemExit(f"unknown vary= names {sorted(unknown)}; known: {sorted(VARY)}")
    return command[:match.start()].strip(), exit_code, vary


def examples(page: str, lines: list[str]) -> Iterator[Example]:
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        if marker:
            fence = i + 1
            if fence >= len(lines) or not FENCE.match(lines[fence]):
                raise SystemExit(f"{page}:{i + 1}: a docs marker must precede a fenced block")
            end = next(j for j in range(fence + 1, len(lines)) if lines[j].startswith("```"))
            cmd, code, vary = parse_options(marker.group("cmd"))
            yield Example(page, i + 1, "output", cmd, code, vary, (fence + 1, end))
            i = end + 1
            continue
        fence = FENCE.match(lines[i])
        if fence and fence.group("lang") in ("bash", "python"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            body = lines[i + 1:end]
            if fence.group("lang") == "python":
                yield Example(page, i + 2, "python", "\n".join(body))
            else:
                k = 0
                while k < len(body):
                    first, text = k, body[k]
                    while text.endswith("\\") and k + 1 < len(body):  # a continued line
                        k += 1
                        text = text[:-1] + " " + body[k].strip()
                    k += 1
                    if text.startswith("necktool") and not SKIP.search(text):
                        cmd, code, vary = parse_options(text)
                        yield Example(page, i + 2 + first, "bash", cmd, code, vary)
            i = end + 1
            continue
        i += 1


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORCE_COLOR", "PYTEST"))}
    env.update(COLUMNS=str(WIDTH), NO_COLOR="1", TERM="dumb",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    env["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent), env["PATH"]])
    return env


def run(example: Example, cwd: pathlib.Path) -> tuple[int, str, str]:
    if example.kind == "python":
        argv = [sys.executable, "-c", example.command]
    else:
        argv = ["bash", "-c", example.command]
    proc = subprocess.run(argv, cwd=cwd, env=environment(), capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    out = proc.stdout.replace(str(cwd) + os.sep, "./").replace(str(cwd), ".")
    return proc.returncode, out, proc.stderr


def normalise(text: str, vary: tuple[str, ...]) -> str:
    for name in vary:
        pattern, replacement = VARY[name]
        text = pattern.sub(replacement, text)
    if vary:
        text = LAYOUT.sub(" ", text)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def process(page: str, write: bool, only: str | None) -> list[str]:
    path = ROOT / page
    lines = path.read_text().splitlines()
    problems: list[str] = []
    replacements: list[tuple[int, int, list[str]]] = []
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="necktool-docs-"))
    shutil.copytree(ROOT / "examples", scratch / "examples",
                    ignore=shutil.ignore_patterns("__pycache__", ".necktool_cache"))
    try:
        for ex in examples(page, lines):
            if only and only not in ex.command:
                continue
            where = f"{page}:{ex.line}"
            print(f"{where}: {ex.command.splitlines()[0][:90]}", file=sys.stderr)
            code, out, err = run(ex, scratch)
            if code != ex.exit_code:
                tail = (err.strip().splitlines() or ["(no stderr)"])[-1]
                problems.append(f"{where}: exit {code}, the page says {ex.exit_code}: {tail}")
                continue
            if ex.block is None:
                continue
            start, end = ex.block
            shown = "\n".join(lines[start:end])
            if normalise(shown, ex.vary) != normalise(out, ex.vary):
                if write:
                    new = [ln.rstrip() for ln in out.rstrip("\n").splitlines()]
                    replacements.append((start, end, new))
                else:
                    diff = difflib.unified_diff(shown.splitlines(), out.rstrip("\n").splitlines(),
                                                "page", "command", lineterm="", n=1)
                    problems.append(f"{where}: output differs from the page:\n"
                                    + "\n".join(list(diff)[:40]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for start, end, new in sorted(replacements, reverse=True):
        lines[start:end] = new
    if replacements:
        path.write_text("\n".join(lines) + "\n")
        print(f"{page}: {len(replacements)} sample output(s) regenerated", file=sys.stderr)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail when a page is out of date")
    mode.add_argument("--write", action="store_true", help="regenerate sample outputs")
    parser.add_argument("pages", nargs="*", default=PAGES, help="pages (default: all)")
    parser.add_argument("--only", help="run only examples whose command contains this text")
    args = parser.parse_args()
    problems = [p for page in args.pages for p in process(page, args.write, args.only)]
    for problem in problems:
        print(problem)
    print(f"docs: {len(problems)} problem(s) in {len(args.pages)} page(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
