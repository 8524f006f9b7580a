"""Matryoshka (bit-nested) quantization of expert weights; numpy only."""
from __future__ import annotations

from edgemoe.quant import matryoshka

from edgemoe.quant.matryoshka import (
    QuantizedMatrix,
    decode_level,
    dequantize,
    direct_minmax_rtn,
    join_planes,
    level_affine,
    matmul_from_planes,
    matmul_reference,
    pack_plane,
    quantize,
    split_planes,
    unpack_plane,
)
from edgemoe.quant.record import (
    ChunkLayout,
    RecordLayout,
    TensorSlot,
    decode_record,
    encode_record,
    record_layout,
    record_views,
)
from edgemoe.quant.spec import QuantSpec, parse_ladder

__all__ = ["QuantSpec", "parse_ladder", *matryoshka.__all__, "TensorSlot", "ChunkLayout",
           "RecordLayout", "record_layout", "encode_record", "decode_record", "record_views"]
