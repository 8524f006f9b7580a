"""The per-plane product algebra equals the reference level-k product."""
import numpy as np
import pytest

from edgemoe.errors import ConfigError
from edgemoe.quant import (
    QuantSpec,
    dequantize,
    level_affine,
    matmul_from_planes,
    matmul_reference,
    pack_plane,
    quantize,
    split_planes,
)


def _packed(qm):
    spec = qm.spec
    return [pack_plane(q, w, spec.group_size) for q, w in zip(split_planes(qm.codes, spec), spec.plane_widths)]


@pytest.mark.parametrize("ladder", [(2, 4, 8), (4, 8), (2, 4, 6, 8), (8,)])
@pytest.mark.parametrize("k", [128, 100])
def test_planes_product_matches_reference(ladder, k):
    rng = np.random.default_rng(k)
    spec = QuantSpec(ladder=ladder, group_size=32)
    w = (rng.standard_t(4, size=(24, k)) * 0.02).astype(np.float32)
    x = rng.normal(size=(5, k)).astype(np.float32)
    qm = quantize(w, spec)
    planes = _packed(qm)
    for bits in ladder:
        ref = matmul_reference(x, qm, bits)
        np.testing.assert_allclose(ref, x @ dequantize(qm, bits).T, rtol=0, atol=0)
        got = matmul_from_planes(x, planes, qm.scales, qm.offsets, bits, spec, k)
        assert got.shape == (5, 24) and got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
        # per-level arrays work as well as the per-level mappings, and extra planes are ignored
        used = planes[: spec.level_index(bits) + 1]
        got2 = matmul_from_planes(x, used, qm.scales[bits], qm.offsets[bits], bits, spec, k)
        np.testing.assert_array_equal(got, got2)


def test_lower_levels_never_touch_later_planes():
    spec = QuantSpec()
    rng = np.random.default_rng(0)
    qm = quantize(rng.normal(size=(8, 64)).astype(np.float32), spec)
    x = rng.normal(size=(2, 64)).astype(np.float32)
    planes = _packed(qm)
    garbage = [planes[0], np.full_like(planes[1], 0xFF), np.full_like(planes[2], 0xFF)]
    np.testing.assert_array_equal(
        matmul_from_planes(x, garbage, qm.scales, qm.offsets, 2, spec, 64),
        matmul_from_planes(x, planes, qm.scales, qm.offsets, 2, spec, 64),
    )


def test_level_affine():
    spec = QuantSpec()
    a = np.array([[0.5]], np.float16)
    b = np.array([[0.25]], np.float16)
    scales, bias = level_affine(a, b, 8, spec)
    assert [float(s[0, 0]) for s in scales] == [0.5 * 64, 0.5 * 16, 0.5]
    assert float(bias[0, 0]) == 0.25 - 0.5 * 128


def test_matmul_from_planes_errors():
    spec = QuantSpec()
    qm = quantize(np.ones((2, 64), np.float32), spec)
    planes = _packed(qm)
    with pytest.raises(ConfigError, match="needs 3 planes"):
        matmul_from_planes(np.ones((1, 64)), planes[:2], qm.scales, qm.offsets, 8, spec, 64)
    with pytest.raises(ConfigError, match=r"x must be \[T, 64\]"):
        matmul_from_planes(np.ones((1, 63)), planes, qm.scales, qm.offsets, 8, spec, 64)


def test_level_affine_implicit_zero_points():
    """With MatMulNBits' implicit zero point 2**(w-1) per plane, the returned bias restores level k."""
    spec = QuantSpec(group_size=16)
    rng = np.random.default_rng(3)
    k = 40
    qm = quantize(rng.normal(size=(6, k)).astype(np.float32), spec)
    x = rng.normal(size=(2, k))
    xp = np.pad(x, ((0, 0), (0, 48 - k))).reshape(2, 3, 16)  # [T, G, gs]
    for i, bits in enumerate(spec.ladder):
        scales, bias = level_affine(qm.scales[bits], qm.offsets[bits], bits, spec, implicit_zero_points=True)
        y = xp.sum(axis=2) @ bias.T
        for q, s, w in zip(split_planes(qm.codes, spec)[: i + 1], scales, spec.plane_widths):
            centred = q.reshape(6, 3, 16).astype(np.float64) - 2 ** (w - 1)
            y += np.einsum("tgj,ngj,ng->tn", xp, centred, s)
        ref = matmul_reference(x.astype(np.float32), qm, bits)
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
