"""Expert record byte layout, prefix reads, zero-copy views, float32 scheme."""
import numpy as np
import pytest

from edgemoe.errors import ConfigError, CorruptRecordError, PackageError
from edgemoe.quant import (
    QuantSpec,
    decode_record,
    dequantize,
    encode_record,
    pack_plane,
    quantize,
    record_layout,
    record_views,
    split_planes,
)

SHAPES = {"gate_up": (96, 200), "down": (200, 48)}  # K=200 is not a multiple of the group size


def _expert(seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return {m: (rng.standard_t(4, size=s) * 0.02).astype(np.float32) for m, s in shapes.items()}


SPECS = [QuantSpec(), QuantSpec((4, 8), 128, "float32"), QuantSpec((2, 4, 6, 8), 16), QuantSpec((8,), 32)]


@pytest.mark.parametrize("spec", SPECS + [QuantSpec.float32()])
def test_layout_alignment_and_order(spec):
    lay = record_layout(SHAPES, spec)
    assert len(lay.chunks) == len(spec.ladder)
    assert lay.matrices == (("gate_up", 96, 200), ("down", 200, 48))
    end = 0
    for i, c in enumerate(lay.chunks, start=1):
        assert c.index == i and c.bits == spec.ladder[i - 1] and c.width == spec.plane_widths[i - 1]
        assert c.offset == end and c.offset % 4096 == 0 and c.length % 4096 == 0 and c.length > 0
        prev_end = c.offset
        for t in c.tensors:
            assert t.offset % 64 == 0 and t.offset >= prev_end  # in order, no overlap
            assert t.nbytes == int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
            prev_end = t.offset + t.nbytes
        assert prev_end <= c.offset + c.length
        end = c.offset + c.length
    assert lay.length == end
    prefixes = [lay.prefix_length(b) for b in spec.ladder]
    assert prefixes == sorted(prefixes) and prefixes[-1] == lay.length
    assert all(lay.resident_bytes(b) == lay.prefix_length(b) for b in spec.ladder)


def test_chunk_contents_follow_spec():
    spec = QuantSpec()
    lay = record_layout(SHAPES, spec)
    c2 = lay.chunk_for(4)
    assert c2.index == 2
    assert [t.name for t in c2.tensors] == [
        "gate_up.scale.k4", "down.scale.k4", "gate_up.offset.k4", "down.offset.k4", "gate_up.plane.p2", "down.plane.p2",
    ]
    s = lay.slot("gate_up", "scale", 4)
    assert (s.dtype, s.shape) == ("float16", (96, 4))
    p = lay.slot("down", "plane", 8)
    assert (p.name, p.dtype, p.shape) == ("down.plane.p3", "uint8", (200, 1, 32))
    with pytest.raises(ConfigError, match="matrices"):
        lay.slot("up", "scale", 4)
    with pytest.raises(ConfigError, match="valid levels"):
        lay.prefix_length(3)


def test_layout_is_pure_and_sized_right():
    spec = QuantSpec()
    lay = record_layout({"w": (64, 128)}, spec)
    assert lay == record_layout({"w": (64, 128)}, spec)
    # chunk 1: scales 64*2*2 B, offsets the same, 2-bit plane 64*128/4 B; all inside one page
    assert lay.chunks[0].tensors[2].offset == 512 and lay.chunks[0].tensors[2].nbytes == 2048
    assert lay.prefix_length(2) == 4096 and lay.prefix_length(4) == 2 * 4096
    # chunk 3: 512 B of scales/offsets + a 4-bit plane of 4096 B spills into a second page
    assert lay.chunks[2].tensors[2].offset == 2 * 4096 + 512 and lay.length == 4 * 4096


def test_record_layout_rejects_bad_matrices():
    with pytest.raises(ConfigError, match="without '.'"):
        record_layout({"a.b": (2, 2)}, QuantSpec())
    with pytest.raises(ConfigError, match="N, K >= 1"):
        record_layout({"w": (0, 64)}, QuantSpec())
    with pytest.raises(ConfigError, match="at least one"):
        record_layout({}, QuantSpec())


@pytest.mark.parametrize("spec", SPECS)
def test_prefix_decode_equals_reference(spec):
    ws = _expert()
    chunks, lay = encode_record(ws, spec)
    assert [len(c) for c in chunks] == [c.length for c in lay.chunks]
    assert lay == record_layout(SHAPES, spec)
    record = b"".join(chunks)
    for bits in spec.ladder:
        out = decode_record(record[: lay.prefix_length(bits)], lay, bits)
        assert list(out) == list(ws)
        for m, w in ws.items():
            assert out[m].dtype == np.float32 and out[m].shape == w.shape
            np.testing.assert_array_equal(out[m], dequantize(quantize(w, spec), bits))


def test_short_buffer_is_a_clear_error():
    ws = _expert()
    chunks, lay = encode_record(ws, QuantSpec())
    record = b"".join(chunks)
    decode_record(record[: lay.prefix_length(2)], lay, 2)
    with pytest.raises(CorruptRecordError, match=f"needs the first {lay.prefix_length(4)} bytes"):
        decode_record(record[: lay.prefix_length(4) - 1], lay, 4)
    with pytest.raises(PackageError):
        record_views(chunks[0][:100], lay, 2)


def test_bytes_are_the_packed_planes_and_scales():
    spec = QuantSpec()
    ws = _expert(1)
    chunks, lay = encode_record(ws, spec)
    record = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    qm = quantize(ws["down"], spec)
    planes = split_planes(qm.codes, spec)
    s = lay.slot("down", "plane", 4)
    got = record[s.offset : s.offset + s.nbytes].reshape(s.shape)
    np.testing.assert_array_equal(got, pack_plane(planes[1], 2, 64))
    s = lay.slot("down", "offset", 8)
    np.testing.assert_array_equal(record[s.offset : s.offset + s.nbytes].view("<f2").reshape(s.shape), qm.offsets[8])
    # padding between tensors and at the end of chunks is zero
    used = np.zeros(lay.length, dtype=bool)
    for c in lay.chunks:
        for t in c.tensors:
            used[t.offset : t.offset + t.nbytes] = True
    assert not record[~used].any()


def test_views_are_zero_copy():
    spec = QuantSpec()
    chunks, lay = encode_record(_expert(), spec)
    buf = np.frombuffer(bytearray(b"".join(chunks)), dtype=np.uint8)
    views = record_views(buf, lay, 4)
    assert set(views) == {(m, r, b) for m in SHAPES for r in ("scale", "offset", "plane") for b in (2, 4)}
    v = views[("gate_up", "plane", 2)]
    assert v.shape == (96, 4, 16) and np.shares_memory(v, buf)
    s = lay.slot("gate_up", "plane", 2)
    buf[s.offset] ^= 0xFF  # a write through the buffer shows in the view
    assert v.reshape(-1)[0] == buf[s.offset]
    # memoryview and bytes work too, for any level
    assert len(record_views(memoryview(b"".join(chunks)), lay, 8)) == 3 * 3 * 2


def test_float32_scheme_round_trips_exactly():
    spec = QuantSpec.float32()
    ws = _expert(2)
    chunks, lay = encode_record(ws, spec)
    assert len(chunks) == 1 and lay.chunks[0].bits == 32
    s = lay.slot("down", "weight", 32)
    assert (s.name, s.dtype, s.shape) == ("down.weight", "float32", (200, 48))
    out = decode_record(chunks[0], lay, 32)
    for m, w in ws.items():
        np.testing.assert_array_equal(out[m], w)
    views = record_views(chunks[0], lay, 32)
    np.testing.assert_array_equal(views[("gate_up", "weight", 32)], ws["gate_up"])
