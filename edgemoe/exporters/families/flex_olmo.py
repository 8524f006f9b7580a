"""FlexOlmo (``flex_olmo``): OLMo2's post-norm layout (RMSNorm on the attention and MoE outputs,
none before them), q/k RMSNorm over the whole projection, OLMoE's softmax top-k routing."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import FamilyAdapter, common_arch, num_experts


class FlexOlmoAdapter(FamilyAdapter):
    name = "flex_olmo"
    model_types = ("flex_olmo",)

    def arch(self, cfg):
        bias = bool(cfg.get("attention_bias", False))
        return common_arch(cfg, self.name, intermediate_size=cfg["intermediate_size"],
                           num_experts=num_experts(cfg), top_k=cfg["num_experts_per_tok"],
                           router=RouterSpec(renormalize=bool(cfg.get("norm_topk_prob", False))),
                           qkv_bias=bias, o_bias=bias, qk_norm="full", post_norm=True,
                           clip_qkv=float(cfg.get("clip_qkv") or 0.0))
