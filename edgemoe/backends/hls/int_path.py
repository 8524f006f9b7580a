"""The integer reference path of the HLS expert: what the FPGA computes, bit for bit (numpy).

Per expert at level k, T tokens queued for it (so its weights are fetched once):
  1. the host quantizes each token: sx = max|x| / 127, xq = rint(x / sx) in int8 [T, H];
  2. GEMV on codes: acc[t, n, g] = sum_i c_k[n, g, i] * xq[t, g, i] (int32), gsum[t, g] = sum_i xq;
     y[t, n] = sx[t] * sum_g (a[n, g] * (acc - 2^(k-1) * gsum) + b[n, g] * gsum), float32, summed over
     g in order (the C++ loop order, so float results agree exactly);
  3. SwiGLU with a 1024-entry sigmoid table over [-8, 8): h = (g * SIG[idx(g)]) * u;
  4. h requantized per token as in 1; 5. the down GEMV as in 2.
Compiled with -ffp-contract=off (no fused multiply-add), the C++ does the same IEEE float32
operations in the same order, so the C-simulation matches this path exactly.
"""
from __future__ import annotations

import numpy as np

from edgemoe.quant.record import RecordLayout

SIG_SIZE, SIG_LO, SIG_STEP_INV = 1024, -8.0, 64.0   # table over [-8, 8), 64 entries per unit
SIGMOID_TABLE = (1.0 / (1.0 + np.exp(-(SIG_LO + (np.arange(SIG_SIZE) + 0.5) / SIG_STEP_INV)))
                 ).astype(np.float32)


def quantize_tokens(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [T, K] float32 -> (xq int8 [T, K], sx float32 [T]), symmetric per token."""
    x = x.astype(np.float32)
    sx = (np.abs(x).max(axis=1) / np.float32(127)).astype(np.float32)
    sx = np.where(sx == 0, np.float32(1), sx).astype(np.float32)
    xq = np.clip(np.rint(x / sx[:, None]), -127, 127).astype(np.int8)
    return xq, sx


def codes(layout: RecordLayout, views: dict, matrix: str, bits: int) -> np.ndarray:
    """Level-``bits`` codes [N, G, gs] (int32) of ``matrix`` from the packed planes."""
    spec = layout.spec
    n = next(n for m, n, _ in layout.matrices if m == matrix)
    c = None
    for p in range(spec.level_index(bits) + 1):
        w, level = spec.plane_widths[p], spec.ladder[p]
        packed = views[(matrix, "plane", level)].astype(np.int32)               # [N, G, gs*w/8]
        per = 8 // w
        q = (packed[..., None] >> (w * np.arange(per))) & ((1 << w) - 1)          # LSB-first
        q = q.reshape(n, packed.shape[1], -1) << (bits - level)
        c = q if c is None else c | q
    return c


def gemv(xq: np.ndarray, sx: np.ndarray, c: np.ndarray, a: np.ndarray, b: np.ndarray, bits: int,
         k: int) -> np.ndarray:
    """Integer GEMV with the float epilogue in the kernel's order. xq [T, K] -> [T, N] float32."""
    t = xq.shape[0]
    n, g, gs = c.shape
    xp = np.zeros((t, g * gs), np.int32)
    xp[:, :k] = xq
    xg = xp.reshape(t, g, gs)
    acc = np.einsum("ngi,tgi->tng", c, xg, dtype=np.int64).astype(np.int32)       # exact integers
    gsum = xg.sum(axis=2, dtype=np.int32)                                          # [T, G]
    z = np.int32(1 << (bits - 1))
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    s = np.zeros((t, n), np.float32)
    for j in range(g):                                                             # kernel order
        centred = (acc[:, :, j] - z * gsum[:, j, None]).astype(np.float32)
        term = a32[None, :, j] * centred + b32[None, :, j] * gsum[:, j, None].astype(np.float32)
        s = (s + term).astype(np.float32)
    return (s * sx[:, None]).astype(np.float32)


def silu_mul(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    idx = np.floor((g + np.float32(-SIG_LO)) * np.float32(SIG_STEP_INV)).astype(np.float32)
    idx = np.clip(idx, 0, SIG_SIZE - 1).astype(np.int64)
    return ((g * SIGMOID_TABLE[idx]).astype(np.float32) * u).astype(np.float32)


def expert_int(layout: RecordLayout, views: dict, bits: int, x: np.ndarray) -> np.ndarray:
    """The whole expert on the integer path: x [T, H] float32 -> y [T, H] float32."""
    (_, n_gu, h), (_, _, i) = layout.matrices
    xq, sx = quantize_tokens(x)
    gu = gemv(xq, sx, codes(layout, views, "gate_up", bits), views[("gate_up", "scale", bits)],
              views[("gate_up", "offset", bits)], bits, h)
    hidden = silu_mul(gu[:, :n_gu // 2], gu[:, n_gu // 2:])
    hq, sh = quantize_tokens(hidden)
    return gemv(hq, sh, codes(layout, views, "down", bits), views[("down", "scale", bits)],
                views[("down", "offset", bits)], bits, i)
