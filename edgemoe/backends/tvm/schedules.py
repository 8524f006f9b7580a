"""Hand schedules for the llvm CPU targets, dlight rules for the GPU targets.

Every buffer argument is declared 1-byte aligned (:func:`unaligned`): the planes, scales and
offsets are views into record buffers at whatever address the loader gave them, and TVM's
default (64-byte aligned arguments) lets LLVM emit aligned vector loads that fault otherwise.
"""
from __future__ import annotations

import re

import tvm
import tvm.script
from tvm import te
from tvm import s_tir

from edgemoe.backends.tvm import compute
from edgemoe.backends.tvm.specs import KernelSpec, plane_runs

_BUF = re.compile(r'T\.Buffer\(\((.*?)\), "(\w+)"\)')


def unaligned(func):
    """``func`` with every buffer parameter declared ``align=1``."""
    text = func.script()
    i = text.index("def main(")
    j = text.index("):\n", i) + 2
    sig = _BUF.sub(r'T.Buffer((\1), "\2", align=1)', text[i:j])
    return tvm.script.from_source(text[:i] + sig + text[j:])


def _prim_func(tensors, name: str):
    return unaligned(te.create_prim_func(tensors)).with_attr("global_symbol", name)


# ---------------------------------------------------------------- CPU (llvm)

def _cpu_matmul(ks: KernelSpec, quant, rows: int | None = None):
    """Loop nest per parallel task of ``rows`` output rows (lanes ``l`` vectorized)::

        part[T, rows, L] local
        for g in G:
          [T > 1] dec_r[rows, h, s, l] = codes      local, decoded once, used by every token
          for t in T:
            for n in rows (unrolled: independent FMA chains)
              inner_r[l] = sum_{h,s} xu[t,g,h,s,l] * code     (h, s unrolled)
              part[t, n, l] += a * sum_r coef_r inner_r[l] + (b - a z) * xsl[t, g, l]
        y[t, n] = sum_l part[t, n, l]
    """
    sch = s_tir.Schedule(_prim_func(compute.matmul_lanes(ks, quant), ks.name))
    runs = plane_runs(quant, ks.bits)
    rows = rows or (8 if ks.tokens == 1 else 4)     # measured best on x86 (AVX-512) at both T
    yb, pb = sch.get_sblock("y"), sch.get_sblock("part")
    t, n, _ = sch.get_loops(yb)
    no, ni = sch.split(n, [None, min(rows, ks.n)])
    sch.reorder(no, ni, t)
    # unit loops are kept everywhere so that loop positions do not depend on the shapes
    sch.compute_at(pb, no, preserve_unit_loops=True)
    sch.set_scope(pb, 0, "local")
    *_, pt, pn, pl, pg = sch.get_loops(pb)
    sch.reorder(pg, pt, pn, pl)                 # rows innermost: independent FMA chains
    sch.unroll(pn)
    depth = len(sch.get_loops(pb)) - 1          # loops down to and including pn
    reductions = []
    for i in range(len(runs)):
        db, ib = sch.get_sblock(f"dec{i}"), sch.get_sblock(f"inner{i}")
        if ks.tokens == 1:
            sch.compute_inline(db)
        sch.compute_at(ib, pn, preserve_unit_loops=True)
        sch.set_scope(ib, 0, "local")
        *_, l_, rh, rs = sch.get_loops(ib)[depth:]       # (t, n, g) unit, lanes, reduction
        sch.reorder(rh, rs, l_)
        sch.vectorize(l_)
        sch.unroll(rh)
        sch.unroll(rs)
        reductions.append((ib, rh))
        if ks.tokens > 1:
            sch.compute_at(db, pg, preserve_unit_loops=True)
            sch.set_scope(db, 0, "local")
            *_, dn, dg, dh, ds, dl = sch.get_loops(db)
            sch.vectorize(dl)
            sch.unroll(dh)
            sch.unroll(ds)
    sch.vectorize(pl)
    _parallel(sch, no, -(-ks.n // rows))
    # vectorize/parallel need complete or reduction blocks: decompose only now
    sch.decompose_reduction(pb, pg)
    for ib, r0 in reductions:
        sch.decompose_reduction(ib, r0)
    return sch.mod["main"]


TASKS = 4    # parallel tasks per CPU kernel call (the boards have 4-8 cores; the runtime uses 1)


def _parallel(sch, loop, extent: int) -> None:
    """Run ``loop`` (of ``extent`` row blocks) as at most TASKS parallel tasks. Each task pays for
    its local buffers (workspace calls): one task per row block made a one-thread call of the
    int8 GEMV 2-7x slower than serial loops (measured)."""
    tasks = min(TASKS, extent)
    if tasks > 1:
        sch.parallel(sch.split(loop, [tasks, None])[0])


TOKEN_TILE = 8
INT8_ROWS = {1: 4, 4: 2, 16: 1}    # rows per block by token count (measured, see _cpu_matmul_int8)


def _cpu_matmul_int8(ks: KernelSpec, quant, rows: int | None = None):
    """The int8-activation GEMV / GEMM (``compute.matmul_int8``), ``rows`` rows per block. At T=1,
    4 rows: measured against 2, 8, 16 and 32 on whole OLMoE and Mixtral experts, AVX-512 Zen 5
    (best or within 5% where the weights stay in cache, 1.5x faster where they stream from DRAM:
    fewer streams); at T=4 and 16 fewer rows keep every token's accumulators in registers::

        xq, sx, xs = quantize(x)                       once per call, at the root
        for each row block (at most TASKS parallel tasks):
          for each plane run r, for c in 64-byte blocks of the plane row:
            for n in rows (unrolled)
              code[S, 16, 4] = (plane bytes >> s*w) & mask     decoded once, in registers
              for t in tokens (unrolled)
                dot[16] = sum_s dot4(code[s], xq[t, c, s])   vpdpbusd / 4 sdot (int8dot)
                acc_r[t, n, :] += float(dot) * a*sx[t]*coef      16-lane FMA, scales shuffled
          off[t, n, :] = sum over groups of b*xs - a*z*sx*sum(xq), V groups per vector
          y[t, n] = hsum(sum_r acc_r[t, n, :]) + sum_j off[t, n, j]
    """
    from edgemoe.backends.tvm import int8dot

    rows = min(rows or INT8_ROWS.get(ks.tokens, 1), ks.n)
    intrin = int8dot.register(ks.isa)
    sch = s_tir.Schedule(_prim_func(compute.matmul_int8(ks, quant), ks.name))
    runs = plane_runs(quant, ks.bits)
    t, n = sch.get_loops(sch.get_sblock("y"))
    no, ni = sch.split(n, [None, rows])
    sch.reorder(no, ni, t)
    lb, sb, ob = sch.get_sblock("lanes"), sch.get_sblock("offsum"), sch.get_sblock("off")
    for b in (lb, sb):              # (t, n, reduction): all unrolled, one value per (t, n)
        sch.compute_at(b, no, preserve_unit_loops=True)
        sch.set_scope(b, 0, "local")
        sch.unroll(sch.get_loops(b)[-2])
        sch.unroll(sch.get_loops(b)[-3])
    xb = sch.get_sblock("accsum")
    sch.compute_at(xb, sch.get_loops(lb)[-2], preserve_unit_loops=True)
    sch.set_scope(xb, 0, "local")
    sch.vectorize(sch.get_loops(xb)[-1])
    sch.compute_at(ob, no, preserve_unit_loops=True)
    sch.set_scope(ob, 0, "local")
    *_, ot, on, oj, oq = sch.get_loops(ob)
    sch.reorder(oq, ot, on, oj)
    sch.unroll(ot)
    sch.unroll(on)
    sch.vectorize(oj)
    for i in range(len(runs)):
        ab = sch.get_sblock(f"acc{i}")
        sch.compute_at(ab, no, preserve_unit_loops=True)
        sch.set_scope(ab, 0, "local")
        *_, at, an, al, ac = sch.get_loops(ab)
        if ks.tokens > TOKEN_TILE:      # token tiles: each tile's accumulators stay in registers
            ato, at = sch.split(at, [None, TOKEN_TILE])
            sch.reorder(ato, ac, an, at, al)
        else:
            sch.reorder(ac, an, at, al)
        sch.unroll(an)
        sch.unroll(at)
        sch.vectorize(al)
        for name in (f"dot{i}", f"fa{i}"):
            b = sch.get_sblock(name)
            sch.compute_at(b, at, preserve_unit_loops=True)
            sch.set_scope(b, 0, "local")
        cb = sch.get_sblock(f"code{i}")
        sch.compute_at(cb, an, preserve_unit_loops=True)
        sch.set_scope(cb, 0, "local")
        *_, cs, cl, ck = sch.get_loops(cb)
        sch.unroll(cs)
        sch.vectorize(sch.fuse(cl, ck))
        *_, dl, drs, drk = sch.get_loops(sch.get_sblock(f"dot{i}"))
        sch.reorder(drs, dl, drk)
        sch.unroll(drs)
    _parallel(sch, no, -(-ks.n // rows))
    # parallel / vectorize need complete or reduction blocks: decompose and tensorize only now
    for i in range(len(runs)):
        db = sch.get_sblock(f"dot{i}")
        sch.decompose_reduction(db, sch.get_loops(db)[-3])
        sch.tensorize(sch.get_loops(sch.get_sblock(f"dot{i}_update"))[-2], intrin)
        ab = sch.get_sblock(f"acc{i}")
        sch.decompose_reduction(ab, sch.get_loops(ab)[-4])
    sch.decompose_reduction(ob, sch.get_loops(ob)[-4])
    sch.decompose_reduction(lb, sch.get_loops(lb)[-1])
    sch.tensorize(sch.get_loops(sch.get_sblock("lanes_update"))[-1], int8dot.register_hsum())
    return sch.mod["main"]


def _cpu_swiglu(ks: KernelSpec):
    sch = s_tir.Schedule(_prim_func(compute.swiglu(ks), ks.name))
    t, j = sch.get_loops(sch.get_sblock("h"))
    jo, ji = sch.split(j, [None, 16]) if ks.n % 16 == 0 else (j, None)
    sch.parallel(sch.fuse(t, jo))
    if ji is not None:
        sch.vectorize(ji)
    return sch.mod["main"]


def schedule_cpu(ks: KernelSpec, quant):
    """The scheduled llvm kernel ``ks.name`` (a PrimFunc)."""
    if ks.op == "swiglu":
        return _cpu_swiglu(ks)
    return _cpu_matmul_int8(ks, quant) if ks.activations == "int8" else _cpu_matmul(ks, quant)


# ---------------------------------------------------------------- GPU (cuda, opencl)

def schedule_gpu(ks: KernelSpec, quant, target, half_bits: bool = False):
    """``ks.name`` scheduled by dlight for ``target`` (GEMV at T=1, matmul / low-batch GEMV above,
    fallback for SwiGLU); a PrimFunc."""
    from tvm.s_tir import dlight as dl

    tensors = compute.swiglu(ks) if ks.op == "swiglu" else compute.matmul_natural(ks, quant, half_bits)
    mod = tvm.IRModule({ks.name: _prim_func(tensors, ks.name)})
    rules = [dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Matmul(), dl.gpu.Reduction(), dl.gpu.Fallback()]
    with target:
        return dl.ApplyDefaultSchedule(*rules)(mod)[ks.name]


def launch_dims(func) -> list[dict]:
    """Grid and block extents of each kernel a scheduled GPU PrimFunc launches, in launch order.

    A kernel is an outermost loop nest bound to ``blockIdx``/``threadIdx``; every extent here is a
    constant because every shape is static.
    """
    kernels: list[dict] = []

    def visit(stmt, inside: bool):
        if isinstance(stmt, tvm.tirx.For) and stmt.thread_binding is not None:
            tag = stmt.thread_binding.thread_tag
            if not inside:
                kernels.append({})
            kernels[-1][tag] = int(stmt.extent)
            visit(stmt.body, True)
            return
        for child in _children(stmt):
            visit(child, inside)

    visit(func.body, False)
    out = []
    for k in kernels:
        grid = [k.get(f"blockIdx.{a}", 1) for a in "xyz"]
        block = [k.get(f"threadIdx.{a}", 1) for a in "xyz"]
        out.append({"grid": grid, "block": block})
    return out


def _children(stmt):
    s = tvm.tirx
    if isinstance(stmt, s.SeqStmt):
        return list(stmt.seq)
    if isinstance(stmt, s_tir.SBlockRealize):
        return [stmt.block]
    if isinstance(stmt, s_tir.SBlock):
        return [stmt.body] + ([stmt.init] if stmt.init is not None else [])
    if isinstance(stmt, s.IfThenElse):
        return [stmt.then_case] + ([stmt.else_case] if stmt.else_case is not None else [])
    body = getattr(stmt, "body", None)
    return [body] if isinstance(body, tvm.tirx.Stmt) else []
