"""Matryoshka (bit-nested) quantization: the public numpy API in one place.

The pieces live in small modules: :mod:`~edgemoe.quant.codes` (8-bit grid, per-level least-squares
scales, reference decode, min-max baseline), :mod:`~edgemoe.quant.planes` (bit planes packed as
onnxruntime ``MatMulNBits`` B) and :mod:`~edgemoe.quant.matmul` (level-k products, plane algebra).
"""
from __future__ import annotations

from edgemoe.quant.codes import QuantizedMatrix, decode_level, dequantize, direct_minmax_rtn, quantize
from edgemoe.quant.matmul import level_affine, matmul_from_planes, matmul_reference
from edgemoe.quant.planes import join_planes, pack_plane, split_planes, unpack_plane

__all__ = [
    "QuantizedMatrix",
    "quantize",
    "dequantize",
    "decode_level",
    "direct_minmax_rtn",
    "pack_plane",
    "unpack_plane",
    "split_planes",
    "join_planes",
    "matmul_reference",
    "matmul_from_planes",
    "level_affine",
]
