"""FamilyAdapter: config.json -> MoEArch, and the declarative weight map of one model family.

A weight map names, per canonical role, the tensor(s) on disk. Templates use ``{i}`` (layer) and
``{e}`` (expert). A role may list alternatives (first present wins), e.g. per-expert tensors as
saved by ``save_pretrained`` or the fused 3-D tensors transformers keeps in memory.
Canonical roles (torch Linear layout [out, in]):
  global: embed [V, H], final_norm [H] (+ final_norm.bias), lm_head [V, H] (+ lm_head.bias)
  layer : attn_norm(.bias), q, k, v, o (+ q_bias, k_bias, v_bias, o_bias), q_norm, k_norm,
          mlp_norm(.bias), router [E, H]; shared_gate/up [Is, H], shared_down [H, Is],
          shared_expert_gate [1, H]; dense layers: mlp_gate/up [Id, H], mlp_down [H, Id]
  expert: gate [I, H], up [I, H], down [H, I]  or fused gate_up [E, 2I, H], down [E, H, I]
"""
from __future__ import annotations

from edgemoe.arch import MoEArch
from edgemoe.errors import UnsupportedArchitectureError

L = "model.layers.{i}."


def rope_theta(cfg: dict) -> float:
    """rope theta from transformers 5 ``rope_parameters`` or the older top-level key; default RoPE only."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise UnsupportedArchitectureError(
            f"rope_type {kind!r} is not supported yet (only 'default' RoPE); "
            f"export a checkpoint without rope scaling, or open an issue for {kind!r}")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def eos_ids(cfg: dict) -> tuple[int, ...]:
    eos = cfg.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(int(x) for x in (eos if isinstance(eos, list) else [eos]))


def num_experts(cfg: dict) -> int:
    """Expert count under either spelling (hub configs: num_experts; transformers 5: num_local_experts)."""
    n = cfg.get("num_experts", cfg.get("num_local_experts"))
    if not n:
        raise UnsupportedArchitectureError("config.json has no num_experts / num_local_experts; "
                                           "edgemoe exports mixture-of-experts models only")
    return int(n)


def common_arch(cfg: dict, family: str, **kw) -> MoEArch:
    """The llama-style fields every family shares, overridden by ``kw``."""
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    base = dict(
        family=family, vocab_size=cfg["vocab_size"], hidden_size=h,
        num_layers=cfg["num_hidden_layers"], num_heads=nh,
        num_kv_heads=cfg.get("num_key_value_heads") or nh,
        head_dim=cfg.get("head_dim") or h // nh,
        max_position=cfg.get("max_position_embeddings", 4096),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=rope_theta(cfg),
        rotary_dim=int((cfg.get("head_dim") or h // nh) * cfg.get("partial_rotary_factor", 1.0)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=cfg.get("bos_token_id"), eos_token_ids=eos_ids(cfg))
    base.update(kw)
    return MoEArch(**base)


class FamilyAdapter:
    """One model family. Subclasses set ``name``/``model_types`` and override what differs."""

    name = "base"
    model_types: tuple[str, ...] = ()
    # tensors that may be on disk and are not weights of the model (buffers)
    ignorable: tuple[str, ...] = ("rotary_emb.inv_freq",)

    def arch(self, cfg: dict) -> MoEArch:
        raise NotImplementedError

    def global_names(self, arch: MoEArch) -> dict[str, tuple[str, ...]]:
        names = {"embed": ("model.embed_tokens.weight",), "final_norm": ("model.norm.weight",),
                 "lm_head": ("lm_head.weight",)}
        if arch.norm == "layer":
            names["final_norm.bias"] = ("model.norm.bias",)
        if arch.lm_head_bias:
            names["lm_head.bias"] = ("lm_head.bias",)
        return names

    def attention_names(self, arch: MoEArch) -> dict[str, tuple[str, ...]]:
        a = L + "self_attn."
        names = {"attn_norm": (L + "input_layernorm.weight",),
                 "mlp_norm": (L + "post_attention_layernorm.weight",),
                 "q": (a + "q_proj.weight",), "k": (a + "k_proj.weight",),
                 "v": (a + "v_proj.weight",), "o": (a + "o_proj.weight",)}
        if arch.norm == "layer":
            names["attn_norm.bias"] = (L + "input_layernorm.bias",)
            names["mlp_norm.bias"] = (L + "post_attention_layernorm.bias",)
        if arch.qkv_bias:
            names.update({f"{p}_bias": (a + f"{p}_proj.bias",) for p in "qkv"})
        if arch.o_bias:
            names["o_bias"] = (a + "o_proj.bias",)
        if arch.qk_norm != "none":
            names["q_norm"], names["k_norm"] = (a + "q_norm.weight",), (a + "k_norm.weight",)
        return names

    def moe_names(self, arch: MoEArch) -> dict[str, tuple[str, ...]]:
        """Router and shared-expert roles of a MoE layer."""
        return {"router": (L + "mlp.gate.weight",)}

    def dense_mlp_names(self, arch: MoEArch) -> dict[str, tuple[str, ...]]:
        m = L + "mlp."
        return {"mlp_gate": (m + "gate_proj.weight",), "mlp_up": (m + "up_proj.weight",),
                "mlp_down": (m + "down_proj.weight",)}

    def expert_names(self, arch: MoEArch) -> dict[str, dict[str, str]]:
        """{'per_expert': {gate, up, down}, 'fused': {gate_up, down}} templates."""
        e = L + "mlp.experts."
        return {"per_expert": {"gate": e + "{e}.gate_proj.weight", "up": e + "{e}.up_proj.weight",
                               "down": e + "{e}.down_proj.weight"},
                "fused": {"gate_up": e + "gate_up_proj", "down": e + "down_proj"}}

    def layer_names(self, arch: MoEArch, i: int) -> dict[str, tuple[str, ...]]:
        names = self.attention_names(arch)
        names.update(self.moe_names(arch) if arch.is_moe_layer(i) else self.dense_mlp_names(arch))
        return {role: tuple(t.format(i=i) for t in alts) for role, alts in names.items()}
