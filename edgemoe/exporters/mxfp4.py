"""MXFP4 (OCP microscaling FP4) tensors as gpt-oss ships its experts: ``<name>_blocks`` uint8
[..., G, 16] (two E2M1 codes per byte, low nibble first) and ``<name>_scales`` uint8 [..., G]
(e8m0 exponents, bias 127): 32 values per block, value = FP4[code] * 2^(scale - 127). Dequantized
exactly (every value is a float32) in numpy, no torch."""
from __future__ import annotations

import numpy as np

FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)
BLOCK = 32


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """blocks [..., G, 16] uint8, scales [..., G] uint8 -> float32 [..., G * 32] (the rows of the
    packed matrix, as stored: for gpt-oss [E, out, in])."""
    blocks, scales = np.asarray(blocks, np.uint8), np.asarray(scales, np.uint8)
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {blocks.shape} and scales {scales.shape} do not match "
                         f"([..., G, 16] and [..., G])")
    vals = np.empty((*blocks.shape[:-1], BLOCK), np.float32)
    vals[..., 0::2] = FP4_VALUES[blocks & 0x0F]
    vals[..., 1::2] = FP4_VALUES[blocks >> 4]
    vals *= np.exp2(scales.astype(np.float32) - 127)[..., None]
    return vals.reshape(*blocks.shape[:-2], -1)


def quantize_mxfp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [..., K] (K a multiple of 32) -> (blocks, scales) as gpt-oss stores them: per block the
    smallest power-of-two scale with max|w| / scale <= 6, codes rounded to the nearest E2M1 value.
    For writing test checkpoints in the official layout."""
    w = np.asarray(w, np.float32)
    g = w.reshape(*w.shape[:-1], -1, BLOCK)
    amax = np.abs(g).max(axis=-1)
    exp = np.ceil(np.log2(np.maximum(amax, 1e-30) / 6.0)).clip(-127, 127)
    q = g / np.exp2(exp)[..., None]
    codes = np.abs(q[..., None] - FP4_VALUES).argmin(axis=-1).astype(np.uint8)   # [..., G, 32]
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.astype(np.uint8), (exp + 127).astype(np.uint8)
