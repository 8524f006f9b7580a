"""Hunyuan-A13B (``hunyuan_v1_moe``): per-head q/k norm *after* RoPE (``query/key_layernorm``),
softmax top-k renormalised (router ``mlp.gate.wg``), an ungated ``shared_mlp`` on every layer,
NTK-alpha RoPE (``rope_type: dynamic`` with ``alpha``); per-layer expert counts must agree."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import FamilyAdapter, L, common_arch, mlp_names, per_layer_value


class HunyuanV1MoeAdapter(FamilyAdapter):
    name = "hunyuan_v1_moe"
    model_types = ("hunyuan_v1_moe",)

    def arch(self, cfg):
        bias, inter = bool(cfg.get("attention_bias", False)), cfg["intermediate_size"]
        return common_arch(cfg, self.name, intermediate_size=inter,
                           num_experts=int(per_layer_value(cfg, "num_experts")),
                           top_k=int(per_layer_value(cfg, "moe_topk")),
                           norm_eps=float(cfg.get("rms_norm_eps", 1e-5)), router=RouterSpec(),
                           qkv_bias=bias, o_bias=bias, qk_norm="per_head", qk_norm_after_rope=True,
                           shared_intermediate_size=inter)

    def attention_names(self, arch):
        names = super().attention_names(arch)
        a = L + "self_attn."
        names["q_norm"], names["k_norm"] = (a + "query_layernorm.weight",), (a + "key_layernorm.weight",)
        return names

    def moe_names(self, arch):
        return {"router": (L + "mlp.gate.wg.weight",), **mlp_names("shared", L + "mlp.shared_mlp.")}
