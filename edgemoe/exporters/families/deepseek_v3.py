"""DeepSeek-V3 / R1 / V3.1, Moonlight, Kimi-K2 (``deepseek_v3``, ``kimi_k2``): multi-head latent
attention (optional q LoRA, the KV cache holds the normed latent and the roped k_pe: 576 values a
token for V3), GPT-J RoPE on the rope parts (``rope_interleave``: rows permuted at export), YaRN
with its mscale on the softmax scale; the sigmoid router with the selection bias and groups,
ungated shared experts, dense layers first; the MTP layer after the decoder is ignored."""
import math

from edgemoe.exporters.families.base import (FamilyAdapter, L, common_arch, deepseek_router, mlp_names,
                                             num_experts, rope_parameters)
from edgemoe.exporters.families.glm4_moe import deepseek_moe_names, first_dense


def mla_fields(cfg) -> dict:
    """MoEArch's latent-attention fields of a DeepSeek-style config, and its softmax scale."""
    dn, dr = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"])
    scale = (dn + dr) ** -0.5
    p = rope_parameters(cfg)
    if p["rope_type"] != "default" and p.get("mscale_all_dim"):   # transformers' yarn_apply_mscale
        factor = float(p["factor"])
        m = 1.0 if factor <= 1 else 0.1 * float(p["mscale_all_dim"]) * math.log(factor) + 1.0
        scale *= m * m
    return dict(attention="mla", head_dim=dn + dr, rotary_dim=dr, q_lora_rank=int(cfg.get("q_lora_rank") or 0),
                kv_lora_rank=int(cfg["kv_lora_rank"]), v_head_dim=int(cfg["v_head_dim"]),
                attention_scale=scale, num_kv_heads=cfg["num_attention_heads"])


def mla_names(arch) -> dict:
    a = L + "self_attn."
    names = {"attn_norm": (L + "input_layernorm.weight",),
             "mlp_norm": (L + "post_attention_layernorm.weight",),
             "kv_a": (a + "kv_a_proj_with_mqa.weight",), "kv_a_norm": (a + "kv_a_layernorm.weight",),
             "kv_b": (a + "kv_b_proj.weight",), "o": (a + "o_proj.weight",)}
    if arch.q_lora_rank:
        names.update({"q_a": (a + "q_a_proj.weight",), "q_a_norm": (a + "q_a_layernorm.weight",),
                      "q_b": (a + "q_b_proj.weight",)})
    else:
        names["q"] = (a + "q_proj.weight",)
    if arch.qkv_bias:
        names["kv_a_bias"] = (a + "kv_a_proj_with_mqa.bias",)
        if arch.q_lora_rank:
            names["q_a_bias"] = (a + "q_a_proj.bias",)
    if arch.o_bias:
        names["o_bias"] = (a + "o_proj.bias",)
    return names


class DeepseekV3Adapter(FamilyAdapter):
    name = "deepseek_v3"
    model_types = ("deepseek_v3", "kimi_k2")
    interleaved_rope = True

    def arch(self, cfg):
        moe_i, bias = cfg["moe_intermediate_size"], bool(cfg.get("attention_bias", False))
        return common_arch(cfg, self.name, intermediate_size=moe_i, num_experts=num_experts(cfg),
                           top_k=cfg["num_experts_per_tok"], router=deepseek_router(cfg),
                           qkv_bias=bias, o_bias=bias,
                           shared_intermediate_size=moe_i * int(cfg.get("n_shared_experts", 0) or 0),
                           dense_layers=first_dense(cfg), dense_intermediate_size=cfg["intermediate_size"],
                           **mla_fields(cfg))

    def rope_interleaved(self, cfg):
        return bool(cfg.get("rope_interleave", True))

    def mtp_layers(self, cfg):
        return int(cfg.get("num_nextn_predict_layers", 0) or 0)

    def attention_names(self, arch):
        return mla_names(arch)

    def moe_names(self, arch):
        return deepseek_moe_names()

    def dense_mlp_names(self, arch):
        return mlp_names("mlp", L + "mlp.")
