"""Block-scaled FP8 weights (DeepSeek-V3/R1, MiniMax-M2, GLM and Qwen FP8 releases): a float8 e4m3
``<name>`` [N, K] with ``<name>_scale_inv`` [ceil(N/bn), ceil(K/bk)] (float32, or e8m0), the
checkpoint's ``quantization_config.weight_block_size`` (128 x 128): W = fp8 * scale_inv of its
block (transformers' ``finegrained_fp8`` convention: the "inverse" scale multiplies)."""
from __future__ import annotations

import numpy as np

SCALE_SUFFIX = "_scale_inv"
FP8_DTYPES = ("F8_E4M3",)


def block_size(config: dict) -> tuple[int, int]:
    """(bn, bk) of the checkpoint's FP8 blocks (default 128 x 128)."""
    q = config.get("quantization_config") or {}
    bs = q.get("weight_block_size") or (128, 128)
    return int(bs[0]), int(bs[1])


def dequantize_blocks(w: np.ndarray, scale: np.ndarray, rows: tuple[int, int] | None = None,
                      block: tuple[int, int] = (128, 128)) -> np.ndarray:
    """w [..., n, K] float32 (the FP8 values, rows ``rows[0]:rows[1]`` of the matrix when given),
    scale [..., ceil(N/bn), ceil(K/bk)] -> the dequantized weights, in place in ``w``."""
    bn, bk = block
    r0 = 0 if rows is None else rows[0]
    n, k = w.shape[-2:]
    row_scale = np.repeat(scale.astype(np.float32), bn, axis=-2)[..., r0:r0 + n, :]   # [..., n, ceil(K/bk)]
    w *= np.repeat(row_scale, bk, axis=-1)[..., :k]
    return w
