"""Plane packing (MatMulNBits byte order) and the nesting of plane codes."""
import numpy as np
import pytest

from edgemoe.errors import ConfigError
from edgemoe.quant import QuantSpec, join_planes, pack_plane, quantize, split_planes, unpack_plane


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("gs", [16, 64, 128])
def test_pack_unpack_round_trip(width, gs):
    rng = np.random.default_rng(width * gs)
    q = rng.integers(0, 1 << width, size=(5, 3 * gs), dtype=np.uint8)
    packed = pack_plane(q, width, gs)
    assert packed.shape == (5, 3, gs * width // 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_plane(packed, width, gs), q)


def test_lsb_first_byte_order():
    q = np.zeros((1, 16), dtype=np.uint8)
    q[0, :4] = [1, 2, 3, 0]  # 2-bit: element j at bits 2*(j%4)
    assert pack_plane(q, 2, 16)[0, 0, 0] == 1 | 2 << 2 | 3 << 4
    q4 = np.zeros((1, 16), dtype=np.uint8)
    q4[0, :2] = [0xA, 0x3]  # 4-bit: low nibble first
    assert pack_plane(q4, 4, 16)[0, 0, 0] == 0x3A
    q8 = np.arange(16, dtype=np.uint8)[None]
    np.testing.assert_array_equal(pack_plane(q8, 8, 16)[0, 0], q8[0])


def test_pack_rejects_bad_inputs():
    with pytest.raises(ConfigError, match=r"\(2, 4, 8\)"):
        pack_plane(np.zeros((1, 16), np.uint8), 3, 16)
    with pytest.raises(ConfigError, match="multiple of 16"):
        pack_plane(np.zeros((1, 20), np.uint8), 2, 16)
    with pytest.raises(ConfigError, match=r"\[N, G, 4\]"):
        unpack_plane(np.zeros((1, 2, 3), np.uint8), 2, 16)


@pytest.mark.parametrize("ladder", [(2, 4, 8), (4, 8), (2, 4, 6, 8), (4, 6, 8), (8,)])
def test_planes_nest(ladder):
    spec = QuantSpec(ladder=ladder, group_size=16)
    rng = np.random.default_rng(1)
    w = rng.normal(size=(7, 37)).astype(np.float32)  # K not a multiple of the group size
    qm = quantize(w, spec)
    assert qm.codes.shape == (7, 48)
    planes = split_planes(qm.codes, spec)
    packed = [pack_plane(q, wd, 16) for q, wd in zip(planes, spec.plane_widths)]
    for q, wd, pk in zip(planes, spec.plane_widths, packed):
        assert q.max() < (1 << wd)
        np.testing.assert_array_equal(unpack_plane(pk, wd, 16), q)
    unpacked = [unpack_plane(pk, wd, 16) for pk, wd in zip(packed, spec.plane_widths)]
    for bits in ladder:
        np.testing.assert_array_equal(join_planes(unpacked, bits, spec), qm.codes >> (8 - bits))
    # the top plane of the deepest level is the high bits of the 8-bit code
    np.testing.assert_array_equal(planes[0], qm.codes >> (8 - ladder[0]))


def test_join_planes_needs_enough_planes():
    spec = QuantSpec()
    with pytest.raises(ConfigError, match="needs 3 planes"):
        join_planes([np.zeros((1, 64), np.uint8)] * 2, 8, spec)
