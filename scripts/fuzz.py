"""Run the seeded fuzzer over many invocations and print the counts (``python
scripts/fuzz.py [N] [START]``, default 10,000 seeds from 0).

Prints, per command, how many invocations exited 0, 1, 2 and 130, and every one that
misbehaved (a traceback, an internal error, another exit code, an exception, or an
exit 2 without one 'necktool: error:' line). Exit status 1 if any did.
"""

from __future__ import annotations

import collections
import pathlib
import sys
import tempfile
import time
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from fuzzing import Files, execute, fuzz_environment, invocation, leftovers, verdict


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 10_000
    start = int(argv[1]) if len(argv) > 1 else 0
    warnings.simplefilter("ignore")
    from necktool.deploy.export import export_onnx

    codes: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    problems: list[str] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        export_onnx("scrfd_0.5g", root / "good.onnx", input_size=(64, 64))
        files = Files(root, root / "good.onnx")
        with fuzz_environment(root):
            for seed in range(start, start + count):
                inv = invocation(seed, files)
                outcome = execute(inv)
                codes[inv.args[0] if not inv.args[0].startswith("-") else "(root)"][
                    outcome.code] += 1
                problem = verdict(outcome)
                if problem:
                    problems.append(f"{inv}: {problem}")
                if (seed - start + 1) % 500 == 0:
                    print(f"... {seed - start + 1} invocations, {len(problems)} problems",
                          file=sys.stderr, flush=True)
            left = leftovers(root)
    seconds = time.perf_counter() - began
    print(f"{count} invocations (seeds {start}..{start + count - 1}) in {seconds:.0f} s")
    print(f"{'command':<10} {'total':>6} " + " ".join(f"{'exit ' + str(c):>8}"
                                                       for c in (0, 1, 2, 130)) + "  other")
    for command, counter in sorted(codes.items()):
        other = sum(n for c, n in counter.items() if c not in (0, 1, 2, 130))
        print(f"{command:<10} {sum(counter.values()):>6} " +
              " ".join(f"{counter[c]:>8}" for c in (0, 1, 2, 130)) + f"  {other:>5}")
    tracebacks = sum("traceback" in p for p in problems)
    internal = sum("internal error" in p for p in problems)
    print(f"problems: {len(problems)} (tracebacks {tracebacks}, internal errors {internal})")
    print(f"left in $TMPDIR: {len(left)}" + (f" ({', '.join(left[:10])})" if left else ""))
    if left:
        problems.append(f"left in $TMPDIR: {left}")
    for line in problems[:50]:
        print("  " + line[:400])
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
