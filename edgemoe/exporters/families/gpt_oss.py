"""gpt-oss (``gpt_oss``): GQA with q/k/v/o biases and a learned sink logit per head, sliding
(128) and full layers alternating (``layer_types``), YaRN; router with a bias, top-k on the logits
then softmax over the k; experts fused input-major ([E, H, 2I], [E, I, H]) with gate/up columns
interleaved, biases, and the clamped SwiGLU ``(clip(up, -7, 7) + 1) * g * sigmoid(1.702 g)``,
``g = min(gate, 7)``. The official checkpoints hold the experts as MXFP4 (``*_blocks`` /
``*_scales``), dequantized while streaming (``exporters.mxfp4``)."""
from edgemoe.arch import RouterSpec
from edgemoe.exporters.families.base import FamilyAdapter, L, common_arch, num_experts


class GptOssAdapter(FamilyAdapter):
    name = "gpt_oss"
    model_types = ("gpt_oss",)
    fused_input_major = True
    gate_up_interleaved = True

    def arch(self, cfg):
        types = list(cfg.get("layer_types") or ["sliding_attention", "full_attention"] * (cfg["num_hidden_layers"] // 2))
        sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
        bias = bool(cfg.get("attention_bias", True))
        plain = dict(cfg, layer_types=None)        # windows are this adapter's, not common_arch's
        return common_arch(plain, self.name, intermediate_size=cfg["intermediate_size"],
                           num_experts=num_experts(cfg), top_k=cfg["num_experts_per_tok"],
                           norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                           router=RouterSpec(topk_first=True, renormalize=False), router_bias=True,
                           qkv_bias=bias, o_bias=bias, attn_sinks=True,
                           sliding_window=int(cfg.get("sliding_window") or 0) if sliding else 0,
                           sliding_layers=sliding, expert_act="clamped",
                           swiglu_alpha=float(cfg.get("swiglu_alpha", 1.702)),
                           swiglu_limit=float(cfg.get("swiglu_limit", 7.0)), expert_bias=True)

    def attention_names(self, arch):
        names = super().attention_names(arch)
        names["sinks"] = (L + "self_attn.sinks",)
        return names

    def moe_names(self, arch):
        return {"router": (L + "mlp.router.weight",), "router_bias": (L + "mlp.router.bias",)}

    def expert_names(self, arch):
        e = L + "mlp.experts."
        return {"per_expert": {},
                "fused": {"gate_up": e + "gate_up_proj", "down": e + "down_proj",
                          "gate_up_bias": e + "gate_up_proj_bias", "down_bias": e + "down_proj_bias"}}
