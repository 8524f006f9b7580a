"""GraniteMoE: top-k on logits then softmax over the k; scalar multipliers; experts fused on disk."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import FamilyAdapter, L, common_arch, num_experts


class GraniteMoeAdapter(FamilyAdapter):
    name = "granitemoe"
    model_types = ("granitemoe",)

    def arch(self, cfg):
        bias = bool(cfg.get("attention_bias", False))
        return common_arch(cfg, self.name, intermediate_size=cfg["intermediate_size"],
                           num_experts=num_experts(cfg), top_k=cfg["num_experts_per_tok"],
                           router=RouterSpec(topk_first=True, renormalize=False), qkv_bias=bias, o_bias=bias,
                           embedding_multiplier=float(cfg.get("embedding_multiplier", 1.0)),
                           residual_multiplier=float(cfg.get("residual_multiplier", 1.0)),
                           attention_scale=float(cfg.get("attention_multiplier", 0.0)),
                           logits_scaling=float(cfg.get("logits_scaling", 1.0)))

    def moe_names(self, arch):
        return {"router": (L + "block_sparse_moe.router.layer.weight", L + "mlp.router.weight")}

    def expert_names(self, arch):
        m = L + "block_sparse_moe."
        return {"per_expert": {},
                "fused": {"gate_up": (m + "input_linear.weight", L + "mlp.experts.gate_up_proj"),
                          "down": (m + "output_linear.weight", L + "mlp.experts.down_proj")}}
