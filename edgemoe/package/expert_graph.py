"""The per-expert ONNX graph at one level of the ladder, over the bytes of its bit-nested record.

One graph file per expert and level (``experts/L003/E017.k4.onnx``): it holds no weights, only
external-data references into the layer's record file, covering exactly the record prefix of that
level, so stock onnxruntime loads and runs it standalone and reads only what the level needs.

Math (matryoshka level k with planes 1..p, see ``edgemoe.quant``): per group of the input dim,
``W_k = a_k * (c_k - 2^(k-1)) + b_k`` with ``c_k = sum_j 2^(k - level_j) * q_j``. So

    y = sum_j MatMulNBits(x, plane_j, scales = a_k * 2^(k - level_j), zero point z_j)
        + groupsum(x) @ b_k^T
with z_1 = 2^(w_1 - 1) and z_j = 0 after, so that sum_j 2^(k - level_j) z_j = 2^(k-1).

and no full-precision weight is ever materialised. The expert is SwiGLU:
``down(silu(gate x) * up x)`` with gate and up fused as one [2I, H] matrix (rows 0:I gate), or
gpt-oss's clamped form with biases (``backends.reference.glu``): the biases are record tensors too.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from edgemoe.package.onnx_util import MS_DOMAIN, GraphBuilder
from edgemoe.quant.record import RecordLayout

X, Y = "x", "y"
PLAIN_SWIGLU = ("silu", 1.702, 7.0)   # (activation, alpha, limit): SwiGLU; alpha/limit unused


def act_of(arch) -> tuple[str, float, float]:
    """The expert activation settings of a MoEArch as (activation, alpha, limit) (the plain SwiGLU
    for None: synthetic records without a model, as the benchmarks and calibration make)."""
    return PLAIN_SWIGLU if arch is None else (arch.expert_act, arch.swiglu_alpha, arch.swiglu_limit)
ACCURACY_LEVEL = 4  # onnxruntime MatMulNBits compute type; 4 = int8 activations (the fast path)  # graph input [T, H] float32, output [T, H] float32


def _linear(b: GraphBuilder, x: str, matrix: str, layout: RecordLayout, bits: int,
            location: str, base: int) -> str:
    """x [T, K] -> x @ W_k^T [T, N] for one matrix of the record at level ``bits``."""
    (n, k), = [(n, k) for name, n, k in layout.matrices if name == matrix]
    spec = layout.spec

    def ext(slot):
        return b.external(slot.name, slot.dtype, slot.shape, location,
                          base + slot.offset, slot.nbytes)

    if spec.scheme == "float32":
        w = ext(layout.slot(matrix, "weight", bits))
        return b.op("Gemm", x, w, transB=1)

    gs = spec.group_size
    groups = -(-k // gs)
    a = b.op("Cast", ext(layout.slot(matrix, "scale", bits)), to=TensorProto.FLOAT)   # [N, G]
    off = b.op("Cast", ext(layout.slot(matrix, "offset", bits)), to=TensorProto.FLOAT)  # [N, G]
    level_idx = spec.ladder.index(bits)
    acc = None
    for p in range(level_idx + 1):
        width, level_p = spec.plane_widths[p], spec.ladder[p]
        plane = ext(layout.slot(matrix, "plane", spec.ladder[p]))                     # [N, G, gs*w/8]
        scale = b.op("Mul", a, b.const(np.float32(2.0 ** (bits - level_p))))      # plane weight in c_k
        # packed uint8 zero points: 2^(w-1) on plane 1, 0 on the others, so the planes' sum is
        # a_k * (c_k - 2^(k-1)) exactly: centred, which keeps the int8-activation error minimal
        zp = (1 << (width - 1)) if p == 0 else 0
        zp_byte = sum(zp << (width * j) for j in range(8 // width))
        zp_len = -(-groups * width // 8)
        zeros = b.op("ConstantOfShape", b.const(np.array([n, zp_len], dtype=np.int64)),
                     value=onnx.helper.make_tensor("zp", TensorProto.UINT8, [1], [zp_byte]))
        y = b.op("MatMulNBits", x, plane, scale, zeros, domain=MS_DOMAIN,
                 K=k, N=n, bits=width, block_size=gs, accuracy_level=ACCURACY_LEVEL)
        acc = y if acc is None else b.op("Add", acc, y)
    return b.op("Add", acc, offset_term(b, x, k, gs, off))


def offset_term(b: GraphBuilder, x: str, k: int, gs: int, offset: str) -> str:
    """The per-group offsets' share of ``x @ W_k^T``: group sums of x [T, G] @ b_k^T [G, N]
    (``offset`` a float [N, G] value of the graph)."""
    groups = -(-k // gs)
    xp = x
    if groups * gs != k:
        xp = b.op("Pad", x, b.const(np.array([0, 0, 0, groups * gs - k], dtype=np.int64)))
    xg = b.op("ReduceSum", b.op("Reshape", xp, b.const(np.array([0, groups, gs], dtype=np.int64))),
              b.const(np.array([2], dtype=np.int64)), keepdims=0)
    return b.op("Gemm", xg, offset, transB=1)


def swiglu_graph(name: str, hidden: int, intermediate: int, linear, act=PLAIN_SWIGLU,
                 bias=None) -> onnx.ModelProto:
    """The SwiGLU expert ``down(silu(gate x) * up x)`` with gate and up fused as one [2I, H]
    matrix (rows 0:I gate); ``linear(b, x, matrix) -> value`` builds each matrix's product,
    ``bias(b, matrix) -> value`` (optional) its bias. ``act`` ("clamped", alpha, limit): gpt-oss's
    ``(clip(up, -limit, limit) + 1) * g * sigmoid(alpha g)`` with ``g = min(gate, limit)``."""
    b = GraphBuilder(name)
    b.input(X, TensorProto.FLOAT, ["T", hidden])

    def lin(x, m):
        y = linear(b, x, m)
        return y if bias is None else b.op("Add", y, bias(b, m))
    gu = lin(X, "gate_up")                                                         # [T, 2I]
    gate, up = b.op("Split", gu, b.const(np.array([intermediate, intermediate], dtype=np.int64)),
                    axis=1, n_out=2)
    kind, alpha, limit = act
    if kind == "silu":
        h = b.op("Mul", b.op("Mul", gate, b.op("Sigmoid", gate)), up)             # [T, I]
    else:
        lim = b.const(np.float32(limit))
        gate = b.op("Min", gate, lim)
        up = b.op("Clip", up, b.const(np.float32(-limit)), lim)
        glu = b.op("Mul", gate, b.op("Sigmoid", b.op("Mul", gate, b.const(np.float32(alpha)))))
        h = b.op("Mul", b.op("Add", up, b.const(np.float32(1))), glu)
    y = lin(h, "down")                                                             # [T, H]
    b.output(y, Y, TensorProto.FLOAT, ["T", hidden])
    return b.model()


def bias_input(layout: RecordLayout, location: str, base: int):
    """``swiglu_graph``'s ``bias`` over the record's bias slots (None without biases)."""
    if not layout.biases:
        return None

    def bias(b: GraphBuilder, m: str) -> str:
        t = layout.bias_slot(m)
        return b.external(t.name, t.dtype, t.shape, location, base + t.offset, t.nbytes)
    return bias


def expert_graph(layout: RecordLayout, bits: int, location: str, base: int,
                 hidden: int, intermediate: int, name: str = "expert",
                 act=PLAIN_SWIGLU) -> onnx.ModelProto:
    """Build the SwiGLU expert graph at level ``bits`` over the record at byte ``base`` of ``location``.

    Parameters
    ----------
    layout : the record layout (matrices ``gate_up`` [2I, H] and ``down`` [H, I])
    bits : a level of ``layout.spec.ladder``
    location : record file name, relative to the graph file's folder
    base : byte offset of this expert's record in that file
    act : the activation (``backends.reference.act_of(arch)``)
    """
    return swiglu_graph(name, hidden, intermediate,
                        lambda b, x, m: _linear(b, x, m, layout, bits, location, base), act,
                        bias_input(layout, location, base))
