"""dots.llm1 (``dots1``): Qwen3 attention (per-head q/k norm) with the DeepSeek-V3 router and
ungated shared experts, dense layers first; no sliding layers in the released checkpoints."""
from edgemoe.exporters.families.base import FamilyAdapter, common_arch, deepseek_router, num_experts
from edgemoe.exporters.families.glm4_moe import deepseek_moe_names, first_dense


class Dots1Adapter(FamilyAdapter):
    name = "dots1"
    model_types = ("dots1",)

    def arch(self, cfg):
        moe_i, bias = cfg["moe_intermediate_size"], bool(cfg.get("attention_bias", False))
        return common_arch(cfg, self.name, intermediate_size=moe_i, num_experts=num_experts(cfg),
                           top_k=cfg["num_experts_per_tok"], router=deepseek_router(cfg),
                           qkv_bias=bias, o_bias=bias, qk_norm="per_head",
                           shared_intermediate_size=moe_i * int(cfg.get("n_shared_experts", 0) or 0),
                           dense_layers=first_dense(cfg), dense_intermediate_size=cfg["intermediate_size"])

    def moe_names(self, arch):
        return deepseek_moe_names()
