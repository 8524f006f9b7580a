"""Tensor-expression definitions of the kernels (what they compute; schedules live in schedules.py).

Shapes: matrix ``[N, K]`` (torch Linear layout), groups of ``gs`` along K, ``G = ceil(K/gs)``;
level ``bits`` weight ``w = a * (c - 2**(bits-1)) + b`` per group, ``c`` the level code rebuilt
from the planes (see ``edgemoe.quant``). Two formulations of ``y [T, N] = x [T, K] @ w.T``:

* :func:`matmul_lanes` (CPU). Byte ``j`` of a ``w``-bit plane holds elements ``j*(8/w) + s``
  (LSB-first), so the elements of ``L`` consecutive bytes at one sub-position ``s`` are
  ``L`` strided inputs. ``x`` is permuted once per call (``xu``) so that every weight-side load is
  contiguous bytes and every lane of a vector works on its own byte: per plane run and group,
  ``inner[l] = sum_{h,s} xu[g,t,h,s,l] * code(h*L + l, s)``; then
  ``part[l] += a * sum_runs 2**(bits-last) * inner[l] + (b - a*z) * xsl[g, t, l]`` with ``xsl`` the
  lane-wise group sums of x, and ``y = sum_l part[l]``. No float weight exists, not even a tile.
* :func:`matmul_natural` (GPU). ``w[n, k]`` as an inlined expression of the planes, consumed by
  a reduction over k; dlight's GEMV / matmul rules schedule it (the decode is inlined into the
  reduction, so again no weight buffer).
"""
from __future__ import annotations

import tvm
from tvm import te

from edgemoe.backends.tvm.specs import KernelSpec, plane_runs

F32 = "float32"


def lanes(quant, bits: int) -> int:
    """Vector lanes L of the CPU formulation: 16 (one AVX-512 / four NEON float vectors), or fewer
    where a group of the narrowest plane has fewer bytes."""
    w = min(r.width for r in plane_runs(quant, bits))
    return min(16, quant.group_size * w // 8)


def _placeholders(ks: KernelSpec, quant, words: bool, half_bits: bool):
    args = ks.args(quant, words, half_bits)
    ph = [te.placeholder(shape, dtype, name=name) for name, shape, dtype in args[:-1]]
    x, planes, scale, offset = ph[0], ph[1:-2], ph[-2], ph[-1]
    return x, planes, scale, offset


def _scalar(v, half_bits: bool):
    """A stored scale/offset as f32; ``half_bits``: v is a float16 bit pattern in uint16."""
    if not half_bits:
        return v.astype(F32)
    h = v.astype("uint32")
    sign = (h >> 15) & 1
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    normal = tvm.tirx.reinterpret(F32, (sign << 31) | ((exp + 112) << 23) | (mant << 13))
    sub = mant.astype(F32) * tvm.tirx.const(2.0 ** -24, F32)       # zero and subnormals
    sub = te.if_then_else(sign == 1, -sub, sub)
    return te.if_then_else(exp == 0, sub, normal)


def _x_at(x, t, k, kdim: int, kp: int):
    """x[t, k] with the padding columns K..Kp-1 reading 0."""
    if kdim == kp:
        return x[t, k]
    return te.if_then_else(k < kdim, x[t, te.min(k, kdim - 1)], tvm.tirx.const(0.0, F32))


def matmul_lanes(ks: KernelSpec, quant) -> list:
    """CPU formulation (module docstring); returns the TE tensors in call order."""
    gs, bits, T, N, K = quant.group_size, ks.bits, ks.tokens, ks.n, ks.k
    G = -(-K // gs)
    L = lanes(quant, bits)
    runs = plane_runs(quant, bits)
    x, planes, scale, offset = _placeholders(ks, quant, False, False)

    def xu_of(w):   # xu_w[g, t, h, s, l] = x[t, g*gs + (h*L + l)*(8/w) + s]; one group's tokens
        S = 8 // w  # are contiguous, so the GEMM's token loop stays in L1
        return te.compute((G, T, gs * w // 8 // L, S, L),
                          lambda g, t, h, s, l: _x_at(x, t, g * gs + (h * L + l) * S + s, K, G * gs),
                          name=f"xu{w}")

    xu = {}
    for r in runs:
        if r.width not in xu:
            xu[r.width] = xu_of(r.width)
    x0 = xu[runs[0].width]
    rh = te.reduce_axis((0, x0.shape[2]), "rh")
    rs = te.reduce_axis((0, x0.shape[3]), "rs")
    xsl = te.compute((G, T, L), lambda g, t, l: te.sum(x0[g, t, rh, rs, l], axis=[rh, rs]), name="xsl")

    def decode(run):
        w, mask = run.width, (1 << run.width) - 1

        def f(n, g, h, s, l):
            c = None
            for p, lvl in run.planes:
                q = (planes[p][n, g, h * L + l] >> (s * w).astype("uint8")) & tvm.tirx.const(mask, "uint8")
                if run.last > lvl:
                    q = q << tvm.tirx.const(run.last - lvl, "uint8")
                c = q if c is None else (c | q)
            return c.astype(F32)
        return f

    def dot(xw, dec, rh, rs):
        return lambda t, n, g, l: te.sum(xw[g, t, rh, rs, l] * dec[n, g, rh, rs, l], axis=[rh, rs])

    inners, coefs = [], []
    for i, r in enumerate(runs):
        xw = xu[r.width]
        H, S = xw.shape[2], xw.shape[3]
        dec = te.compute((N, G, H, S, L), decode(r), name=f"dec{i}")
        rh = te.reduce_axis((0, H), f"rh{i}")
        rs = te.reduce_axis((0, S), f"rs{i}")
        inners.append(te.compute((T, N, G, L), dot(xw, dec, rh, rs), name=f"inner{i}"))
        coefs.append(float(2 ** (bits - r.last)))
    z = float(2 ** (bits - 1))
    rg = te.reduce_axis((0, G), "rg")

    def part(t, n, l):
        a, b = scale[n, rg].astype(F32), offset[n, rg].astype(F32)
        acc = None
        for c, inner in zip(coefs, inners):
            v = inner[t, n, rg, l] if c == 1.0 else inner[t, n, rg, l] * tvm.tirx.const(c, F32)
            acc = v if acc is None else acc + v
        return te.sum(a * acc + (b - a * tvm.tirx.const(z, F32)) * xsl[rg, t, l], axis=rg)

    p = te.compute((T, N, L), part, name="part")
    rl = te.reduce_axis((0, L), "rl")
    y = te.compute((T, N), lambda t, n: te.sum(p[t, n, rl], axis=rl), name="y")
    return [x, *planes, scale, offset, y]


def matmul_natural(ks: KernelSpec, quant, half_bits: bool = False) -> list:
    """GPU formulation: ``y = sum_k x[t, k] * w(n, k)`` with ``w`` decoded inline; planes are read
    as uint32 words (element ``e`` of a ``w``-bit plane: bits ``e*w .. e*w+w-1`` of its group)."""
    gs, bits, T, N, K = quant.group_size, ks.bits, ks.tokens, ks.n, ks.k
    x, planes, scale, offset = _placeholders(ks, quant, True, half_bits)
    widths, ladder = quant.plane_widths, quant.ladder
    z = float(2 ** (bits - 1))

    def wf(n, k):
        g, e = k // gs, k % gs
        c = None
        for p, plane in enumerate(planes):
            w = widths[p]
            q = (plane[n, g, e * w // 32] >> ((e * w) % 32).astype("uint32")) & tvm.tirx.const((1 << w) - 1, "uint32")
            q = q.astype("int32")
            if bits > ladder[p]:
                q = q << (bits - ladder[p])
            c = q if c is None else (c | q)
        a, b = _scalar(scale[n, g], half_bits), _scalar(offset[n, g], half_bits)
        return a * (c.astype(F32) - tvm.tirx.const(z, F32)) + b

    w = te.compute((N, K), wf, name="w")
    r = te.reduce_axis((0, K), "k")
    y = te.compute((T, N), lambda t, n: te.sum(x[t, r] * w[n, r], axis=r), name="y")
    return [x, *planes, scale, offset, y]


def swiglu(ks: KernelSpec) -> list:
    """``h [T, I] = silu(gu[:, :I]) * gu[:, I:]`` (same formula as the numpy backends)."""
    gu = te.placeholder((ks.tokens, ks.k), F32, name="gu")
    i = ks.n

    def f(t, j):
        g = gu[t, j]
        return g / (tvm.tirx.const(1.0, F32) + te.exp(-g)) * gu[t, j + i]

    return [gu, te.compute((ks.tokens, ks.n), f, name="h")]
