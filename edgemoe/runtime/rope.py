"""Rotary tables the layer graphs take as inputs (computed once per step)."""
from __future__ import annotations

import numpy as np

from edgemoe.arch import MoEArch

def rope_tables(arch: MoEArch, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """positions [T] -> cos, sin [T, R] in HF's cat(freqs, freqs) form (float32 math, as HF)."""
    r = arch.rope_dim
    inv_freq = (1.0 / (arch.rope_theta ** (np.arange(0, r, 2, dtype=np.int64).astype(np.float32) / r)))
    freqs = positions.astype(np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)
