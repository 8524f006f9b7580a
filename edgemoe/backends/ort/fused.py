"""Resident onnxruntime experts with each matrix's planes fused into one code tensor of its level.

The package's expert graph (``package.expert_graph``) reads the nested record as it is: one
``MatMulNBits`` per bit plane (three at level 8: the 2-, 2- and 4-bit planes) plus the offset term,
so activations are quantized and the output accumulated once per plane. A resident expert is
loaded once and kept, and onnxruntime keeps its own packed copy of whatever it is given anyway
(``backend`` module doc), so here the planes are combined at load into the level's codes
``c_k = sum_j 2^(k - level_j) q_j`` (``[N, G, gs]`` values, packed ``k`` bits LSB-first as
``MatMulNBits`` wants them) and each matrix becomes a single ``MatMulNBits`` of ``k`` bits with
zero point ``2^(k-1)``:

    y = MatMulNBits(x, c_k, a_k, z = 2^(k-1)) + groupsum(x) @ b_k^T

the same weights ``W_k = a_k (c_k - 2^(k-1)) + b_k`` as the nested graph (and as the numpy
reference), in one pass over the matrix. The fused arrays are dropped once the session exists.
"""
from __future__ import annotations

import numpy as np
import onnx

from edgemoe.package.expert_graph import (ACCURACY_LEVEL, PLAIN_SWIGLU, bias_input, offset_term,
                                          swiglu_graph)
from edgemoe.package.onnx_util import MS_DOMAIN
from edgemoe.quant.planes import join_planes, pack_plane, unpack_plane
from edgemoe.quant.record import RecordLayout, slot_array

def _level_codes(buf, layout: RecordLayout, matrix: str, bits: int) -> np.ndarray:
    """Level-``bits`` codes of ``matrix``, packed ``bits`` wide: [N, G, gs * bits / 8] uint8."""
    spec = layout.spec
    gs = spec.group_size
    planes = [unpack_plane(slot_array(buf, layout, layout.slot(matrix, "plane", spec.ladder[p])),
                           spec.plane_widths[p], gs) for p in range(spec.level_index(bits) + 1)]
    return pack_plane(join_planes(planes, bits, spec), bits, gs)


def fused_arrays(buf, layout: RecordLayout, bits: int) -> dict[str, np.ndarray]:
    """The fused graph's initializers for one expert at level ``bits``, by name."""
    spec = layout.spec
    out = {}
    for m, n, k in layout.matrices:
        groups = -(-k // spec.group_size)
        out[f"{m}.codes"] = _level_codes(buf, layout, m, bits)
        out[f"{m}.scale"] = slot_array(buf, layout, layout.slot(m, "scale", bits)).astype(np.float32)
        out[f"{m}.offset"] = slot_array(buf, layout, layout.slot(m, "offset", bits)).astype(np.float32)
        zp = 1 << (bits - 1)
        zp_byte = sum(zp << (bits * j) for j in range(8 // bits)) & 0xFF
        out[f"{m}.zp"] = np.full((n, -(-groups * bits // 8)), zp_byte, dtype=np.uint8)
    for m in layout.biases:
        t = layout.bias_slot(m)
        out[t.name] = slot_array(buf, layout, t)
    return out


def fused_graph(layout: RecordLayout, bits: int, hidden: int, intermediate: int,
                act=PLAIN_SWIGLU) -> onnx.ModelProto:
    """The SwiGLU expert at level ``bits`` with one ``MatMulNBits`` per matrix; its initializers
    (``fused_arrays``' names) are external, to be bound with ``add_external_initializers``."""
    gs = layout.spec.group_size
    shapes = {m: (n, k) for m, n, k in layout.matrices}

    def linear(b, x: str, m: str) -> str:
        n, k = shapes[m]
        groups = -(-k // gs)

        def ext(name, dtype, shape):
            return b.external(f"{m}.{name}", dtype, shape, "fused", 0, 0)
        y = b.op("MatMulNBits", x, ext("codes", "uint8", [n, groups, gs * bits // 8]),
                 ext("scale", "float32", [n, groups]),
                 ext("zp", "uint8", [n, -(-groups * bits // 8)]), domain=MS_DOMAIN,
                 K=k, N=n, bits=bits, block_size=gs, accuracy_level=ACCURACY_LEVEL)
        return b.op("Add", y, offset_term(b, x, k, gs, ext("offset", "float32", [n, groups])))
    return swiglu_graph("expert_fused", hidden, intermediate, linear, act,
                        bias_input(layout, "fused", 0))
