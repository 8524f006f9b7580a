"""Rotary tables the layer graphs take as inputs (computed once per step), for every RoPE scaling
type MoEArch records (``rope_scaling``): default, linear, ntk_alpha (HunYuan's static NTK base),
yarn (frequency blend + the cos/sin attention factor), llama3 (wavelength-banded). The formulas
are transformers' ``modeling_rope_utils``, in float32 as there."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from edgemoe.arch import MoEArch


def _base_freqs(base: float, r: int) -> np.ndarray:
    """base ** (2j / R) for j < R/2, in float32."""
    return (np.float32(base) ** (np.arange(0, r, 2, dtype=np.int64).astype(np.float32) / np.float32(r))
            ).astype(np.float32)


def _yarn(arch: MoEArch, p: dict) -> tuple[np.ndarray, float]:
    r, base = arch.rope_dim, arch.rope_theta
    orig = p["original_max_position_embeddings"]
    factor = p.get("factor") or arch.max_position / orig

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
    att = p.get("attention_factor")
    if att is None:
        att = (mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
               if p.get("mscale") and p.get("mscale_all_dim") else mscale(factor))
    beta_fast, beta_slow = p.get("beta_fast") or 32.0, p.get("beta_slow") or 1.0

    def corr_dim(rot):
        return (r * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))
    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, r - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(r // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    extra = (1 - ramp).astype(np.float32)                 # weight of the unscaled frequency
    pos = _base_freqs(base, r)
    inv = (1.0 / (np.float32(factor) * pos)) * (1 - extra) + (1.0 / pos) * extra
    return inv.astype(np.float32), float(att)


def _llama3(arch: MoEArch, p: dict) -> np.ndarray:
    inv = (1.0 / _base_freqs(arch.rope_theta, arch.rope_dim)).astype(np.float32)
    factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    orig = p["original_max_position_embeddings"]
    low_wl, high_wl = orig / lo, orig / hi
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wl, inv / factor, inv)
    smooth = (orig / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wl) & (wavelen <= low_wl)
    return np.where(medium, smoothed, scaled).astype(np.float32)


@lru_cache(maxsize=16)
def inv_freq(arch: MoEArch) -> tuple[np.ndarray, float]:
    """inverse frequencies [R/2] float32 and the factor cos/sin are multiplied by (cached: the
    arch is frozen; callers must not write into the array)."""
    p = dict(arch.rope_scaling)
    kind, r = p.get("rope_type", "default"), arch.rope_dim
    if kind == "yarn":
        return _yarn(arch, p)
    if kind == "llama3":
        return _llama3(arch, p), 1.0
    base = arch.rope_theta
    if kind == "ntk_alpha":     # HunYuan: the exponent uses head_dim, as transformers does
        d = arch.head_dim
        base = base * p["alpha"] ** (d / (d - 2))
    inv = (1.0 / _base_freqs(base, r)).astype(np.float32)
    if kind == "linear":
        inv = (inv / np.float32(p["factor"])).astype(np.float32)
    return inv, 1.0


def rope_tables(arch: MoEArch, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """positions [T] -> cos, sin [T, R] in HF's cat(freqs, freqs) form (float32 math, as HF)."""
    inv, scale = inv_freq(arch)
    freqs = positions.astype(np.float32)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    if scale != 1.0:
        cos, sin = cos * np.float32(scale), sin * np.float32(scale)
    return cos.astype(np.float32), sin.astype(np.float32)
