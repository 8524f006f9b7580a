"""GLM-4.7-Flash (``glm4_moe_lite``): DeepSeek-V3's latent attention and router (sigmoid, selection
bias, one group, x1.8) under GLM's layer schedule (``mlp_layer_types``: dense first)."""
from dataclasses import replace

from edgemoe.exporters.families.deepseek_v3 import DeepseekV3Adapter


def layer_schedule(cfg) -> tuple[int, ...]:
    """Dense layers: ``mlp_layer_types`` entries other than "sparse" (default: the first)."""
    n = cfg["num_hidden_layers"]
    types = cfg.get("mlp_layer_types") or ["dense"] + ["sparse"] * (n - 1)
    return tuple(i for i, t in enumerate(types[:n]) if t != "sparse")


class Glm4MoeLiteAdapter(DeepseekV3Adapter):
    name = "glm4_moe_lite"
    model_types = ("glm4_moe_lite",)

    def arch(self, cfg):
        return replace(super().arch({"first_k_dense_replace": 0, **cfg}), family=self.name,
                       dense_layers=layer_schedule(cfg))
