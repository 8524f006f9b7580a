"""Symmetric int8 groups for the dense weights (attention, shared experts, embedding, LM head).

Shapes: ``W [N, K]`` (torch Linear layout; for the embedding N = vocab rows, K = hidden), groups
of ``gs`` along K, ``G = ceil(K / gs)``, ``Kp = G * gs``. Per group ``s = max|w| / 127`` and
``code = round(w / s) + 128`` (uint8; 1..255), so ``w ~= s * (code - 128)``. That is exactly
onnxruntime ``MatMulNBits`` with ``bits=8`` and no zero-point input (its default zero point is
128), so the same bytes serve the matmuls and the embedding gather. Padded columns get code 128 (0).

Unlike the experts these are read once at start-up and stay resident, so there is no bit nesting:
one 8-bit grid, the simplest that keeps dense memory at ~1/4 of float32 (8.5 bits per weight with
float32 scales at group 64).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgemoe.errors import ConfigError

ZERO = 128
DENSE_DTYPES = ("float32", "int8", "int4")
BITS = {"int8": 8, "int4": 4}


def check_dense_dtype(dtype: str) -> str:
    if dtype not in DENSE_DTYPES:
        raise ConfigError(f"dense weights can be {' or '.join(DENSE_DTYPES)}, not {dtype!r}; "
                          f"pick one with --dense")
    return dtype


@dataclass(frozen=True)
class DenseQuant:
    """How the dense matrices are stored. ``float32``: as in the checkpoint (exact parity).
    ``int8``: symmetric int8 groups of ``group_size`` along the input dim, computed by onnxruntime
    ``MatMulNBits`` with int8 activations (its fast 8-bit path); the embedding is gathered as codes
    and dequantized per row. The router (and any [1, K] gate) stays float32: it is tiny, the
    prefetcher reads it, and expert choice is where an error would compound."""

    dtype: str = "float32"
    group_size: int = 64

    def __post_init__(self):
        check_dense_dtype(self.dtype)
        gs = self.group_size
        if not (16 <= gs <= 256 and gs & (gs - 1) == 0):
            raise ConfigError(f"dense group size {gs} is not a power of two in 16..256 "
                              f"(onnxruntime MatMulNBits' block sizes); use 64")

    @property
    def quantized(self) -> bool:
        return self.dtype in BITS

    @property
    def bits(self) -> int:
        """Bits per code of the matmul weights (32 for float32)."""
        return BITS.get(self.dtype, 32)

    @property
    def bytes_per_weight(self) -> float:
        return 4.0 if not self.quantized else self.bits / 8 + 4.0 / self.group_size

    @property
    def embedding(self) -> "DenseQuant":
        """How the embedding is stored: int4 matmuls keep an int8 embedding (a decode step gathers
        one row of it; 4-bit rows would need unpacking in the graph for no bandwidth gained)."""
        return DenseQuant("int8", self.group_size) if self.dtype == "int4" else self

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "group_size": self.group_size}

    @classmethod
    def from_dict(cls, d: dict | None) -> "DenseQuant":
        """The manifest's ``dense`` entry; packages written before it existed are float32."""
        if not d:
            return cls()
        try:
            return cls(dtype=str(d["dtype"]), group_size=int(d["group_size"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"the manifest's dense entry {d!r} is malformed ({e}); re-export the "
                              f"package") from None


FLOAT32 = DenseQuant()


def default_dense(quant) -> DenseQuant:
    """Export's default for the dense matrices: int8 groups of the experts' group size, since
    float32 ones make every token read the LM head and attention at 4 bytes a weight (measured on
    OLMoE-1B-7B shapes x 4 layers, level 8: 13.1 -> 25.6 tok/s); float32 when the experts are
    float32 too (the exact path, for parity with the checkpoint)."""
    if quant.scheme == "float32":
        return FLOAT32
    return DenseQuant("int8", max(16, min(256, quant.group_size)))


def _symmetric_groups(w: np.ndarray, group_size: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """W [N, K] float -> (signed codes int16 [N, G, gs] in -top..top, scales float32 [N, G]) with
    ``s = max|w| / top`` per group; padded columns get 0."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    g = -(-k // group_size)
    wp = np.zeros((n, g * group_size), dtype=np.float32)
    wp[:, :k] = w
    wp = wp.reshape(n, g, group_size)
    scales = np.abs(wp).max(axis=2) / float(top)                      # [N, G]
    safe = np.where(scales > 0, scales, 1.0)[:, :, None]
    return np.clip(np.rint(wp / safe), -top, top).astype(np.int16), scales.astype(np.float32)


def quantize_int8_groups(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """W [N, K] float -> (codes uint8 [N, G, gs], scales float32 [N, G])."""
    q, scales = _symmetric_groups(w, group_size, 127)
    return (q + ZERO).astype(np.uint8), scales


def quantize_int4_groups(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """W [N, K] float -> (codes uint8 [N, G, gs / 2], scales float32 [N, G]): per group
    ``s = max|w| / 7`` and ``code = round(w / s) + 8`` (1..15), two codes a byte LSB-first: exactly
    onnxruntime ``MatMulNBits`` with ``bits=4`` and its default zero point 8."""
    q, scales = _symmetric_groups(w, group_size, 7)
    codes = (q + 8).astype(np.uint8)
    return (codes[:, :, 0::2] | (codes[:, :, 1::2] << 4)).astype(np.uint8), scales


def dequantize_int4_groups(codes: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """(codes [N, G, gs / 2], scales [N, G]) -> W [N, K] float32: the reference for the graphs."""
    n, g, half = codes.shape
    c = np.empty((n, g, 2 * half), dtype=np.float32)
    c[:, :, 0::2] = codes & 0x0F
    c[:, :, 1::2] = codes >> 4
    return ((c - 8) * scales[:, :, None]).reshape(n, -1)[:, :k]


def dequantize_int8_groups(codes: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """(codes [N, G, gs], scales [N, G]) -> W [N, K] float32: the reference for the graphs."""
    n, g, gs = codes.shape
    w = (codes.astype(np.float32) - ZERO) * scales[:, :, None]
    return w.reshape(n, g * gs)[:, :k]
