"""The memory limit (necktool.spec.resources): work that cannot fit is refused with the
figure, before any tensor is made; the limit is a flag or an environment variable."""

from __future__ import annotations

import json
import re

import pytest
from _cli import SMALL, run


# -- memory -------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["profile", "pafpn", "--in-channels", "4096,4096,4096", "--out-channels", "4096",
     "--input-size", "8192", "--batch", "64"],
    ["profile", "scrfd_34g", "--batch", "1000"],
    ["export", "fpn", "--in-channels", "16384,16384,16384", "--out-channels", "16384"],
])
def test_work_that_cannot_fit_is_refused_with_the_figure(args: list[str]) -> None:
    code, out, err = run(*args, env={"NECKTOOL_MAX_MEMORY": "16G"})
    assert code == 2 and out == ""
    assert re.search(r"needs about [0-9.]+ (GB|TB) of memory; the limit 16G", err), err
    assert err.count("\n") == 1


def test_the_memory_limit_is_a_flag_or_an_environment_variable() -> None:
    code, _, err = run("--max-memory", "100k", "profile", "scrfd_0.5g", *SMALL)
    assert code == 2 and "needs about" in err and "the limit 100k" in err
    code, _, err = run("profile", "scrfd_0.5g", *SMALL, env={"NECKTOOL_MAX_MEMORY": "100k"})
    assert code == 2 and "the limit 100k" in err
    code, out, err = run("--max-memory", "none", "profile", "scrfd_0.5g", *SMALL, "--json")
    assert code == 0 and json.loads(out)["neck"] == "scrfd_0.5g"
    code, _, err = run("--max-memory", "lots", "list")
    assert code == 2 and "cannot read 'lots' as a memory size" in err
