"""Mixtral: softmax over all experts, top-k, always renormalised; experts w1 (gate), w3 (up), w2 (down)."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import FamilyAdapter, L, common_arch, num_experts


class MixtralAdapter(FamilyAdapter):
    name = "mixtral"
    model_types = ("mixtral",)

    def arch(self, cfg):
        return common_arch(cfg, self.name, intermediate_size=cfg["intermediate_size"],
                           num_experts=num_experts(cfg), top_k=cfg["num_experts_per_tok"],
                           norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                           router=RouterSpec())

    def moe_names(self, arch):
        return {"router": (L + "block_sparse_moe.gate.weight", L + "mlp.gate.weight")}

    def expert_names(self, arch):
        e = L + "block_sparse_moe.experts.{e}."
        return {"per_expert": {"gate": e + "w1.weight", "up": e + "w3.weight", "down": e + "w2.weight"},
                "fused": {"gate_up": L + "mlp.experts.gate_up_proj", "down": L + "mlp.experts.down_proj"}}
