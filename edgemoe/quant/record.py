"""The expert record: every matrix of one expert, bit-nested and laid out level-major.

Byte layout (offsets from the record start; all little-endian)::

    [chunk 1 | chunk 2 | ...]           chunk p serves level ladder[p-1]; each padded to 4096 bytes
    chunk p = for each matrix: scale a_k [N, G]      (scale_dtype)   name "<m>.scale.k<bits>"
              for each matrix: offset b_k [N, G]     (scale_dtype)   name "<m>.offset.k<bits>"
              for each matrix: plane p [N, G, gs*width/8] (uint8)   name "<m>.plane.p<p>"
    every tensor starts at a 64-byte aligned offset; gaps are zero.
    experts with biases (gpt-oss) also hold, at the start of chunk 1, each such matrix's bias
    [N] float32 (name "<m>.bias"): every level reads it, exactly.

Reading the prefix ``[0, prefix_length(bits))`` gives everything level ``bits`` needs; upgrading
reads only the next chunk. Scheme ``float32`` has one chunk (bits 32) of ``"<m>.weight" [N, K]`` float32.
Each level's scales sit in its own chunk (not a shared meta block as in DESIGN.md), so a level-2 read
does not pay for level-8 scales.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from edgemoe.errors import ConfigError, CorruptRecordError
from edgemoe.quant.codes import decode_level, quantize
from edgemoe.quant.planes import join_planes, pack_plane, split_planes, unpack_plane
from edgemoe.quant.spec import QuantSpec

TENSOR_ALIGN = 64
PAGE_SIZE = 4096
ROLES = ("scale", "offset", "plane", "weight", "bias")


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class TensorSlot:
    """One tensor in a record; ``offset`` is from the record start."""

    name: str
    matrix: str
    role: str  # "scale" | "offset" | "plane" | "weight"
    offset: int
    nbytes: int
    dtype: str  # numpy dtype name, little-endian
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ChunkLayout:
    """One page-aligned chunk; ``index`` is 1-based (chunk p serves level ``ladder[p-1]``)."""

    index: int
    bits: int  # level this chunk completes
    width: int  # bits its plane adds
    offset: int
    length: int  # padded to PAGE_SIZE
    tensors: tuple[TensorSlot, ...]


@dataclass(frozen=True)
class RecordLayout:
    """Where every tensor of an expert record lives; pure function of shapes and spec."""

    spec: QuantSpec
    matrices: tuple[tuple[str, int, int], ...]  # (name, N, K) in record order
    chunks: tuple[ChunkLayout, ...]
    biases: tuple[str, ...] = ()                 # matrices with a bias vector (in chunk 1)

    @property
    def length(self) -> int:
        """Total record bytes (all chunks, padding included)."""
        return self.chunks[-1].offset + self.chunks[-1].length

    def chunk_for(self, bits: int) -> ChunkLayout:
        """The chunk that completes level ``bits``."""
        return self.chunks[self.spec.level_index(bits)]

    def prefix_length(self, bits: int) -> int:
        """Bytes from the record start that hold everything level ``bits`` needs."""
        c = self.chunk_for(bits)
        return c.offset + c.length

    def resident_bytes(self, bits: int) -> int:
        """Bytes an expert held at level ``bits`` occupies (its prefix)."""
        return self.prefix_length(bits)

    def bias_slot(self, matrix: str) -> TensorSlot | None:
        """The bias [N] float32 of ``matrix`` (in chunk 1, read by every level), or None."""
        return next((t for t in self.chunks[0].tensors if t.matrix == matrix and t.role == "bias"), None)

    def slot(self, matrix: str, role: str, bits: int) -> TensorSlot:
        """Scale, offset or plane of level ``bits`` of ``matrix`` (or its ``"weight"`` for float32)."""
        for t in self.chunk_for(bits).tensors:
            if t.matrix == matrix and t.role == role:
                return t
        names = [m for m, _, _ in self.matrices]
        roles = ("weight",) if self.spec.scheme == "float32" else ("scale", "offset", "plane")
        raise ConfigError(f"no tensor ({matrix!r}, {role!r}); matrices: {names}, roles: {roles}")


def record_layout(matrices: Mapping[str, tuple[int, int]], spec: QuantSpec,
                  biases: tuple[str, ...] = ()) -> RecordLayout:
    """Compute the byte layout of an expert record from matrix shapes alone.

    Parameters
    ----------
    matrices : mapping of str to (N, K)
        The expert's matrices in record order, e.g. ``{"gate_up": (2*I, H), "down": (H, I)}``.
    spec : QuantSpec
    biases : names of the matrices that carry a bias vector [N] (float32, in chunk 1)

    Returns
    -------
    RecordLayout
    """
    mats = []
    for name, shape in matrices.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ConfigError(f"matrix name {name!r} must be a non-empty string without '.'")
        if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 1:
            raise ConfigError(f"matrix {name!r} needs a shape (N, K) with N, K >= 1, got {shape!r}")
        mats.append((name, int(shape[0]), int(shape[1])))
    if not mats:
        raise ConfigError("an expert record needs at least one matrix")
    unknown = [b for b in biases if b not in {m for m, _, _ in mats}]
    if unknown:
        raise ConfigError(f"biases {unknown} name no matrix of the record")
    gs = spec.group_size
    sdt = np.dtype(spec.scale_dtype)
    chunks, start = [], 0
    for p, (bits, width) in enumerate(zip(spec.ladder, spec.plane_widths), start=1):
        entries = []  # (name, matrix, role, dtype, shape)
        if p == 1:
            entries += [(f"{m}.bias", m, "bias", np.dtype(np.float32), (n,)) for m, n, _ in mats if m in biases]
        if spec.scheme == "float32":
            entries += [(f"{m}.weight", m, "weight", np.dtype(np.float32), (n, k)) for m, n, k in mats]
        else:
            groups = {m: -(-k // gs) for m, _, k in mats}
            entries += [(f"{m}.scale.k{bits}", m, "scale", sdt, (n, groups[m])) for m, n, _ in mats]
            entries += [(f"{m}.offset.k{bits}", m, "offset", sdt, (n, groups[m])) for m, n, _ in mats]
            entries += [
                (f"{m}.plane.p{p}", m, "plane", np.dtype(np.uint8), (n, groups[m], gs * width // 8))
                for m, n, _ in mats
            ]
        cur, slots = start, []
        for name, m, role, dt, shape in entries:
            cur = _align(cur, TENSOR_ALIGN)
            nbytes = int(np.prod(shape)) * dt.itemsize
            slots.append(TensorSlot(name, m, role, cur, nbytes, dt.name, tuple(shape)))
            cur += nbytes
        end = _align(cur, PAGE_SIZE)
        chunks.append(ChunkLayout(p, bits, width, start, end - start, tuple(slots)))
        start = end
    return RecordLayout(spec=spec, matrices=tuple(mats), chunks=tuple(chunks), biases=tuple(biases))


def encode_record(weights: Mapping[str, np.ndarray], spec: QuantSpec,
                  biases: Mapping[str, np.ndarray] | None = None) -> tuple[list[bytes], RecordLayout]:
    """Quantize and serialise one expert.

    Parameters
    ----------
    weights : mapping of str to ndarray [N, K]
        The expert's matrices in record order.
    spec : QuantSpec
    biases : mapping of matrix name to its bias [N] (stored float32, exactly)

    Returns
    -------
    chunks : list of bytes
        One bytes object per chunk (each ``layout.chunks[i].length`` long); concatenated they are the record.
    layout : RecordLayout
    """
    biases = dict(biases or {})
    layout = record_layout({m: np.shape(w) for m, w in weights.items()}, spec, tuple(biases))
    arrays = {}  # (matrix, role, bits) -> array to store
    first = spec.ladder[0]
    for m, b in biases.items():
        arrays[(m, "bias", first)] = np.asarray(b, dtype=np.float32)
    for m, w in weights.items():
        if spec.scheme == "float32":
            arrays[(m, "weight", 32)] = np.asarray(w, dtype=np.float32)
            continue
        qm = quantize(w, spec)
        for bits, q in zip(spec.ladder, split_planes(qm.codes, spec)):
            width = spec.plane_widths[spec.level_index(bits)]
            arrays[(m, "scale", bits)] = qm.scales[bits]
            arrays[(m, "offset", bits)] = qm.offsets[bits]
            arrays[(m, "plane", bits)] = pack_plane(q, width, spec.group_size)
    out = []
    for c in layout.chunks:
        buf = np.zeros(c.length, dtype=np.uint8)
        for t in c.tensors:
            a = arrays[(t.matrix, t.role, c.bits)].astype(np.dtype(t.dtype).newbyteorder("<"), copy=False)
            lo = t.offset - c.offset
            buf[lo : lo + t.nbytes] = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        out.append(buf.tobytes())
    return out, layout


def slot_array(buf, layout: RecordLayout, slot) -> np.ndarray:
    """A zero-copy view of ``slot``; ``buf`` is the record prefix as one buffer or a list of chunks."""
    dt = np.dtype(slot.dtype)
    if isinstance(buf, (list, tuple)):
        for chunk, data in zip(layout.chunks, buf):
            if chunk.offset <= slot.offset < chunk.offset + chunk.length:
                return np.frombuffer(data, dt, slot.nbytes // dt.itemsize,
                                     slot.offset - chunk.offset).reshape(slot.shape)
        raise ValueError(f"{slot.name} is not in the {len(buf)} chunk(s) given")
    return np.frombuffer(buf, dt, slot.nbytes // dt.itemsize, slot.offset).reshape(slot.shape)


def record_views(buf, layout: RecordLayout, bits: int) -> dict[tuple[str, str, int], np.ndarray]:
    """Zero-copy numpy views of every tensor of levels ``<= bits``.

    Parameters
    ----------
    buf : bytes, bytearray, memoryview, mmap or ndarray, or a list of chunk buffers
        The record from its start; at least ``layout.prefix_length(bits)`` bytes (or chunks).
    layout : RecordLayout
    bits : int
        A level of ``layout.spec.ladder``.

    Returns
    -------
    dict
        ``(matrix, role, level_bits) -> ndarray`` with each slot's dtype and shape; a plane is keyed by
        the level of its chunk, float32 weights by 32.
    """
    if isinstance(buf, (list, tuple)):          # the prefix as separate chunk buffers
        n = layout.spec.level_index(bits) + 1
        if len(buf) < n:
            raise CorruptRecordError(f"level {bits} needs {n} chunks, got {len(buf)}")
        return {(t.matrix, t.role, c.bits): slot_array(buf, layout, t)
                for c in layout.chunks[:n] for t in c.tensors}
    need = layout.prefix_length(bits)
    mv = memoryview(buf)
    if not mv.contiguous:
        raise ConfigError("record buffer must be contiguous")
    mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
    if mv.nbytes < need:
        raise CorruptRecordError(
            f"record buffer has {mv.nbytes} bytes but level {bits} needs the first {need} bytes "
            f"(prefix_length({bits})); read the whole prefix"
        )
    views = {}
    for c in layout.chunks[: layout.spec.level_index(bits) + 1]:
        for t in c.tensors:
            dt = np.dtype(t.dtype).newbyteorder("<")
            arr = np.frombuffer(mv, dtype=dt, count=t.nbytes // dt.itemsize, offset=t.offset)
            views[(t.matrix, t.role, c.bits)] = arr.reshape(t.shape)
    return views


def decode_record(buf, layout: RecordLayout, bits: int) -> dict[str, np.ndarray]:
    """Dequantize every matrix of a record at level ``bits``, reading only its prefix.

    Parameters
    ----------
    buf : bytes, bytearray, memoryview, mmap or ndarray
        At least ``layout.prefix_length(bits)`` bytes from the record start.
    layout : RecordLayout
    bits : int

    Returns
    -------
    dict of str to ndarray of float32 [N, K]
        Bit-identical to ``dequantize(quantize(w, spec), bits)``; plus ``"<m>.bias"`` [N] for the
        matrices with a bias.
    """
    views = record_views(buf, layout, bits)
    spec = layout.spec
    out = {}
    for m in layout.biases:
        out[f"{m}.bias"] = np.array(views[(m, "bias", spec.ladder[0])], dtype=np.float32)
    for m, n, k in layout.matrices:
        if spec.scheme == "float32":
            out[m] = np.array(views[(m, "weight", 32)], dtype=np.float32)
            continue
        levels = spec.ladder[: spec.level_index(bits) + 1]
        planes = [unpack_plane(views[(m, "plane", b)], w, spec.group_size) for b, w in zip(levels, spec.plane_widths)]
        ck = join_planes(planes, bits, spec)  # [N, Kp]
        out[m] = decode_level(ck, views[(m, "scale", bits)], views[(m, "offset", bits)], bits, spec.group_size, k)
    return out
