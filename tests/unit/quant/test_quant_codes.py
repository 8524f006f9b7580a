"""8-bit grid, per-level least-squares fits, decode and the min-max baseline."""
import numpy as np
import pytest

from edgemoe.errors import ConfigError
from edgemoe.quant import QuantSpec, dequantize, direct_minmax_rtn, quantize


def _weights(kind, shape, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return (rng.normal(size=shape) * 0.02).astype(np.float32)
    return (rng.standard_t(4, size=shape) * 0.02 / np.sqrt(2)).astype(np.float32)  # unit-variance t(4)


def _rel(a, w):
    return float(np.linalg.norm(a - w) / np.linalg.norm(w))


def test_shapes_and_dtypes():
    spec = QuantSpec(group_size=32)
    qm = quantize(_weights("gauss", (6, 70)), spec)
    assert qm.shape == (6, 70) and qm.codes.shape == (6, 96) and qm.codes.dtype == np.uint8
    for b in spec.ladder:
        assert qm.scales[b].shape == (6, 3) and qm.scales[b].dtype == np.float16
        assert qm.offsets[b].shape == (6, 3) and qm.offsets[b].dtype == np.float16
        out = dequantize(qm, b)
        assert out.shape == (6, 70) and out.dtype == np.float32


def test_codes_are_8bit_minmax_grid():
    w = _weights("gauss", (4, 64))
    qm = quantize(w, QuantSpec())
    lo, hi = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)
    expect = np.rint((w.astype(np.float64) - lo) / (hi - lo) * 255)
    np.testing.assert_array_equal(qm.codes, expect.astype(np.uint8))
    assert (qm.codes.min(axis=1) == 0).all() and (qm.codes.max(axis=1) == 255).all()


def test_padding_takes_no_part_in_fit():
    spec = QuantSpec(group_size=64, scale_dtype="float32")
    w = _weights("t", (8, 70), seed=3)
    full, tail = quantize(w, spec), quantize(w[:, 64:], spec)
    assert (full.codes[:, 70:] == 0).all()
    np.testing.assert_array_equal(full.codes[:, 64:70], tail.codes[:, :6])
    for b in spec.ladder:
        np.testing.assert_array_equal(full.scales[b][:, 1], tail.scales[b][:, 0])
        np.testing.assert_array_equal(full.offsets[b][:, 1], tail.offsets[b][:, 0])


def test_scales_are_least_squares_fits():
    spec = QuantSpec(scale_dtype="float32")
    w = _weights("t", (3, 128), seed=5)
    qm = quantize(w, spec)
    for b in spec.ladder:
        u = (qm.codes >> (8 - b)).astype(np.float64) - 2 ** (b - 1)
        for n in range(3):
            for g in range(2):
                sl = slice(64 * g, 64 * g + 64)
                a, c = np.polyfit(u[n, sl], w[n, sl].astype(np.float64), 1)
                assert qm.scales[b][n, g] == pytest.approx(a, rel=1e-5)
                assert qm.offsets[b][n, g] == pytest.approx(c, rel=1e-4, abs=1e-7)


def test_offset_refit_after_scale_rounding():
    w = _weights("gauss", (16, 64), seed=9) + 0.05  # off-centre groups make b matter
    qm = quantize(w, QuantSpec(scale_dtype="float16"))
    for b in (2, 4, 8):
        a = qm.scales[b].astype(np.float64)
        u = (qm.codes >> (8 - b)).astype(np.float64) - 2 ** (b - 1)
        best_b = (w - a * u).mean(axis=1)  # optimal offset given the rounded scale
        np.testing.assert_array_equal(qm.offsets[b][:, 0], best_b.astype(np.float16))


def test_constant_groups():
    w = np.zeros((3, 128), dtype=np.float32)
    w[1, :64] = 0.375
    w[2, 64:] = -1.25
    qm = quantize(w, QuantSpec(scale_dtype="float32"))
    assert (qm.codes == 0).all()
    for b in (2, 4, 8):
        assert (qm.scales[b] == 0).all()
        np.testing.assert_array_equal(dequantize(qm, b), w)


def test_decode_formula_is_exact():
    spec = QuantSpec(group_size=16)
    w = _weights("t", (5, 40), seed=2)
    qm = quantize(w, spec)
    for b in spec.ladder:
        ck = (qm.codes >> (8 - b)).reshape(5, 3, 16).astype(np.float32) - np.float32(2 ** (b - 1))
        manual = qm.scales[b].astype(np.float32)[..., None] * ck + qm.offsets[b].astype(np.float32)[..., None]
        np.testing.assert_array_equal(dequantize(qm, b), manual.reshape(5, 48)[:, :40])


def test_quantize_is_deterministic():
    w = _weights("gauss", (32, 192))
    a, b = quantize(w, QuantSpec()), quantize(w.copy(), QuantSpec())
    np.testing.assert_array_equal(a.codes, b.codes)
    for k in (2, 4, 8):
        np.testing.assert_array_equal(dequantize(a, k), dequantize(b, k))


@pytest.mark.parametrize("kind", ["gauss", "t"])
def test_error_decreases_with_level(kind):
    w = _weights(kind, (64, 256))
    qm = quantize(w, QuantSpec(ladder=(2, 4, 6, 8)))
    errs = [_rel(dequantize(qm, b), w) for b in (2, 4, 6, 8)]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 0.01


@pytest.mark.parametrize("kind", ["gauss", "t"])
@pytest.mark.parametrize("gs", [64, 128])
@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
def test_levels_match_or_beat_direct_minmax(kind, gs, scale_dtype):
    w = _weights(kind, (128, 512), seed=gs)
    qm = quantize(w, QuantSpec(group_size=gs, scale_dtype=scale_dtype))
    ratio = {b: _rel(dequantize(qm, b), w) / _rel(direct_minmax_rtn(w, b, gs), w) for b in (2, 4, 8)}
    assert all(r <= 1.02 for r in ratio.values()), ratio
    assert ratio[2] < 0.85, ratio  # level 2 clearly better than direct 2-bit min-max


def test_direct_minmax_rtn():
    w = _weights("gauss", (4, 100))
    out = direct_minmax_rtn(w, 8, 64)
    assert out.shape == w.shape and out.dtype == np.float32
    step = (w[:, :64].max(axis=1) - w[:, :64].min(axis=1)) / 255
    assert (np.abs(out[:, :64] - w[:, :64]) <= step[:, None] * 0.5 + 1e-7).all()
    np.testing.assert_array_equal(direct_minmax_rtn(w[:, 64:], 4, 64), direct_minmax_rtn(w, 4, 64)[:, 64:])
    assert _rel(direct_minmax_rtn(w, 2, 64), w) > _rel(direct_minmax_rtn(w, 4, 64), w) > _rel(out, w)


def test_quantize_rejects_bad_input():
    with pytest.raises(ConfigError, match="2-D"):
        quantize(np.zeros(8, np.float32), QuantSpec())
    with pytest.raises(ConfigError, match="NaN"):
        quantize(np.full((2, 64), np.nan, np.float32), QuantSpec())
    with pytest.raises(ConfigError, match="matryoshka"):
        quantize(np.zeros((2, 64), np.float32), QuantSpec.float32())
    with pytest.raises(ConfigError, match="scale_dtype='float32'"):
        quantize(np.array([[0.0, 1e9] * 32], np.float32), QuantSpec())
    with pytest.raises(ConfigError, match="valid levels"):
        dequantize(quantize(np.ones((2, 64), np.float32), QuantSpec()), 3)


def test_large_matrix_in_row_blocks_matches_small():
    w = _weights("t", (600, 4096), seed=11)  # > one row block of the fitter
    qm = quantize(w, QuantSpec())
    part = quantize(w[550:], QuantSpec())
    np.testing.assert_array_equal(qm.codes[550:], part.codes)
    np.testing.assert_array_equal(qm.scales[2][550:], part.scales[2])
