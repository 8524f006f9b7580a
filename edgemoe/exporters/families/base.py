"""FamilyAdapter: config.json -> MoEArch, and the declarative weight map of one model family.

A weight map names, per canonical role, the tensor(s) on disk. Templates use ``{i}`` (layer) and
``{e}`` (expert). A role may list alternatives (first present wins), e.g. per-expert tensors as
saved by ``save_pretrained`` or the fused 3-D tensors transformers keeps in memory.
Canonical roles (torch Linear layout [out, in]):
  global: embed [V, H], final_norm [H] (+ final_norm.bias), lm_head [V, H] (+ lm_head.bias)
  layer : attn_norm(.bias), q, k, v, o (+ q_bias, k_bias, v_bias, o_bias) or a fused qkv
          [(NH + 2 KVH) D, H] split at export, q_norm, k_norm, mlp_norm(.bias); post-norm layouts:
          attn_out_norm, mlp_out_norm instead of attn_norm, mlp_norm;
          router [E, H] (+ router_bias [E], router_selection_bias [E] or [1, E]);
          shared_gate/up [Is, H], shared_down [H, Is] (+ *_bias), or a fused shared_gate_up [2Is, H],
          shared_expert_gate [1, H]; dense layers: mlp_gate/up [Id, H], mlp_down [H, Id] (+ *_bias)
  expert: gate [I, H], up [I, H], down [H, I]  or fused gate_up [E, 2I, H], down [E, H, I]
Variation is data: the ``arch`` fields, ``interleaved_rope`` (q/k rows permuted at export) and the
tensors to ignore (``ignored``), computed per config.
"""
from __future__ import annotations

import re

from edgemoe.arch import MoEArch, RouterSpec
from edgemoe.errors import UnsupportedArchitectureError

L = "model.layers.{i}."

# the parameters each RoPE scaling type reads (transformers' modeling_rope_utils), as stored
_ROPE_KEYS = {"default": (), "linear": ("factor",), "dynamic": ("factor", "alpha"),
              "ntk_alpha": ("alpha",),
              "yarn": ("factor", "original_max_position_embeddings", "attention_factor", "beta_fast",
                       "beta_slow", "mscale", "mscale_all_dim", "truncate"),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                         "original_max_position_embeddings")}


def rope_parameters(cfg: dict) -> dict:
    """transformers 5 ``rope_parameters``, or the older ``rope_scaling`` + top-level ``rope_theta``."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def rope_theta(cfg: dict) -> float:
    return float(rope_parameters(cfg)["rope_theta"])


def rope_scaling(cfg: dict) -> tuple:
    """The RoPE scaling type and its parameters as MoEArch's (name, value) pairs; () for default.
    ``dynamic`` with an ``alpha`` is HunYuan's static NTK-alpha base; without one, transformers
    rescales only past ``max_position_embeddings``, which the runtime never reaches: default."""
    p = rope_parameters(cfg)
    kind = p["rope_type"]
    if kind not in _ROPE_KEYS:
        raise UnsupportedArchitectureError(
            f"rope_type {kind!r} is not supported (supported: {', '.join(sorted(_ROPE_KEYS))}); "
            f"open an issue for {kind!r}")
    if kind == "dynamic":
        if not p.get("alpha"):
            return ()
        kind = "ntk_alpha"
    if kind == "default":
        return ()
    if kind == "yarn" and p.get("original_max_position_embeddings") is None:
        p["original_max_position_embeddings"] = cfg.get("original_max_position_embeddings") or \
            cfg.get("max_position_embeddings", 4096)
    vals = [("rope_type", kind)]
    for key in _ROPE_KEYS[kind]:
        v = p.get(key)
        if v is not None:
            vals.append((key, bool(v) if isinstance(v, bool) else float(v)))
    return tuple(vals)


def rotary_dim(cfg: dict, head_dim: int) -> int:
    """Rotated dims per head: ``partial_rotary_factor`` (in rope_parameters or top level), else
    a top-level ``rotary_dim``, else all of them."""
    factor = rope_parameters(cfg).get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    if factor is not None:
        return int(head_dim * float(factor))
    return int(cfg.get("rotary_dim") or head_dim)


def per_layer_value(cfg: dict, key: str, default=None):
    """A config value that may be one per layer (HunYuan's num_experts, moe_topk): all must agree."""
    v = cfg.get(key, default)
    if isinstance(v, list):
        if len(set(v)) != 1:
            raise UnsupportedArchitectureError(
                f"config.json's {key} differs between layers ({v}); edgemoe needs one value for "
                f"every MoE layer")
        v = v[0]
    return v


def eos_ids(cfg: dict) -> tuple[int, ...]:
    eos = cfg.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(int(x) for x in (eos if isinstance(eos, list) else [eos]))


def num_experts(cfg: dict) -> int:
    """Expert count under either spelling (hub configs: num_experts; transformers 5: num_local_experts)."""
    n = next((cfg[k] for k in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
              if cfg.get(k)), None)
    if not n:
        raise UnsupportedArchitectureError("config.json has no num_experts / num_local_experts; "
                                           "edgemoe exports mixture-of-experts models only")
    return int(n)


def common_arch(cfg: dict, family: str, **kw) -> MoEArch:
    """The llama-style fields every family shares, overridden by ``kw``."""
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    sliding = [i for i, t in enumerate(cfg.get("layer_types") or []) if t != "full_attention"]
    if sliding:
        raise UnsupportedArchitectureError(
            f"layers {sliding} use {cfg['layer_types'][sliding[0]]!r}; edgemoe's layer graphs have "
            f"full causal attention for this family (sliding windows: gpt-oss)")
    base = dict(
        family=family, vocab_size=cfg["vocab_size"], hidden_size=h,
        num_layers=cfg["num_hidden_layers"], num_heads=nh,
        num_kv_heads=cfg.get("num_key_value_heads") or nh,
        head_dim=cfg.get("head_dim") or h // nh,
        max_position=cfg.get("max_position_embeddings", 4096),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=rope_theta(cfg),
        rope_scaling=rope_scaling(cfg), rotary_dim=rotary_dim(cfg, cfg.get("head_dim") or h // nh),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=cfg.get("bos_token_id"), eos_token_ids=eos_ids(cfg))
    base.update(kw)
    return MoEArch(**base)


def mlp_names(role: str, prefix: str, bias: bool = False) -> dict[str, tuple[str, ...]]:
    """``{role}_gate/_up/_down`` (+ ``_bias``) of a SwiGLU MLP under ``prefix`` (gate_proj, ...)."""
    names = {f"{role}_{p}": (f"{prefix}{p}_proj.weight",) for p in ("gate", "up", "down")}
    if bias:
        names.update({f"{role}_{p}_bias": (f"{prefix}{p}_proj.bias",) for p in ("gate", "up", "down")})
    return names


def deepseek_router(cfg: dict, score: str = "sigmoid") -> RouterSpec:
    """The DeepSeek-V3 router and its cousins (GLM-4.5, dots.llm1, Sarvam): score, selection on
    score + e_score_correction_bias within the top ``topk_group`` of ``n_group`` groups (group
    score: the sum of its top 2), weights the unbiased scores, renormalised (+1e-20), scaled."""
    return RouterSpec(score=score, selection_bias=True, n_group=int(cfg.get("n_group") or 1),
                      topk_group=int(cfg.get("topk_group") or 1), group_score="top2_sum",
                      renormalize=bool(cfg.get("norm_topk_prob", True)), renorm_eps=1e-20,
                      scaling=float(cfg.get("routed_scaling_factor", 1.0)))


class FamilyAdapter:
    """One model family. Subclasses set ``name``/``model_types`` and override what differs."""

    name = "base"
    model_types: tuple[str, ...] = ()
    # tensors that may be on disk and are not weights of the model (buffers)
    ignorable: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # GPT-J RoPE (pairs (2j, 2j+1) rotate): q/k rows are permuted at export to half-split order
    interleaved_rope = False
    # fused expert tensors stored input-major ([E, H, 2I], [E, I, H]: gpt-oss, Llama-4) instead
    # of as torch Linear weights ([E, 2I, H], [E, H, I]); MXFP4 blocks are out-major either way
    fused_input_major = False
    # gate_up rows interleaved (gate 2j, up 2j+1: gpt-oss) instead of [gate; up]
    gate_up_interleaved = False

    def arch(self, cfg: dict) -> MoEArch:
        raise NotImplementedError

    def rope_interleaved(self, cfg: dict) -> bool:
        """Whether this config's RoPE pairs dims GPT-J style (``interleaved_rope`` unless the
        family reads it from the config)."""
        return self.interleaved_rope

    def ignored(self, cfg: dict) -> re.Pattern:
        """Tensors the export skips for this config: buffers, and (``mtp_layers``) the
        multi-token-prediction layers some checkpoints append after the decoder layers."""
        pats = [re.escape(s) for s in self.ignorable]
        n, extra = int(cfg["num_hidden_layers"]), self.mtp_layers(cfg)
        pats += [re.escape(f"model.layers.{n + j}.") for j in range(extra)]
        return re.compile("|".join(pats))

    def mtp_layers(self, cfg: dict) -> int:
        """How many multi-token-prediction layers follow the decoder layers on disk (not run)."""
        return 0

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
        if arch.post_norm:
            names = {"q": names["q"], "k": names["k"], "v": names["v"], "o": names["o"],
                     "attn_out_norm": (L + "post_attention_layernorm.weight",),
                     "mlp_out_norm": (L + "post_feedforward_layernorm.weight",)}
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
        return mlp_names("mlp", L + "mlp.", arch.mlp_bias)

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
