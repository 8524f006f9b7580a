"""Input and output names of the dense layer graphs: the contract between exporter and runtime."""

# hidden [B, S, H], cos/sin [B, S, R], past_k/past_v [B, KVH, M, D] (the KV cache, M = its capacity:
# bound to the same buffer as present_k/present_v, so onnxruntime's GroupQueryAttention writes the
# new entries in place), seqlens_k [B] int32 (each sequence's length after this step, minus 1),
# total_len [] int32 (the longest of them); the int8 variant adds k_scale/v_scale [KVH*D] float32.
LAYER_INPUTS = ("hidden", "cos", "sin", "past_k", "past_v", "seqlens_k", "total_len")
KV_SCALE_INPUTS = ("k_scale", "v_scale")
MOE_OUTPUTS = ("residual", "moe_in", "router_logits")
DENSE_OUTPUTS = ("hidden_out",)
KV_OUTPUTS = ("present_k", "present_v")
# KV cache element types a layer graph comes in (one small graph file per type, one weights file),
# with the numpy type of each
KV_NUMPY = {"f16": "float16", "f32": "float32", "int8": "int8"}
KV_DTYPES = tuple(KV_NUMPY)
DEFAULT_KV_DTYPE = "f16"
ROUTER_WEIGHT = "router_weight"   # initializer [H, E] of a MoE layer graph (read for prefetch)
ROUTER_BIAS = "router_bias"       # [E], added to the logits in the graph (gpt-oss)
# [E] float32, per MoE layer where the router chooses on biased scores (DeepSeek-V3's
# e_score_correction_bias and its cousins): held by the layer graph, used by the runtime's routing
SELECTION_BIAS = "router_selection_bias"
MOE_OUT_NORM = "moe_out_norm"     # [H] RMSNorm weight the runtime applies to a post-norm MoE's sum


def kv_head_dim(head_dim: int) -> int:
    """The KV cache's head size: onnxruntime's GroupQueryAttention takes multiples of 8, so other
    head sizes are zero-padded to the next one."""
    return -(-int(head_dim) // 8) * 8


def kv_row_bytes(arch, kv: str) -> int:
    """K and V of one position in one layer, in a cache of element type ``kv`` (latent attention:
    one buffer [latent | k_pe] is both)."""
    import numpy as np
    heads, dim = arch.kv_heads_and_dim
    buffers = 1 if arch.attention == "mla" else 2
    return buffers * np.dtype(KV_NUMPY[kv]).itemsize * heads * kv_head_dim(dim)


def kv_bytes_per_token(arch, kv: str) -> int:
    """What one more position of context adds to the KV cache: K and V in every full-attention
    layer (a sliding-window layer's buffers are fixed, see ``runtime.kv_cache``)."""
    return kv_row_bytes(arch, kv) * (arch.num_layers - len(arch.sliding_layers))


def read_initializers(path, names) -> dict:
    """The initializers ``names`` of an ONNX file that it has, as numpy (one parse of the file)."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return {t.name: _initializer(path, t) for t in model.graph.initializer if t.name in set(names)}


def _initializer(path, t):
    from pathlib import Path

    import numpy as np
    import onnx
    from onnx import numpy_helper
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    info = {e.key: e.value for e in t.external_data}
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    with open(Path(path).parent / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        raw = f.read(int(info["length"]))
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(t.dims)).copy()


def read_initializer(path, name: str):
    """One initializer of an ONNX file as numpy, reading only its bytes (external data or inline)."""
    found = read_initializers(path, [name])
    if name in found:
        return found[name]
    raise KeyError(f"{name} not in {path}")
