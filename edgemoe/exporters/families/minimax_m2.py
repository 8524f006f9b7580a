"""MiniMax-M2 (``minimax_m2``): sigmoid router choosing on score + ``e_score_correction_bias``,
always renormalised, no groups or scaling; q/k RMSNorm over the whole projection; partial rotary;
Mixtral's tensor names (``block_sparse_moe.experts.{e}.w1/w3/w2``)."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import L, common_arch, num_experts
from edgemoe.exporters.families.mixtral import MixtralAdapter


class MinimaxM2Adapter(MixtralAdapter):
    name = "minimax_m2"
    model_types = ("minimax_m2",)

    def arch(self, cfg):
        return common_arch(cfg, self.name, intermediate_size=cfg["intermediate_size"],
                           num_experts=num_experts(cfg), top_k=cfg["num_experts_per_tok"],
                           router=RouterSpec(score="sigmoid", selection_bias=True), qk_norm="full")

    def moe_names(self, arch):
        return {"router": (L + "block_sparse_moe.gate.weight", L + "mlp.gate.weight"),
                "router_selection_bias": (L + "block_sparse_moe.e_score_correction_bias",
                                          L + "mlp.e_score_correction_bias")}
