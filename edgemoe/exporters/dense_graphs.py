"""ONNX graphs of the dense parts: embedding, one graph per decoder layer, final norm + LM head.

Built directly from numpy weights with onnx.helper (no torch tracing), mirroring the Hugging Face
math of each family as normalised in MoEArch. B sequences of S new tokens each; the KV cache holds
M positions per sequence (its capacity), of which each sequence has filled its own number.

Layer graph I/O (names are the contract with the runtime, see ``package/graph_io.py``):
  in : hidden [B, S, H], cos/sin [B, S, R] (R = rotary dim, HF's cat(freqs, freqs) form, at each
       sequence's positions), past_k / past_v [B, KVH, M, D], seqlens_k [B], total_len []
  out: MoE layer   -> residual [B, S, H] (h + shared expert), moe_in [B, S, H], router_logits [B, S, E]
       dense layer -> hidden_out [B, S, H]
       both        -> present_k / present_v [B, KVH, M, D]: the same buffer as past_k / past_v
The runtime finishes a MoE layer as ``residual + residual_multiplier * sum_e w_e * expert_e(moe_in)``
(post-norm layouts: ``residual + rmsnorm(sum, moe_out_norm)``). A MoE layer graph also holds the
router's selection bias where it has one (``SELECTION_BIAS``), for the runtime's routing.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from edgemoe.arch import MoEArch
from edgemoe.package.graph_io import (KV_SCALE_INPUTS, MOE_OUT_NORM, ROUTER_BIAS, ROUTER_WEIGHT,
                                      SELECTION_BIAS, kv_head_dim)
from edgemoe.package.onnx_util import MS_DOMAIN, ExternalData, GraphBuilder, RowBlocks
from edgemoe.quant.dense import FLOAT32, ZERO, DenseQuant, quantize_int4_groups, quantize_int8_groups

F = TensorProto.FLOAT


# MatMulNBits compute type for dense weights: 4 = int8 activations, as the experts. For 8-bit
# weights onnxruntime (1.2x, x86) has a fast kernel only there: at 0 or 1 (float32 activations) it
# dequantizes the whole matrix on every call (measured on the demo's [4096, 256] LM head: 2.5 ms vs
# 0.017 ms at one token, and +3.4 MiB of transient buffers against +1.7 MiB).
DENSE_ACCURACY_LEVEL = 4


def _quantized_rows(w, group_size: int, bits: int = 8):
    """W [N, K] (array or RowBlocks) -> (codes [N, G*gs*bits/8] uint8, scales [N, G] float32), each
    an array or, for row blocks, row blocks (quantized block by block; each pass re-reads them)."""
    quantize = quantize_int8_groups if bits == 8 else quantize_int4_groups
    if not isinstance(w, RowBlocks):
        codes, scales = quantize(w, group_size)
        return codes.reshape(len(codes), -1), scales
    n, k = w.shape
    g = -(-k // group_size)

    def part(i):
        return lambda: (quantize(blk, group_size)[i].reshape(len(blk), -1) for blk in w.blocks())
    return (RowBlocks((n, g * group_size * bits // 8), np.dtype(np.uint8), part(0)),
            RowBlocks((n, g), np.dtype(np.float32), part(1)))


def _i64(*v):
    return np.array(v, dtype=np.int64)


def _norm(b: GraphBuilder, x: str, arch: MoEArch, w: np.ndarray, bias: np.ndarray | None,
          eps: float | None = None) -> str:
    """RMSNorm (fp32 variance, as HF) or LayerNorm with bias, over the last axis (``eps``: another
    epsilon than the arch's)."""
    eps = float(arch.norm_eps if eps is None else eps)
    if arch.norm == "layer":
        bias = np.zeros_like(w) if bias is None else bias
        return b.op("LayerNormalization", x, b.const(w), b.const(bias), axis=-1, epsilon=eps)
    var = b.op("ReduceMean", b.op("Mul", x, x), axes=[-1], keepdims=1)
    y = b.op("Div", x, b.op("Sqrt", b.op("Add", var, b.const(np.float32(eps)))))
    return b.op("Mul", y, b.const(w))


def _linear(b: GraphBuilder, x: str, w: np.ndarray, bias: np.ndarray | None = None,
            name: str | None = None, dq: DenseQuant = FLOAT32) -> str:
    """x [..., K] @ w[N, K]^T (+ bias) -> [..., N]. float32: weight stored transposed once, as
    [K, N]. int8 / int4: codes [N, G, gs * bits / 8] + scales [N, G] for MatMulNBits (the router
    stays float32)."""
    n, k = w.shape
    if not dq.quantized or name == ROUTER_WEIGHT or n == 1:
        y = b.op("MatMul", x, b.const_t(w, name))
    else:
        gs = dq.group_size
        codes, scales = _quantized_rows(w, gs, dq.bits)
        y = b.op("MatMulNBits", x, b.const(codes, shape=(n, -(-k // gs), gs * dq.bits // 8)),
                 b.const(scales), domain=MS_DOMAIN, K=k, N=n, bits=dq.bits, block_size=gs,
                 accuracy_level=DENSE_ACCURACY_LEVEL)
    return y if bias is None else b.op("Add", y, b.const(bias))


def _swiglu(b: GraphBuilder, x: str, w: dict, role: str, dq: DenseQuant) -> str:
    """down(silu(gate(x)) * up(x)) from ``w[role + "_gate"]`` etc. (+ their ``_bias``)."""
    lin = lambda h, p: _linear(b, h, w[f"{role}_{p}"], w.get(f"{role}_{p}_bias"), dq=dq)  # noqa: E731
    g = lin(x, "gate")
    return lin(b.op("Mul", b.op("Mul", g, b.op("Sigmoid", g)), lin(x, "up")), "down")


def _rope(b: GraphBuilder, x: str, arch: MoEArch, d: int | None = None) -> str:
    """x [B, S, heads, D] -> x*cos + rotate_half(x)*sin on the first R dims of D (cos/sin [B, S, R]
    broadcast over the heads). ``d``: D when it is not the arch's head_dim (MLA's rope parts)."""
    r, d = arch.rope_dim, d or arch.head_dim
    rot, rest = (x, None) if r == d else b.op("Split", x, b.const(_i64(r, d - r)), axis=-1, n_out=2)
    x1, x2 = b.op("Split", rot, b.const(_i64(r // 2, r // 2)), axis=-1, n_out=2)
    rotated = b.op("Concat", b.op("Neg", x2), x1, axis=-1)
    cos, sin = (b.op("Unsqueeze", t, b.const(_i64(2))) for t in ("cos", "sin"))    # [B, S, 1, R]
    y = b.op("Add", b.op("Mul", rot, cos), b.op("Mul", rotated, sin))
    return y if rest is None else b.op("Concat", y, rest, axis=-1)


def _split_heads(b: GraphBuilder, x: str, n: int, d: int) -> str:
    """[B, S, n*d] -> [B, S, n, d]"""
    return b.op("Reshape", x, b.const(_i64(0, 0, n, d)))


def _merge_heads(b: GraphBuilder, x: str, n: int, d: int) -> str:
    """[B, S, n, d] -> [B, S, n*d]"""
    return b.op("Reshape", x, b.const(_i64(0, 0, n * d)))


# onnx element type and the GroupQueryAttention compute type of each KV cache type: onnxruntime's CPU
# kernel computes in float16 over a float16 cache and in float32 over a float32 or int8 one
_KV_ELEM = {"f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "int8": TensorProto.INT8}


def _gqa(b: GraphBuilder, q: str, k: str, v: str, arch: MoEArch, kv: str, window: int = 0,
         sinks: np.ndarray | None = None) -> str:
    """Attention over the in-place KV cache: q [B, S, NH*D], k/v [B, S, KVH*D] (RoPE applied) ->
    [B, S, NH*D]. onnxruntime's GroupQueryAttention appends k/v at each sequence's position
    (``seqlens_k``) into past_k/past_v, which the runtime binds to the same buffer as the present
    outputs, so no step copies the past; causal over each sequence's own length. ``window`` > 0:
    each query sees its last ``window`` keys (itself included) and the buffers are window-sized
    (``sliding_window_cache``: the op evicts in place). ``sinks`` [NH]: a learned logit per head
    that joins each softmax's denominator and nothing else (``head_sink``)."""
    kvh, width = arch.kv_heads_and_dim
    d = kv_head_dim(width)
    elem = _KV_ELEM[kv]
    cap = "W" if window else "M"
    b.input("past_k", elem, ["B", kvh, cap, d])
    b.input("past_v", elem, ["B", kvh, cap, d])
    b.input("seqlens_k", TensorProto.INT32, ["B"])
    b.input("total_len", TensorProto.INT32, [])
    ins = [q, k, v, "past_k", "past_v", "seqlens_k", "total_len"] + [""] * 7
    attrs = {}
    if kv == "f16":
        ins[:3] = [b.op("Cast", t, to=TensorProto.FLOAT16) for t in ins[:3]]
    if sinks is not None:         # in the attention's compute type
        ins[11] = b.const(sinks.astype(np.float16 if kv == "f16" else np.float32))
    if kv == "int8":    # per-channel scales of the codes, calibrated at export (see kv_scales)
        for name in KV_SCALE_INPUTS:
            b.input(name, F, [kvh * d])
        ins[12:14] = KV_SCALE_INPUTS
        attrs = dict(k_quant_type="PER_CHANNEL", v_quant_type="PER_CHANNEL", kv_cache_bit_width=8)
    if window:   # the op's window, as transformers', counts the query itself (checked by parity)
        attrs.update(local_window_size=window, sliding_window_cache=1)
    while ins[-1] == "":
        ins.pop()
    out, pk, pv = b.op("GroupQueryAttention", *ins, n_out=3, domain=MS_DOMAIN, num_heads=arch.num_heads,
                       kv_num_heads=kvh, scale=float(arch.scale), **attrs)
    b.output(pk, "present_k", elem, ["B", kvh, cap, d])
    b.output(pv, "present_v", elem, ["B", kvh, cap, d])
    return b.op("Cast", out, to=F) if kv == "f16" else out


def _attention(b: GraphBuilder, x: str, arch: MoEArch, w: dict, dq: DenseQuant, kv: str,
               window: int = 0) -> str:
    if arch.attention == "mla":
        return _mla(b, x, arch, w, dq, kv)
    nh, kvh, d = arch.num_heads, arch.num_kv_heads, arch.head_dim
    q = _linear(b, x, w["q"], w.get("q_bias"), dq=dq)
    k = _linear(b, x, w["k"], w.get("k_bias"), dq=dq)
    v = _linear(b, x, w["v"], w.get("v_bias"), dq=dq)
    if arch.qk_norm == "full":          # OLMoE: RMSNorm over the whole projection, then clip
        q = _norm(b, q, arch, w["q_norm"], None)
        k = _norm(b, k, arch, w["k_norm"], None)
    if arch.clip_qkv:
        lo, hi = b.const(np.float32(-arch.clip_qkv)), b.const(np.float32(arch.clip_qkv))
        q, k, v = (b.op("Clip", t, lo, hi) for t in (q, k, v))
    q, k = _split_heads(b, q, nh, d), _split_heads(b, k, kvh, d)          # [B, S, heads, D]
    if arch.qk_norm == "per_head" and not arch.qk_norm_after_rope:   # Qwen3: RMSNorm over head_dim
        q = _norm(b, q, arch, w["q_norm"], None)
        k = _norm(b, k, arch, w["k_norm"], None)
    q, k = _rope(b, q, arch), _rope(b, k, arch)
    if arch.qk_norm == "per_head" and arch.qk_norm_after_rope:       # HunYuan
        q = _norm(b, q, arch, w["q_norm"], None)
        k = _norm(b, k, arch, w["k_norm"], None)
    dc = kv_head_dim(d)
    if dc == d:
        q, k = _merge_heads(b, q, nh, d), _merge_heads(b, k, kvh, d)
        ctx = _gqa(b, q, k, v, arch, kv, window, w.get("sinks"))           # [B, S, NH*D]
    else:
        # onnxruntime's kernel takes head sizes in multiples of 8: zero dims leave q.k unchanged
        # and give zero outputs, cut off again (the scale stays 1/sqrt(D), passed explicitly)
        pad = b.const(_i64(0, 0, 0, 0, 0, 0, 0, dc - d))
        q, k, v = (_merge_heads(b, b.op("Pad", t, pad), n, dc) for t, n in
                   ((q, nh), (k, kvh), (_split_heads(b, v, kvh, d), kvh)))
        ctx = _split_heads(b, _gqa(b, q, k, v, arch, kv, window, w.get("sinks")), nh, dc)  # [B,S,NH,Dc]
        ctx = b.op("Slice", ctx, b.const(_i64(0)), b.const(_i64(d)), b.const(_i64(3)))
        ctx = _merge_heads(b, ctx, nh, d)
    return _linear(b, ctx, w["o"], w.get("o_bias"), dq=dq)


def _mla(b: GraphBuilder, x: str, arch: MoEArch, w: dict, dq: DenseQuant, kv: str) -> str:
    """Multi-head latent attention in its absorbed form over a cache of [latent | k_pe] per token.

    q [B, S, NH, dn + dr] (q_proj, or q_a -> RMSNorm -> q_b), split into q_nope and q_pe (roped);
    kv_a gives [latent r | k_pe dr]: the latent RMSNorm'ed, k_pe roped (one head, shared). With
    kv_b's per-head blocks W_uk [dn, r] and W_uv [dv, r], q_nope . (W_uk latent) = (q_nope W_uk)
    . latent, so each head's query becomes [q_nope W_uk | q_pe] against keys [latent | k_pe], and
    its output is W_uv (sum_j p_j latent_j): one GroupQueryAttention with one KV head whose K and V
    are the same cached vector (the first r of its output are the latent sum). -> [B, S, H]."""
    nh, dr, r, dv = arch.num_heads, arch.rope_dim, arch.kv_lora_rank, arch.v_head_dim
    dn = arch.head_dim - dr
    if arch.q_lora_rank:
        qa = _linear(b, x, w["q_a"], w.get("q_a_bias"), dq=dq)
        q = _linear(b, _norm(b, qa, arch, w["q_a_norm"], None, arch.latent_norm_eps), w["q_b"], dq=dq)
    else:
        q = _linear(b, x, w["q"], dq=dq)
    q_nope, q_pe = b.op("Split", _split_heads(b, q, nh, dn + dr), b.const(_i64(dn, dr)), axis=-1, n_out=2)
    q_pe = _rope(b, q_pe, arch, dr)                                                # [B, S, NH, dr]
    lat, k_pe = b.op("Split", _linear(b, x, w["kv_a"], w.get("kv_a_bias"), dq=dq),
                     b.const(_i64(r, dr)), axis=-1, n_out=2)
    lat = _norm(b, lat, arch, w["kv_a_norm"], None, arch.latent_norm_eps)         # [B, S, r]
    k_pe = _merge_heads(b, _rope(b, _split_heads(b, k_pe, 1, dr), arch, dr), 1, dr)
    kv_b = w["kv_b"].reshape(nh, dn + dv, r)
    w_uk = np.ascontiguousarray(kv_b[:, :dn, :])                                   # [NH, dn, r]
    w_uv = np.ascontiguousarray(kv_b[:, dn:, :].transpose(0, 2, 1))                # [NH, r, dv]
    q_lat = b.op("MatMul", b.op("Unsqueeze", q_nope, b.const(_i64(3))), b.const(w_uk))  # [B,S,NH,1,r]
    q_lat = b.op("Reshape", q_lat, b.const(_i64(0, 0, nh, r)))
    width = r + dr
    dc = kv_head_dim(width)
    q_cat, k_cat = b.op("Concat", q_lat, q_pe, axis=-1), b.op("Concat", lat, k_pe, axis=-1)
    if dc != width:   # zero dims to the kernel's head-size multiple: q.k unchanged, outputs cut
        q_cat = b.op("Pad", q_cat, b.const(_i64(0, 0, 0, 0, 0, 0, 0, dc - width)))
        k_cat = b.op("Pad", k_cat, b.const(_i64(0, 0, 0, 0, 0, dc - width)))
    ctx = _gqa(b, _merge_heads(b, q_cat, nh, dc), k_cat, k_cat, arch, kv)          # [B, S, NH*dc]
    ctx = b.op("Slice", _split_heads(b, ctx, nh, dc), b.const(_i64(0)), b.const(_i64(r)),
               b.const(_i64(3)))                                                   # [B, S, NH, r]
    out = b.op("MatMul", b.op("Unsqueeze", ctx, b.const(_i64(3))), b.const(w_uv))  # [B,S,NH,1,dv]
    return _linear(b, b.op("Reshape", out, b.const(_i64(0, 0, nh * dv))), w["o"], w.get("o_bias"), dq=dq)


def layer_graph(arch: MoEArch, index: int, w: dict[str, np.ndarray],
                data: ExternalData | None = None, dq: DenseQuant = FLOAT32,
                kv: str = "f32") -> onnx.ModelProto:
    """The decoder layer ``index`` as an ONNX model (weights as initializers; saved as external data).

    ``w`` holds canonical roles: attn_norm(.bias), q, k, v, o (+ *_bias), q_norm, k_norm, mlp_norm(.bias),
    then router (+ shared_gate, shared_up, shared_down, shared_expert_gate) for a MoE layer, or
    mlp_gate, mlp_up, mlp_down for a dense one. With ``data``, large weights are written to it as
    the graph is built (see ``PackageWriter.write_graph``); the same holds for the graphs below.
    ``kv``: the KV cache's element type (``KV_DTYPES``); the graphs of one layer differ only there,
    so the exporter builds the others over the first one's weights file (``ReplayData``).
    """
    H = arch.hidden_size
    b = GraphBuilder(f"layer{index:03d}", data)
    b.input("hidden", F, ["B", "S", H])
    b.input("cos", F, ["B", "S", arch.rope_dim])
    b.input("sin", F, ["B", "S", arch.rope_dim])
    rm = b.const(np.float32(arch.residual_multiplier))
    if arch.post_norm:      # h = x + norm(attn(x)); the MLP reads h itself, its output is normed
        attn = _attention(b, "hidden", arch, w, dq, kv, arch.window(index))
        h = b.op("Add", "hidden", _norm(b, attn, arch, w["attn_out_norm"], None))
        x2 = h
    else:
        x = _norm(b, "hidden", arch, w["attn_norm"], w.get("attn_norm.bias"))
        h = b.op("Add", "hidden", b.op("Mul", _attention(b, x, arch, w, dq, kv, arch.window(index)), rm))
        x2 = _norm(b, h, arch, w["mlp_norm"], w.get("mlp_norm.bias"))
    if arch.is_moe_layer(index):
        b.output(x2, "moe_in", F, ["B", "S", H])
        logits = _linear(b, x2, w["router"], name=ROUTER_WEIGHT)
        if arch.router_bias:
            logits = b.op("Add", logits, b.const(w["router_bias"].astype(np.float32), ROUTER_BIAS))
        b.output(logits, "router_logits", F, ["B", "S", arch.num_experts])
        if arch.router.selection_bias:    # not an op's input: the runtime's routing reads it
            b.const(w["router_selection_bias"].astype(np.float32), SELECTION_BIAS)
        if arch.post_norm:
            b.const(w["mlp_out_norm"].astype(np.float32), MOE_OUT_NORM)
        residual = h
        if arch.shared_intermediate_size:
            s = _swiglu(b, x2, w, "shared", dq)
            if arch.shared_expert_gate:
                s = b.op("Mul", b.op("Sigmoid", _linear(b, x2, w["shared_expert_gate"], dq=dq)), s)
            residual = b.op("Add", h, b.op("Mul", s, rm))
        b.output(residual, "residual", F, ["B", "S", H])
    else:
        mlp = _swiglu(b, x2, w, "mlp", dq)
        if arch.post_norm:
            mlp = _norm(b, mlp, arch, w["mlp_out_norm"], None)
        b.output(b.op("Add", h, b.op("Mul", mlp, rm)), "hidden_out", F, ["B", "S", H])
    return b.model()


def embed_graph(arch: MoEArch, embed: np.ndarray | RowBlocks,
                data: ExternalData | None = None, dq: DenseQuant = FLOAT32) -> onnx.ModelProto:
    """ids [T] int64 -> hidden [T, H] (times embedding_multiplier); ``embed`` [V, H] may be row blocks.
    int8: only the gathered rows are dequantized, ``(codes[ids] - 128) * scales[ids]`` per group
    (an int4 package's embedding is int8: ``DenseQuant.embedding``)."""
    b = GraphBuilder("embed", data)
    b.input("ids", TensorProto.INT64, ["T"])
    dq = dq.embedding
    if dq.quantized:
        v, hid = embed.shape
        gs = dq.group_size
        g = -(-hid // gs)
        codes, scales = _quantized_rows(embed, gs)
        rows = b.op("Gather", b.const(codes), "ids", axis=0)                          # [T, G*gs] uint8
        rows = b.op("Sub", b.op("Cast", rows, to=F), b.const(np.float32(ZERO)))
        rows = b.op("Reshape", rows, b.const(_i64(-1, g, gs)))                        # [T, G, gs]
        s = b.op("Unsqueeze", b.op("Gather", b.const(scales), "ids", axis=0), b.const(_i64(2)))
        h = b.op("Reshape", b.op("Mul", rows, s), b.const(_i64(-1, g * gs)))          # [T, G*gs]
        if g * gs != hid:
            h = b.op("Slice", h, b.const(_i64(0)), b.const(_i64(hid)), b.const(_i64(1)))
    else:
        h = b.op("Gather", b.const(embed), "ids", axis=0)
    if arch.embedding_multiplier != 1.0:
        h = b.op("Mul", h, b.const(np.float32(arch.embedding_multiplier)))
    b.output(h, "hidden", F, ["T", arch.hidden_size])
    return b.model()


def head_graph(arch: MoEArch, w: dict, data: ExternalData | None = None,
               dq: DenseQuant = FLOAT32) -> onnx.ModelProto:
    """hidden [T, H] -> final norm -> logits [T, V] (+ bias, / logits_scaling). ``w["lm_head"]`` [V, H]
    (an array or row blocks) is stored transposed, as [H, V], written block by block to ``data``."""
    b = GraphBuilder("head", data)
    b.input("hidden", F, ["T", arch.hidden_size])
    x = _norm(b, "hidden", arch, w["final_norm"], w.get("final_norm.bias"))
    logits = _linear(b, x, w["lm_head"], w.get("lm_head.bias"), dq=dq)
    if arch.logits_scaling != 1.0:
        logits = b.op("Div", logits, b.const(np.float32(arch.logits_scaling)))
    b.output(logits, "logits", F, ["T", arch.vocab_size])
    return b.model()
