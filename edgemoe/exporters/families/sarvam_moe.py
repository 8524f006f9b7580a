"""Sarvam-30B (``sarvam_moe``): GLM-4.5's model under its own tensor names: fused
``attention.query_key_value`` ([q | k | v] rows, split at export), ``attention.dense``,
``query/key_layernorm`` (per head), ``model.word_embeddings``, the selection bias as
``mlp.gate.expert_bias``."""
from edgemoe.exporters.families.base import L
from edgemoe.exporters.families.glm4_moe import Glm4MoeAdapter, deepseek_moe_names


class SarvamMoeAdapter(Glm4MoeAdapter):
    name = "sarvam_moe"
    model_types = ("sarvam_moe",)

    def global_names(self, arch):
        names = super().global_names(arch)
        names["embed"] = ("model.word_embeddings.weight", "model.embed_tokens.weight")
        return names

    def attention_names(self, arch):
        a = L + "attention."
        names = {"attn_norm": (L + "input_layernorm.weight",),
                 "mlp_norm": (L + "post_attention_layernorm.weight",),
                 "qkv": (a + "query_key_value.weight",), "o": (a + "dense.weight",)}
        if arch.qkv_bias:
            names["qkv_bias"] = (a + "query_key_value.bias",)
        if arch.qk_norm != "none":
            names["q_norm"], names["k_norm"] = (a + "query_layernorm.weight",), (a + "key_layernorm.weight",)
        return names

    def moe_names(self, arch):
        return deepseek_moe_names(bias="gate.expert_bias")
