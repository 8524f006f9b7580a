"""GLM-4.5 / 4.6 / 4.7 (``glm4_moe``): the DeepSeek-V3 sigmoid router with its selection bias and
groups, one ungated shared expert, dense layers first (``first_k_dense_replace``), q/k/v bias,
optional per-head q/k norm, half of each head rotated; the MTP layer after the decoder is ignored."""
from edgemoe.exporters.families.base import (FamilyAdapter, L, common_arch, deepseek_router, mlp_names,
                                             num_experts)


def first_dense(cfg) -> tuple[int, ...]:
    return tuple(range(min(int(cfg.get("first_k_dense_replace", 0) or 0), cfg["num_hidden_layers"])))


def deepseek_moe_names(prefix: str = "mlp.", bias: str = "gate.e_score_correction_bias"):
    """Router, selection bias and ungated shared experts as DeepSeek-V3 and its cousins save them."""
    m = L + prefix
    return {"router": (m + "gate.weight",), "router_selection_bias": (m + bias,),
            **mlp_names("shared", m + "shared_experts.")}


class Glm4MoeAdapter(FamilyAdapter):
    name = "glm4_moe"
    model_types = ("glm4_moe",)

    def arch(self, cfg):
        moe_i = cfg["moe_intermediate_size"]
        return common_arch(cfg, self.name, intermediate_size=moe_i, num_experts=num_experts(cfg),
                           top_k=cfg["num_experts_per_tok"], norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                           router=deepseek_router(cfg), qkv_bias=bool(cfg.get("attention_bias", False)),
                           qk_norm="per_head" if cfg.get("use_qk_norm") else "none",
                           shared_intermediate_size=moe_i * int(cfg.get("n_shared_experts", 1) or 0),
                           dense_layers=first_dense(cfg), dense_intermediate_size=cfg["intermediate_size"])

    def mtp_layers(self, cfg):
        return int(cfg.get("num_nextn_predict_layers", 0) or 0)

    def moe_names(self, arch):
        return deepseek_moe_names()
