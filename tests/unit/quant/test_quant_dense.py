"""int8 groups for the dense weights: the numpy reference, and onnxruntime's MatMulNBits on its bytes."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from edgemoe.errors import ConfigError
from edgemoe.package.onnx_util import MS_DOMAIN, GraphBuilder
from edgemoe.quant.dense import DenseQuant, dequantize_int8_groups, quantize_int8_groups


@pytest.mark.parametrize("k", [64, 100, 256])
def test_int8_groups_round_trip_within_half_a_step(k):
    rng = np.random.default_rng(k)
    w = rng.standard_normal((33, k)).astype(np.float32) * rng.uniform(0.01, 2, (33, 1)).astype(np.float32)
    codes, scales = quantize_int8_groups(w, 64)
    g = -(-k // 64)
    assert codes.shape == (33, g, 64) and codes.dtype == np.uint8 and scales.shape == (33, g)
    back = dequantize_int8_groups(codes, scales, k)
    step = np.repeat(scales, 64, axis=1)[:, :k]
    assert np.all(np.abs(back - w) <= step / 2 + 1e-7)
    # symmetric: every group's largest weight is exactly +-127 steps, padding is the zero code
    assert np.all(np.abs(codes.astype(int) - 128).max(axis=2) == 127)
    if k % 64:
        assert np.all(codes.reshape(33, -1)[:, k:] == 128)


def test_all_zero_group_stays_zero():
    w = np.zeros((2, 64), np.float32)
    w[1, 3] = 0.5
    codes, scales = quantize_int8_groups(w, 64)
    np.testing.assert_array_equal(dequantize_int8_groups(codes, scales, 64), w)


def test_matmulnbits_on_the_codes_matches_the_reference():
    """The bytes the exporter writes, run by onnxruntime, equal x @ dequantize(codes)^T."""
    rng = np.random.default_rng(1)
    n, k = 48, 128
    w = rng.standard_normal((n, k)).astype(np.float32)
    codes, scales = quantize_int8_groups(w, 32)
    b = GraphBuilder("g")
    b.input("x", TensorProto.FLOAT, ["T", k])
    y = b.op("MatMulNBits", "x", b.const(codes.reshape(n, -1), shape=codes.shape), b.const(scales),
             domain=MS_DOMAIN, K=k, N=n, bits=8, block_size=32, accuracy_level=0)
    b.output(y, "y", TensorProto.FLOAT, ["T", n])
    sess = ort.InferenceSession(b.model().SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((5, k)).astype(np.float32)
    ref = x @ dequantize_int8_groups(codes, scales, k).T
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("kw", [dict(dtype="int2"), dict(dtype="int8", group_size=48),
                                dict(dtype="int8", group_size=8)])
def test_bad_dense_settings_are_refused(kw):
    with pytest.raises(ConfigError):
        DenseQuant(**kw)


def test_manifest_entry_round_trips_and_defaults_to_float32():
    assert DenseQuant.from_dict(None) == DenseQuant()
    d = DenseQuant("int8", 128)
    assert DenseQuant.from_dict(d.to_dict()) == d
    assert d.bytes_per_weight == pytest.approx(1 + 4 / 128)
