"""ERNIE-4.5 MoE (``ernie4_5_moe``): softmax router choosing on softmax + ``moe_statics`` bias
(weights unbiased, renormalised with a clamp), ungated shared experts, MoE on layers
``moe_layer_start_index..end`` every ``moe_layer_interval``, GPT-J (interleaved) RoPE (q/k rows
permuted at export), ``use_bias`` on every dense linear, tied embeddings by default."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import FamilyAdapter, L, common_arch, mlp_names, num_experts


def moe_schedule(cfg) -> tuple[int, ...]:
    """Dense layers: those outside start..end (end -1 = the last) or off the interval."""
    n = cfg["num_hidden_layers"]
    start = int(cfg.get("moe_layer_start_index", 1))
    end = int(cfg.get("moe_layer_end_index", -1))
    end = n - 1 if end == -1 else end
    every = int(cfg.get("moe_layer_interval", 1))
    return tuple(i for i in range(n) if not ((i + 1) % every == 0 and start <= i <= end))


class Ernie45MoeAdapter(FamilyAdapter):
    name = "ernie4_5_moe"
    model_types = ("ernie4_5_moe",)
    interleaved_rope = True
    ignorable = ("rotary_emb.inv_freq", "mtp_block.", "mtp_emb_norm", "mtp_hidden_norm", "mtp_linear_proj")

    def arch(self, cfg):
        bias, moe_i = bool(cfg.get("use_bias", False)), cfg["moe_intermediate_size"]
        router = RouterSpec(selection_bias=True, renorm_min=float(cfg.get("moe_norm_min", 1e-12)))
        return common_arch(cfg, self.name, intermediate_size=moe_i, num_experts=num_experts(cfg),
                           top_k=cfg.get("moe_k", cfg.get("num_experts_per_tok")),
                           norm_eps=float(cfg.get("rms_norm_eps", 1e-5)), router=router,
                           qkv_bias=bias, o_bias=bias, mlp_bias=bias, lm_head_bias=bias,
                           shared_intermediate_size=moe_i * int(cfg.get("moe_num_shared_experts", 0) or 0),
                           dense_layers=moe_schedule(cfg), dense_intermediate_size=cfg["intermediate_size"],
                           tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)))

    def moe_names(self, arch):
        m = L + "mlp."
        return {"router": (m + "gate.weight",),
                "router_selection_bias": (m + "moe_statics.e_score_correction_bias",
                                          m + "gate.moe_statics.e_score_correction_bias"),
                **mlp_names("shared", m + "shared_experts.", arch.mlp_bias)}
