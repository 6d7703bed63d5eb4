"""The default fp32 rule scales atol with each output's RMS: an exact export with large
outputs passes, a file with one damaged weight still fails."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from necktool.deploy.export import export_onnx
from necktool.deploy.tolerance import VerifyOptions
from necktool.deploy.verify import compare_arrays, verify_onnx
from necktool.necks.build import build_neck

NECK = "insightface_scrfd_34g"
SIZE = (96, 96)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """The issue's case: insightface_scrfd_34g with weights of standard deviation 0.1
    (outputs with an RMS of 10 to 400), exported without verification."""
    where = tmp_path_factory.mktemp("large")
    model = build_neck(NECK)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            state[key] = value.abs() + 0.5
        elif value.is_floating_point():
            state[key] = torch.randn(value.shape, generator=gen) * 0.1
        else:
            state[key] = value
    weights = where / "w.pt"
    torch.save(state, weights)
    path = where / "n.onnx"
    export_onnx(NECK, path, weights=weights, input_size=SIZE, verify=False)
    return path, weights


def test_an_exact_export_with_large_outputs_passes_by_default(large) -> None:
    path, weights = large
    report = verify_onnx(path, weights=weights, options=VerifyOptions(trials=1))
    v = report.verification
    assert v.passed, v.summary()
    assert v.options.atol_scaled and "x max(1, output RMS)" in v.summary()
    rms = [math.sqrt(o.signal / o.elements) for _, o in v.checks]
    assert max(rms) > 100  # large outputs ...
    assert v.max_abs > 1e-4  # ... whose float32 rounding exceeds the old absolute 1e-4 ...
    assert v.min_sqnr_db > 110  # ... while the export is exact to float32 rounding
    # an absolute atol the user gives is held as given: the same file fails 1e-4
    strict = verify_onnx(path, weights=weights, options=VerifyOptions(atol=1e-4, trials=1))
    assert not strict.passed and not strict.verification.options.atol_scaled


def test_one_damaged_weight_still_fails(large, tmp_path) -> None:
    path, weights = large
    proto = onnx.load(str(path))
    init = next(i for i in proto.graph.initializer
                if i.name.startswith("pafpn_convs") and len(i.dims) == 4)
    array = numpy_helper.to_array(init).copy()
    array.flat[0] = -array.flat[0] + 0.2  # one weight of ~0.1 off by ~0.2
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(proto, str(damaged))
    report = verify_onnx(damaged, weights=weights, options=VerifyOptions(trials=1))
    assert not report.passed, report.summary()
    assert "FAIL" in report.summary()


def test_the_scaled_atol_is_atol_times_the_rms_but_never_below_atol() -> None:
    ref = np.full(100, 300.0, np.float32)  # RMS 300
    near = ref + np.float32(0.02)  # within 1e-4 * 300 = 0.03 (rtol 0)
    far = ref + np.float32(0.04)
    assert compare_arrays("p", near, ref, 1e-4, 0.0, atol_scaled=True).passed
    assert not compare_arrays("p", far, ref, 1e-4, 0.0, atol_scaled=True).passed
    assert not compare_arrays("p", near, ref, 1e-4, 0.0).passed  # unscaled: absolute
    small = np.full(100, 0.01, np.float32)  # RMS 0.01 < 1: the atol stays 1e-4
    assert compare_arrays("p", small + np.float32(9e-5), small, 1e-4, 0.0,
                          atol_scaled=True).passed
    assert not compare_arrays("p", small + np.float32(2e-4), small, 1e-4, 0.0,
                              atol_scaled=True).passed


def test_scaling_is_the_fp32_default_only() -> None:
    from necktool.spec.precision import Precision

    assert VerifyOptions().resolved(Precision.FP32).atol_scaled
    assert not VerifyOptions().resolved(Precision.INT8).atol_scaled
    assert not VerifyOptions().resolved(Precision.FP16).atol_scaled
    assert not VerifyOptions(atol=1e-4).resolved(Precision.FP32).atol_scaled
    assert VerifyOptions(rtol=1e-3).resolved(Precision.FP32).atol_scaled


def test_export_of_the_large_neck_verifies_by_default(large, tmp_path) -> None:
    _, weights = large
    out = tmp_path / "again.onnx"
    result = export_onnx(NECK, out, weights=weights, input_size=SIZE,
                         options=VerifyOptions(trials=1), dynamic=False)
    assert result, result.failure()
    assert result.written and result.verification is not None
    assert result.verification.max_abs > 1e-4
