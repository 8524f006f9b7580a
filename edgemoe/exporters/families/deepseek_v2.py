"""DeepSeek-V2 / V2-Lite / Coder-V2 (``deepseek_v2``): DeepSeek-V3's latent attention (its RoPE
always complex, i.e. GPT-J pairs) with a softmax router: greedy top-k, or group-limited (group
score = its best expert's) with ``topk_method: group_limited_greedy``; no renormalisation
(transformers ignores ``norm_topk_prob``), times ``routed_scaling_factor``."""
from dataclasses import replace

from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.deepseek_v3 import DeepseekV3Adapter


class DeepseekV2Adapter(DeepseekV3Adapter):
    name = "deepseek_v2"
    model_types = ("deepseek_v2",)

    def arch(self, cfg):
        grouped = cfg.get("topk_method", "greedy") == "group_limited_greedy"
        router = RouterSpec(n_group=int(cfg.get("n_group") or 1) if grouped else 1,
                            topk_group=int(cfg.get("topk_group") or 1) if grouped else 1,
                            group_score="max", renormalize=False,
                            scaling=float(cfg.get("routed_scaling_factor", 1.0)))
        return replace(super().arch(cfg), family=self.name, router=router)

    def rope_interleaved(self, cfg):      # complex RoPE: always GPT-J pairs
        return True

    def moe_names(self, arch):
        names = super().moe_names(arch)
        names.pop("router_selection_bias")
        return names
