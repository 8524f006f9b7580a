"""GraniteMoE with a shared expert (``granitemoeshared``): GraniteMoE plus an ungated
``shared_mlp`` (fused ``input_linear`` [gate | up] and ``output_linear``) added before the
residual multiplier."""
from edgemoe.exporters.families.base import L
from edgemoe.exporters.families.granitemoe import GraniteMoeAdapter


class GraniteMoeSharedAdapter(GraniteMoeAdapter):
    name = "granitemoeshared"
    model_types = ("granitemoeshared",)

    def arch(self, cfg):
        from dataclasses import replace
        return replace(super().arch(cfg), family=self.name,
                       shared_intermediate_size=int(cfg.get("shared_intermediate_size", 0) or 0))

    def moe_names(self, arch):
        names = super().moe_names(arch)
        if arch.shared_intermediate_size:
            s = L + "shared_mlp."
            names.update({"shared_gate_up": (s + "input_linear.weight",),
                          "shared_down": (s + "output_linear.weight",)})
        return names
