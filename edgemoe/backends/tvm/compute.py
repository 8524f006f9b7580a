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
* :func:`matmul_int8` (CPUs with integer SIMD: x86 AVX-512 VNNI / AVX2, aarch64 dotprod / NEON). ``x`` is
  quantized per group to int8 in the kernel (``xq = rint(x * 127 / max|x|)``, as onnxruntime's
  ``accuracy_level 4`` does), and each plane run's codes meet ``xq`` in the dot product
  (``int8dot``): 64 bytes of a plane (16 int32 lanes of 4 bytes, every lane inside one group) per
  intrinsic call and sub-position. Per lane,
  ``acc[l] += float(dot[l]) * a * sx * 2**(bits-last)``; the offset term
  ``sum_g b * xs - a * z * sx * sum(xq)`` runs over 16 groups per vector (``xs`` the float group
  sums; the zero point meets the *quantized* sums, so the codes are centred as in onnxruntime's
  graphs and the activation error is not multiplied by ``z``); ``y = sum_l acc[l] + offset term``.
  Reference: ``edgemoe.quant.matmul.matmul_from_planes_int8``.
* :func:`matmul_natural` (GPU). ``w[n, k]`` as an inlined expression of the planes, consumed by
  a reduction over k; dlight's GEMV / matmul rules schedule it (the decode is inlined into the
  reduction, so again no weight buffer).
"""
from __future__ import annotations

import tvm
from tvm import te

from edgemoe.backends.tvm.specs import KernelSpec, int8_group_lanes, plane_runs

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


def matmul_int8(ks: KernelSpec, quant) -> list:
    """int8-activation formulation (module docstring) for ``T = ks.tokens`` rows of ``x``: the
    codes of a block are decoded once and meet every token's activations. Returns the TE tensors
    in call order. Needs ``int8_fits(quant, K)``."""
    from edgemoe.backends.tvm.int8dot import BLOCK, LANE_BYTES, LANES

    gs, bits, T, N, K = quant.group_size, ks.bits, ks.tokens, ks.n, ks.k
    G = K // gs
    runs = plane_runs(quant, bits)
    x, planes, scale, offset = _placeholders(ks, quant, False, False)
    rj = te.reduce_axis((0, gs), "rj")
    amax = te.compute((T, G), lambda t, g: te.max(te.abs(x[t, g * gs + rj]), axis=rj), name="amax")
    rj2 = te.reduce_axis((0, gs), "rj2")
    xs = te.compute((T, G), lambda t, g: te.sum(x[t, g * gs + rj2], axis=rj2), name="xs")
    zero = tvm.tirx.const(0.0, F32)
    inv = te.compute((T, G), lambda t, g: te.if_then_else(
        amax[t, g] > zero, tvm.tirx.const(127.0, F32) / amax[t, g], zero), name="inv")
    sx = te.compute((T, G), lambda t, g: amax[t, g] / tvm.tirx.const(127.0, F32), name="sx")
    rj3 = te.reduce_axis((0, gs), "rj3")
    xqs = te.compute((T, G), lambda t, g: te.sum(te.round(x[t, g * gs + rj3] * inv[t, g]), axis=rj3),
                     name="xqs")

    def xq_of(w):   # xq[t, c, s, l, k]: token t's activation at sub-position s of plane byte c*64+4l+k
        S = 8 // w

        def f(t, c, s, l, k):
            e = (c * BLOCK + l * LANE_BYTES + k) * S + s
            return te.round(x[t, e] * inv[t, e // gs]).astype("int8")
        return te.compute((T, K * w // 8 // BLOCK, S, LANES, LANE_BYTES), f, name=f"xq{w}")

    xq = {}
    for r in runs:
        if r.width not in xq:
            xq[r.width] = xq_of(r.width)
    z = tvm.tirx.const(float(2 ** (bits - 1)), F32)
    accs = []
    for i, r in enumerate(runs):
        xw = xq[r.width]
        C, S = xw.shape[1], xw.shape[2]
        codes = te.compute((N, C, S, LANES, LANE_BYTES), _int8_codes(planes, r, gs), name=f"code{i}")
        rs, rk = te.reduce_axis((0, S), f"rs{i}"), te.reduce_axis((0, LANE_BYTES), f"rk{i}")
        dot = te.compute((T, N, C, LANES), _int8_dot(codes, xw, rs, rk), name=f"dot{i}")
        rc = te.reduce_axis((0, C), f"rc{i}")
        lane = _int8_lane(dot, rc, scale, sx, gs * r.width // 8, float(2 ** (bits - r.last)), str(i))
        accs.append(te.compute((T, N, LANES), lane, name=f"acc{i}"))
    # the offset term sum_g b * xs[g] - a z sx[g] sum(xq[g]), V groups per vector
    V = int8_group_lanes(quant, K)
    rq = te.reduce_axis((0, G // V), "rq")

    def off_f(t, n, j):
        g = rq * V + j
        return te.sum(offset[n, g].astype(F32) * xs[t, g] - scale[n, g].astype(F32) * (z * (sx[t, g] * xqs[t, g])),
                      axis=rq)
    off = te.compute((T, N, V), off_f, name="off")
    acc_all = te.compute((T, N, LANES), lambda t, n, l: sum((a[t, n, l] for a in accs[1:]), accs[0][t, n, l]),
                         name="accsum")
    rl = te.reduce_axis((0, LANES), "rl")
    lanes_sum = te.compute((T, N), lambda t, n: te.sum(acc_all[t, n, rl], axis=rl), name="lanes")
    rv = te.reduce_axis((0, V), "rv")
    off_sum = te.compute((T, N), lambda t, n: te.sum(off[t, n, rv], axis=rv), name="offsum")
    y = te.compute((T, N), lambda t, n: lanes_sum[t, n] + off_sum[t, n], name="y")
    return [x, *planes, scale, offset, y]


def _int8_codes(planes, run, gs: int):
    """code[n, c, s, l, k]: the run's code (uint8) at sub-position s of plane byte c*64 + 4l + k."""
    from edgemoe.backends.tvm.int8dot import BLOCK, LANE_BYTES

    w, nb = run.width, gs * run.width // 8

    def f(n, c, s, l, k):
        byte = c * BLOCK + l * LANE_BYTES + k
        v = None
        for p, lvl in run.planes:
            q = (planes[p][n, byte // nb, byte % nb] >> (s * w).astype("uint8")) & \
                tvm.tirx.const((1 << w) - 1, "uint8")
            if run.last > lvl:
                q = q << tvm.tirx.const(run.last - lvl, "uint8")
            v = q if v is None else (v | q)
        return v
    return f


def _int8_dot(codes, xw, rs, rk):
    return lambda t, n, c, l: te.sum(codes[n, c, rs, l, rk].astype("int32") * xw[t, c, rs, l, rk].astype("int32"),
                                     axis=[rs, rk])


def _int8_lane(dot, rc, scale, sx, nb: int, coef: float, name: str):
    """acc[n, l] = sum_c float(dot) * fa, with ``fa = a*sx*coef`` per (row, group) computed by a
    small stage per block, so the lane loop reads it with constant in-register shuffles."""
    from edgemoe.backends.tvm.int8dot import BLOCK, LANE_BYTES

    T, N, C = dot.shape[0], dot.shape[1], dot.shape[2]
    gpb, lpg = BLOCK // nb, nb // LANE_BYTES     # groups per block, lanes per group
    coef_c = tvm.tirx.const(coef, F32)

    def group(c, gi):
        return c * gpb + gi

    fa = te.compute((T, N, C, gpb), lambda t, n, c, gi: scale[n, group(c, gi)].astype(F32)
                    * (sx[t, group(c, gi)] * coef_c), name=f"fa{name}")

    def f(t, n, l):
        return te.sum(dot[t, n, rc, l].astype(F32) * fa[t, n, rc, l // lpg], axis=rc)
    return f


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
