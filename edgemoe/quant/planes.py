"""Bit planes: split 8-bit codes into per-level planes and pack them as MatMulNBits B input.

Plane p (0-based here, ``.p{p+1}`` in record names) holds the bits that level ``ladder[p]`` adds:
``q_p = (c >> (8 - ladder[p])) & ((1 << width_p) - 1)``. Packed layout is onnxruntime
``MatMulNBits``'s B: ``[N, n_groups, group_size * width // 8]`` uint8, codes LSB-first in each byte.
"""
from __future__ import annotations

import numpy as np

from edgemoe.errors import ConfigError
from edgemoe.quant.spec import QuantSpec

PACK_WIDTHS = (2, 4, 8)


def _check_width(width: int, group_size: int) -> None:
    if width not in PACK_WIDTHS:
        raise ConfigError(f"plane width {width!r} cannot be packed; valid widths: {PACK_WIDTHS}")
    if group_size <= 0 or (group_size * width) % 8:
        raise ConfigError(f"group_size {group_size!r} * width {width} must be a positive multiple of 8 bits")


def pack_plane(q: np.ndarray, width: int, group_size: int) -> np.ndarray:
    """Pack a plane of ``width``-bit codes into MatMulNBits byte order.

    Parameters
    ----------
    q : ndarray of uint8, shape [N, Kp]
        Codes in ``0 .. 2**width - 1``; ``Kp`` is a multiple of ``group_size`` (already padded).
    width : int
        Bits per code: 2, 4 or 8.
    group_size : int
        Codes per group (MatMulNBits ``block_size``).

    Returns
    -------
    ndarray of uint8, shape [N, Kp // group_size, group_size * width // 8]
        Element ``j`` of a byte sits at bits ``width * j .. width * j + width - 1`` (LSB-first).
    """
    _check_width(width, group_size)
    q = np.asarray(q)
    if q.ndim != 2 or q.shape[1] % group_size:
        raise ConfigError(f"plane must be [N, Kp] with Kp a multiple of {group_size}, got shape {q.shape}")
    n, kp = q.shape
    per = 8 // width  # codes per byte
    q = q.astype(np.uint8, copy=False).reshape(n, kp // per, per)  # [N, Kp/per, per]
    packed = np.zeros((n, kp // per), dtype=np.uint8)
    for j in range(per):
        packed |= (q[:, :, j] & np.uint8((1 << width) - 1)) << np.uint8(width * j)
    return packed.reshape(n, kp // group_size, group_size * width // 8)


def unpack_plane(packed: np.ndarray, width: int, group_size: int) -> np.ndarray:
    """Inverse of :func:`pack_plane`.

    Parameters
    ----------
    packed : ndarray of uint8, shape [N, G, group_size * width // 8]
    width : int
        Bits per code: 2, 4 or 8.
    group_size : int

    Returns
    -------
    ndarray of uint8, shape [N, G * group_size]
    """
    _check_width(width, group_size)
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 3 or packed.shape[2] != group_size * width // 8:
        raise ConfigError(
            f"packed plane must be [N, G, {group_size * width // 8}] for width {width}, got {packed.shape}"
        )
    n = packed.shape[0]
    per = 8 // width
    flat = packed.reshape(n, -1)  # [N, Kp/per]
    mask = np.uint8((1 << width) - 1)
    out = np.empty((n, flat.shape[1], per), dtype=np.uint8)  # [N, Kp/per, per]
    for j in range(per):
        out[:, :, j] = (flat >> np.uint8(width * j)) & mask
    return out.reshape(n, -1)


def split_planes(codes: np.ndarray, spec: QuantSpec) -> list[np.ndarray]:
    """Split 8-bit codes ``[N, Kp]`` into the unpacked planes of ``spec.ladder`` (each ``[N, Kp]`` uint8)."""
    planes = []
    for level, width in zip(spec.ladder, spec.plane_widths):
        planes.append((codes >> np.uint8(8 - level)) & np.uint8((1 << width) - 1))
    return planes


def join_planes(planes: list[np.ndarray], bits: int, spec: QuantSpec) -> np.ndarray:
    """Level-``bits`` codes from unpacked planes: ``c_k = sum_{p <= idx(k)} q_p << (k - level_p)``.

    Parameters
    ----------
    planes : list of ndarray of uint8, each [N, Kp]
        At least the first ``spec.level_index(bits) + 1`` planes; extra ones are ignored.
    bits : int
        A level of ``spec.ladder``.
    spec : QuantSpec

    Returns
    -------
    ndarray of uint8, shape [N, Kp]
        Equal to ``codes >> (8 - bits)``.
    """
    idx = spec.level_index(bits)
    if len(planes) <= idx:
        raise ConfigError(f"level {bits} needs {idx + 1} planes, got {len(planes)}")
    out = np.zeros(np.shape(planes[0]), dtype=np.uint8)
    for level, q in zip(spec.ladder[: idx + 1], planes):
        out |= np.asarray(q, dtype=np.uint8) << np.uint8(bits - level)
    return out
