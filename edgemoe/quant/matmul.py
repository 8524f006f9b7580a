"""Reference level-k products, and the per-plane algebra that kernels use.

Per group ``g`` of row ``n``, with ``c_k = sum_{p <= idx(k)} q_p << (k - level_p)``::

    W_k[n, g] . x[g] = a_k * sum_p 2**(k - level_p) * (q_p[n, g] . x[g]) + (b_k - a_k * z_k) * sum(x[g])

so a level-k product is one low-bit product per plane (e.g. one onnxruntime ``MatMulNBits`` each,
with scale ``a_k * 2**(k - level_p)``), plus a per-group bias times the group sums of ``x``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from edgemoe.errors import ConfigError
from edgemoe.quant.codes import QuantizedMatrix, dequantize
from edgemoe.quant.planes import unpack_plane
from edgemoe.quant.spec import QuantSpec


def matmul_reference(x: np.ndarray, qm: QuantizedMatrix, bits: int) -> np.ndarray:
    """``x @ dequantize(qm, bits).T``.

    Parameters
    ----------
    x : ndarray, shape [T, K]
    qm : QuantizedMatrix
    bits : int
        A level of ``qm.spec.ladder``.

    Returns
    -------
    ndarray of float32, shape [T, N]
    """
    return np.asarray(x, dtype=np.float32) @ dequantize(qm, bits).T


def level_affine(
    a: np.ndarray, b: np.ndarray, bits: int, spec: QuantSpec, implicit_zero_points: bool = False
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-plane scales and the per-group bias of level ``bits``.

    Parameters
    ----------
    a, b : ndarray, shape [N, G]
        The stored scale ``a_k`` and offset ``b_k`` of the level.
    bits : int
    spec : QuantSpec
    implicit_zero_points : bool
        If True, each plane's product is taken as ``scale_p * (q_p - 2**(width_p - 1)) . x``
        (``MatMulNBits`` with no zero-point input) and ``bias`` compensates for it.

    Returns
    -------
    plane_scales : list of ndarray of float64, each [N, G]
        ``a_k * 2**(bits - level_p)`` for planes ``p = 0 .. idx(bits)``.
    bias : ndarray of float64, shape [N, G]
        ``b_k - a_k * 2**(bits - 1)`` (plus ``sum_p plane_scales[p] * 2**(width_p - 1)`` with
        ``implicit_zero_points``); multiplies the group sums of ``x``.

    Notes
    -----
    A ``MatMulNBits`` node per plane can carry the bias as a float zero point on plane 0,
    ``zp_0 = -bias / plane_scales[0]`` (other planes zp 0); that is exact but, measured with
    onnxruntime 1.32 on CPU, float zero points leave the fast ``accuracy_level=4`` path (10-100x
    slower), and it fails where ``a_k == 0`` (constant nonzero groups). The fast path is no zero-point
    input (``implicit_zero_points=True``) plus ``group_sums(x) @ bias.T``; ``accuracy_level=4``
    then quantizes ``x`` to int8 per block (about 5e-3 relative error against this reference).
    """
    idx = spec.level_index(bits)
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    plane_scales = [a64 * 2.0 ** (bits - level) for level in spec.ladder[: idx + 1]]
    bias = b64 - a64 * 2.0 ** (bits - 1)
    if implicit_zero_points:
        for s, width in zip(plane_scales, spec.plane_widths):
            bias = bias + s * 2.0 ** (width - 1)
    return plane_scales, bias


def _level(v, bits):
    return v[bits] if isinstance(v, Mapping) else v


def matmul_from_planes(
    x: np.ndarray,
    planes: Sequence[np.ndarray],
    scales,
    offsets,
    bits: int,
    spec: QuantSpec,
    K: int,
) -> np.ndarray:
    """Level-``bits`` product as a sum of per-plane low-bit products (the kernel algebra).

    Parameters
    ----------
    x : ndarray, shape [T, K]
    planes : sequence of ndarray of uint8, each [N, G, group_size * width_p // 8]
        Packed planes in ladder order; at least ``spec.level_index(bits) + 1`` of them.
    scales, offsets : ndarray [N, G], or mapping of bits to such arrays
        ``a_k`` and ``b_k`` of level ``bits``.
    bits : int
        A level of ``spec.ladder``.
    spec : QuantSpec
    K : int
        Unpadded input dimension.

    Returns
    -------
    ndarray of float32, shape [T, N]
        Equal (to float rounding) to ``matmul_reference``; only one plane is unpacked at a time.
    """
    idx = spec.level_index(bits)
    if len(planes) <= idx:
        raise ConfigError(f"level {bits} needs {idx + 1} planes, got {len(planes)}")
    gs = spec.group_size
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != K:
        raise ConfigError(f"x must be [T, {K}], got shape {x.shape}")
    n, g = np.shape(planes[0])[:2]
    t = x.shape[0]
    xp = np.zeros((t, g * gs), dtype=np.float64)
    xp[:, :K] = x
    xg = xp.reshape(t, g, gs).transpose(1, 0, 2)  # [G, T, gs]
    plane_scales, bias = level_affine(_level(scales, bits), _level(offsets, bits), bits, spec)
    y = np.zeros((t, n), dtype=np.float64)
    for p in range(idx + 1):
        q = unpack_plane(planes[p], spec.plane_widths[p], gs).reshape(n, g, gs)  # [N, G, gs]
        part = np.matmul(xg, q.transpose(1, 2, 0).astype(np.float64))  # [G, T, N] = Q_p x per group
        y += np.einsum("gtn,ng->tn", part, plane_scales[p])
    y += xg.sum(axis=2).T @ bias.T  # [T, G] @ [G, N]
    return y.astype(np.float32)


def quantize_activations(x: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-group int8 activations, as the int8 kernels compute them.

    ``xq = rint(x * (127 / max|x|))`` (round half to even, float32 arithmetic), ``sx = max|x| / 127``;
    a group of zeros gets ``sx = 0`` and ``xq = 0``. ``x`` [T, K] with K a multiple of the group.

    Returns
    -------
    xq : ndarray of int8, shape [T, G, group_size]
    sx : ndarray of float32, shape [T, G]
    """
    x = np.asarray(x, dtype=np.float32)
    t, k = x.shape
    if k % group_size:
        raise ConfigError(f"int8 activations need whole groups: K={k} is not a multiple of {group_size}")
    xg = x.reshape(t, k // group_size, group_size)
    amax = np.abs(xg).max(axis=2)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    xq = np.rint(xg * inv[..., None]).astype(np.int8)
    return xq, (amax / np.float32(127)).astype(np.float32)


def matmul_from_planes_int8(
    x: np.ndarray,
    planes: Sequence[np.ndarray],
    scales,
    offsets,
    bits: int,
    spec: QuantSpec,
    K: int,
) -> np.ndarray:
    """The int8-activation product that the int8 kernels compute (onnxruntime's ``accuracy_level 4``
    math): ``x`` quantized per group by ``quantize_activations``, exact integer dot products with
    each plane's codes, then ``y = sum_g a_k * sx * (sum_p 2**(k - level_p) (q_p . xq) - z_k sum(xq))
    + b_k * sum(x_g)``: the codes centred on the quantized side (so the activation error is not
    multiplied by the zero point ``z_k = 2**(k-1)``), the offset on the float group sums. Same
    arguments as ``matmul_from_planes``; K must be a multiple of the group size. Returns float32
    [T, N]."""
    idx = spec.level_index(bits)
    gs = spec.group_size
    xq, sx = quantize_activations(x, gs)                    # [T, G, gs], [T, G]
    xg = np.asarray(x, dtype=np.float64).reshape(xq.shape)
    n, g = np.shape(planes[0])[:2]
    a = np.asarray(_level(scales, bits), dtype=np.float64)  # [N, G]
    b = np.asarray(_level(offsets, bits), dtype=np.float64)
    xq64 = xq.astype(np.int64)
    dots = -(2 ** (bits - 1)) * xq64.sum(axis=2)[:, None, :]   # [T, 1, G] -> broadcast [T, N, G]
    for p in range(idx + 1):
        q = unpack_plane(planes[p], spec.plane_widths[p], gs).reshape(n, g, gs).astype(np.int64)
        dots = dots + (np.einsum("ngj,tgj->tng", q, xq64) << (bits - spec.ladder[p]))   # exact
    y = np.einsum("tng,ng->tn", dots * sx[:, None, :].astype(np.float64), a)
    y += xg.sum(axis=2) @ b.T
    return y.astype(np.float32)
