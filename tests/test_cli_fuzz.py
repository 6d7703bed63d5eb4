"""Every command and flag with hostile values, in process: a documented exit code, one
error line, never a traceback or an internal error. CI runs a bounded number of seeds
(NECKTOOL_FUZZ_EXAMPLES, default 150); ``python scripts/fuzz.py`` runs 10,000+."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest
from fuzzing import Files, execute, fuzz_environment, invocation, leftovers, verdict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from necktool.deploy.export import export_onnx

EXAMPLES = int(os.environ.get("NECKTOOL_FUZZ_EXAMPLES", "150"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    root = tmp_path_factory.mktemp("fuzz")
    onnx_file = root / "good.onnx"
    export_onnx("scrfd_0.5g", onnx_file, input_size=(64, 64))  # before the stub goes in
    made = Files(root, onnx_file)
    with fuzz_environment(root):
        yield made


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31))
def test_hostile_invocations_are_clean(files: Files, seed: int) -> None:
    inv = invocation(seed, files)
    outcome = execute(inv)
    problem = verdict(outcome)
    assert problem is None, f"{inv}: {problem}\n{outcome.stderr[-1500:]}"


def test_the_invocations_left_nothing_in_tmpdir(files: Files) -> None:
    """After the seeds above (pytest runs a module's tests in order)."""
    assert leftovers(files.root) == []
    assert files.detectors and files.archives and files.images  # the new surfaces were drawn


def test_the_verdict_catches_what_it_must(files: Files) -> None:
    from fuzzing import Outcome

    assert verdict(Outcome(0, "ok", "", None)) is None
    assert verdict(Outcome(2, "", "necktool: error: bad\n", None)) is None
    assert "traceback" in str(verdict(Outcome(1, "", "Traceback (most recent", None)))
    assert "internal error" in str(verdict(Outcome(70, "", "necktool: internal error", None)))
    assert "noise" in str(verdict(Outcome(0, "ok", "x.py:3: UserWarning: odd\n", None)))
    assert "raised" in str(verdict(Outcome(1, "", "", ValueError("x"))))
    assert "without a 'necktool: error:'" in str(verdict(Outcome(2, "", "Usage: ...", None)))
    assert "lines" in str(verdict(Outcome(2, "", "necktool: error: x\n" + "y\n" * 9, None)))
    assert pathlib.Path(files.root).is_dir()
