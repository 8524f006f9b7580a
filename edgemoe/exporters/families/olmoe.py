"""OLMoE: q/k RMSNorm over the whole projection (before clip_qkv), optional renormalisation."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import FamilyAdapter, common_arch, num_experts


class OlmoeAdapter(FamilyAdapter):
    name = "olmoe"
    model_types = ("olmoe",)

    def arch(self, cfg):
        bias = bool(cfg.get("attention_bias", False))
        return common_arch(cfg, self.name, intermediate_size=cfg["intermediate_size"],
                           num_experts=num_experts(cfg), top_k=cfg["num_experts_per_tok"],
                           norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                           router=RouterSpec(renormalize=bool(cfg.get("norm_topk_prob", False))),
                           qkv_bias=bias, o_bias=bias, qk_norm="full",
                           clip_qkv=float(cfg.get("clip_qkv") or 0.0))
