"""Qwen2-MoE: q/k/v bias, shared expert scaled by sigmoid(shared_expert_gate(x)), optional renormalisation,
sparse layers chosen by ``decoder_sparse_step`` and ``mlp_only_layers``."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import FamilyAdapter, L, common_arch, num_experts


def dense_layers(cfg) -> tuple[int, ...]:
    step, only = cfg.get("decoder_sparse_step", 1), set(cfg.get("mlp_only_layers") or [])
    n_exp = num_experts(cfg)
    return tuple(i for i in range(cfg["num_hidden_layers"])
                 if i in only or not (n_exp > 0 and (i + 1) % step == 0))


class Qwen2MoeAdapter(FamilyAdapter):
    name = "qwen2_moe"
    model_types = ("qwen2_moe",)

    def arch(self, cfg):
        return common_arch(cfg, self.name, intermediate_size=cfg["moe_intermediate_size"],
                           num_experts=num_experts(cfg), top_k=cfg["num_experts_per_tok"],
                           router=RouterSpec(renormalize=bool(cfg.get("norm_topk_prob", False))),
                           qkv_bias=bool(cfg.get("qkv_bias", True)),
                           shared_intermediate_size=cfg.get("shared_expert_intermediate_size", 0),
                           shared_expert_gate=bool(cfg.get("shared_expert_intermediate_size", 0)),
                           dense_layers=dense_layers(cfg),
                           dense_intermediate_size=cfg.get("intermediate_size", 0))

    def moe_names(self, arch):
        names = {"router": (L + "mlp.gate.weight",)}
        if arch.shared_intermediate_size:
            s = L + "mlp.shared_expert."
            names.update({"shared_gate": (s + "gate_proj.weight",), "shared_up": (s + "up_proj.weight",),
                          "shared_down": (s + "down_proj.weight",),
                          "shared_expert_gate": (L + "mlp.shared_expert_gate.weight",)})
        return names
