"""PhiMoE: sparsemixer top-2 routing, LayerNorm with bias, attention and LM-head biases."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import FamilyAdapter, L, common_arch, num_experts


class PhimoeAdapter(FamilyAdapter):
    name = "phimoe"
    model_types = ("phimoe",)

    def arch(self, cfg):
        bias = bool(cfg.get("attention_bias", False))
        return common_arch(cfg, self.name, intermediate_size=cfg["intermediate_size"],
                           num_experts=num_experts(cfg), top_k=cfg["num_experts_per_tok"],
                           norm="layer", norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                           router=RouterSpec(score="sparsemixer", renormalize=False,
                                             jitter=float(cfg.get("router_jitter_noise", 0.01))),
                           qkv_bias=bias, o_bias=bias, lm_head_bias=bool(cfg.get("lm_head_bias", False)))

    def moe_names(self, arch):
        return {"router": (L + "block_sparse_moe.gate.weight",)}

    def expert_names(self, arch):
        e = L + "block_sparse_moe.experts.{e}."
        return {"per_expert": {"gate": e + "w1.weight", "up": e + "w3.weight", "down": e + "w2.weight"},
                "fused": {"gate_up": L + "mlp.experts.gate_up_proj", "down": L + "mlp.experts.down_proj"}}
