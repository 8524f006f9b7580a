"""Matryoshka codes: one 8-bit min-max grid per group, a least-squares scale/offset per level.

Shapes: ``W [N, K]`` (torch Linear layout), groups of ``gs`` along K, ``G = ceil(K / gs)``,
``Kp = G * gs`` (the last group is padded; padded weights take no part in any fit, their codes are 0).
Level ``k`` reconstructs ``w ~= a_k * (c_k - z_k) + b_k`` with ``c_k = c >> (8 - k)``, ``z_k = 2**(k-1)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgemoe.errors import ConfigError
from edgemoe.quant.spec import QuantSpec

_BLOCK_ELEMS = 1 << 19  # weights per row block while fitting (bounds float64 temporaries to ~4 MiB each;
#                         also faster than larger blocks, which fall out of cache)


@dataclass(frozen=True, eq=False)
class QuantizedMatrix:
    """One matrix in matryoshka form.

    Attributes
    ----------
    codes : ndarray of uint8, shape [N, Kp]
        8-bit min-max codes, padded columns are 0.
    scales, offsets : dict of int to ndarray, each [N, G] of ``spec.scale_dtype``
        Per level (keyed by its bits): ``a_k`` and ``b_k``.
    shape : tuple of int
        ``(N, K)`` of the original matrix.
    spec : QuantSpec
    """

    codes: np.ndarray
    scales: dict
    offsets: dict
    shape: tuple
    spec: QuantSpec


def _check_matrix(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2 or 0 in w.shape:
        raise ConfigError(f"expected a non-empty 2-D weight matrix [N, K], got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise ConfigError(f"expected floating-point weights, got dtype {w.dtype}")
    if not np.isfinite(w).all():
        raise ConfigError("weights contain NaN or inf; fix the checkpoint before quantizing")
    return w


def _grouped(w: np.ndarray, gs: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of ``w [n, K]`` as float64 ``[n, G, gs]`` (zero padded) and the valid mask ``[G, gs]`` or None."""
    n, k = w.shape
    g = -(-k // gs)
    wg = np.zeros((n, g * gs), dtype=np.float64)
    wg[:, :k] = w
    valid = None
    if k % gs:
        valid = (np.arange(g * gs) < k).reshape(g, gs)
    return wg.reshape(n, g, gs), valid


def _minmax(wg: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-group min and max over valid weights, each ``[n, G]``."""
    if valid is None:
        return wg.min(axis=2), wg.max(axis=2)
    return np.where(valid, wg, np.inf).min(axis=2), np.where(valid, wg, -np.inf).max(axis=2)


def _fit_level(wg, u, valid, step, dtype):
    """Least-squares ``a, b`` with ``w ~= a * u + b`` per group, rounded to ``dtype``.

    ``wg, u``: [n, G, gs] float64; ``step``: [n, G] scale used where all ``u`` of a group are equal.
    ``a`` is rounded first, then ``b`` refitted given the rounded ``a`` and rounded.
    """
    m = np.ones(wg.shape[1:], dtype=np.float64) if valid is None else valid.astype(np.float64)  # [G, gs]
    cnt = m.sum(axis=1)  # [G]
    mu_u = (u * m).sum(axis=2) / cnt  # [n, G]
    mu_w = (wg * m).sum(axis=2) / cnt
    du = (u - mu_u[..., None]) * m
    var = (du * du).sum(axis=2)
    cov = (du * wg).sum(axis=2)  # sum(du) == 0, so this is the centred covariance
    with np.errstate(over="ignore"):  # overflow is reported below with the fix
        a = np.where(var > 0, cov / np.where(var > 0, var, 1.0), step).astype(dtype)
        b = (mu_w - a.astype(np.float64) * mu_u).astype(dtype)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError(f"scales overflow {dtype}; use scale_dtype='float32' for weights this large")
    return a, b


def quantize(w: np.ndarray, spec: QuantSpec) -> QuantizedMatrix:
    """Quantize a weight matrix into nested matryoshka levels.

    Parameters
    ----------
    w : ndarray, shape [N, K]
        Float weights (torch Linear layout: N outputs, K inputs).
    spec : QuantSpec
        A ``"matryoshka"`` spec.

    Returns
    -------
    QuantizedMatrix
        8-bit codes plus, per level, least-squares scales and offsets stored in ``spec.scale_dtype``.
    """
    if spec.scheme != "matryoshka":
        raise ConfigError(
            f"quantize() needs scheme 'matryoshka', got {spec.scheme!r}; float32 experts are stored as is"
        )
    w = _check_matrix(w)
    n, k = w.shape
    gs = spec.group_size
    g = -(-k // gs)
    sdt = np.dtype(spec.scale_dtype)
    codes = np.zeros((n, g * gs), dtype=np.uint8)  # [N, Kp]
    scales = {b: np.empty((n, g), dtype=sdt) for b in spec.ladder}  # [N, G] per level
    offsets = {b: np.empty((n, g), dtype=sdt) for b in spec.ladder}
    rows = max(1, _BLOCK_ELEMS // (g * gs))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        wg, valid = _grouped(w[r0:r1], gs)  # [n, G, gs]
        lo, hi = _minmax(wg, valid)  # [n, G]
        rng = hi - lo
        c = np.rint((wg - lo[..., None]) / np.where(rng > 0, rng, 1.0)[..., None] * 255.0)
        c = np.clip(c, 0, 255)
        if valid is not None:
            c = np.where(valid, c, 0)
        c = c.astype(np.uint8)  # [n, G, gs]; constant groups give 0
        codes[r0:r1] = c.reshape(r1 - r0, -1)
        for bits in spec.ladder:
            u = (c >> np.uint8(8 - bits)).astype(np.float64) - 2.0 ** (bits - 1)  # centred level codes
            step = rng / (2**bits - 1)  # this level's min-max step
            scales[bits][r0:r1], offsets[bits][r0:r1] = _fit_level(wg, u, valid, step, sdt)
    return QuantizedMatrix(codes=codes, scales=scales, offsets=offsets, shape=(n, k), spec=spec)


def decode_level(ck: np.ndarray, a: np.ndarray, b: np.ndarray, bits: int, group_size: int, k: int) -> np.ndarray:
    """Dequantize level codes: ``a * (c_k - 2**(bits-1)) + b`` in float32.

    Parameters
    ----------
    ck : ndarray of uint8, shape [N, Kp]
        Level-``bits`` codes.
    a, b : ndarray, shape [N, G]
        Stored scale and offset of the level (any float dtype; computed in float32).
    bits, group_size, k : int
        Level bits, group size, and the unpadded input dimension K.

    Returns
    -------
    ndarray of float32, shape [N, K]
    """
    n, kp = ck.shape
    u = ck.reshape(n, kp // group_size, group_size).astype(np.float32) - np.float32(2 ** (bits - 1))
    w = np.asarray(a, dtype=np.float32)[..., None] * u + np.asarray(b, dtype=np.float32)[..., None]
    return w.reshape(n, kp)[:, :k]


def dequantize(qm: QuantizedMatrix, bits: int) -> np.ndarray:
    """Reference reconstruction of ``qm`` at level ``bits`` (ground truth for every kernel).

    Parameters
    ----------
    qm : QuantizedMatrix
    bits : int
        A level of ``qm.spec.ladder``.

    Returns
    -------
    ndarray of float32, shape [N, K]
    """
    qm.spec.level_index(bits)
    ck = qm.codes >> np.uint8(8 - bits)
    return decode_level(ck, qm.scales[bits], qm.offsets[bits], bits, qm.spec.group_size, qm.shape[1])


def direct_minmax_rtn(w: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """Baseline: group-wise min-max round-to-nearest at ``bits`` with float32 scale and minimum.

    Parameters
    ----------
    w : ndarray, shape [N, K]
    bits : int
        1..8 bits per weight.
    group_size : int
        Group length along K (the last group may be partial).

    Returns
    -------
    ndarray of float32, shape [N, K]
        The reconstruction ``q * scale + min``.
    """
    w = _check_matrix(w)
    if not 1 <= int(bits) <= 8 or int(group_size) < 1:
        raise ConfigError(f"direct_minmax_rtn needs bits in 1..8 and group_size >= 1, got {bits}, {group_size}")
    n, k = w.shape
    out = np.empty((n, k), dtype=np.float32)
    levels = np.float32(2**bits - 1)
    rows = max(1, _BLOCK_ELEMS // k)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        wg, valid = _grouped(w[r0:r1], group_size)
        lo, hi = _minmax(wg, valid)
        lo32 = lo.astype(np.float32)[..., None]
        scale = ((hi - lo) / levels).astype(np.float32)[..., None]  # [n, G, 1]
        wg32 = wg.astype(np.float32)
        q = np.clip(np.rint((wg32 - lo32) / np.where(scale > 0, scale, 1)), 0, levels)
        out[r0:r1] = (q * scale + lo32).reshape(r1 - r0, -1)[:, :k]
    return out
