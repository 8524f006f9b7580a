"""Qwen3-MoE: per-head q/k RMSNorm over head_dim, optional attention bias, no shared expert."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import FamilyAdapter, common_arch, num_experts
from edgemoe.exporters.families.qwen2_moe import dense_layers


class Qwen3MoeAdapter(FamilyAdapter):
    name = "qwen3_moe"
    model_types = ("qwen3_moe",)

    def arch(self, cfg):
        bias = bool(cfg.get("attention_bias", False))
        return common_arch(cfg, self.name, intermediate_size=cfg["moe_intermediate_size"],
                           num_experts=num_experts(cfg), top_k=cfg["num_experts_per_tok"],
                           router=RouterSpec(renormalize=bool(cfg.get("norm_topk_prob", False))),
                           qkv_bias=bias, o_bias=bias, qk_norm="per_head",
                           dense_layers=dense_layers(cfg),
                           dense_intermediate_size=cfg.get("intermediate_size", 0))
