"""MoEArch: the normalised hyper-parameters of every supported MoE family, frozen.

Family adapters (``edgemoe/exporters/families/*``) turn a Hugging Face ``config.json`` into one of
these; the graph builders, the package manifest and the runtime read nothing else. Per-layer
tensors (a router's selection bias) live in the layer graphs, not here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from edgemoe.errors import ConfigError

SCORES = ("softmax", "sigmoid", "sqrtsoftplus", "sparsemixer")
GROUP_SCORES = ("max", "top2_sum")
NORMS = ("rms", "layer")
QK_NORMS = ("none", "per_head", "full")
EXPERT_ACTS = ("silu", "clamped")
ATTENTIONS = ("gqa", "mla")
ROPE_TYPES = ("default", "linear", "dynamic", "ntk_alpha", "yarn", "llama3")


@dataclass(frozen=True)
class RouterSpec:
    """One general router: logits [T, E] (the layer graph adds the router's own bias) -> k experts
    and their weights per token.

    ``topk_first`` False (Mixtral, Qwen, OLMoE, DeepSeek-V3, GLM, ERNIE, MiniMax-M2, ...):
        scores = score(logits) over all E; choice = scores + selection bias (a per-layer tensor when
        ``selection_bias``), limited to the ``topk_group`` best of ``n_group`` groups (group score:
        max, or the sum of its top 2); top-k of the choice; weights = the *unbiased* scores of the
        chosen; renormalised to sum 1 when ``renormalize`` (denominator + ``renorm_eps``, clamped to
        ``renorm_min``); times ``scaling``.
    ``topk_first`` True (GraniteMoE, gpt-oss): top-k on the logits, then score over the k.
    score ``sparsemixer``: PhiMoE's two-step masked softmax (top-2), threshold ``jitter``.
    Ties break toward the lower expert index, as torch.topk does on CPU.
    """

    score: str = "softmax"
    topk_first: bool = False
    selection_bias: bool = False
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"
    renormalize: bool = True
    renorm_eps: float = 0.0
    renorm_min: float = 0.0
    scaling: float = 1.0
    jitter: float = 0.0

    def check(self, num_experts: int, top_k: int):
        if self.score not in SCORES:
            raise ConfigError(f"router score must be one of {SCORES}, got {self.score!r}")
        if self.group_score not in GROUP_SCORES:
            raise ConfigError(f"router group_score must be one of {GROUP_SCORES}, got {self.group_score!r}")
        if self.score == "sparsemixer" and top_k != 2:
            raise ConfigError("sparsemixer routing is defined for top_k == 2 only")
        if self.n_group < 1 or num_experts % self.n_group:
            raise ConfigError(f"router n_group {self.n_group} does not divide num_experts {num_experts}")
        if not 1 <= self.topk_group <= self.n_group:
            raise ConfigError(f"router topk_group {self.topk_group} must be in 1..n_group {self.n_group}")
        if self.n_group > 1 and top_k > self.topk_group * (num_experts // self.n_group):
            raise ConfigError(f"top_k {top_k} exceeds the experts of {self.topk_group} groups")
        if self.n_group > 1 and self.group_score == "top2_sum" and num_experts // self.n_group < 2:
            raise ConfigError("group score top2_sum needs at least 2 experts per group")
        if self.topk_first and (self.selection_bias or self.n_group > 1):
            raise ConfigError("top-k-first routing takes no selection bias or groups")


@dataclass(frozen=True)
class MoEArch:
    """Normalised architecture of a decoder-only MoE transformer (batch 1, causal).

    Routing is ``router`` (:class:`RouterSpec`); ``router_bias``: the router Linear has a bias (added
    in the layer graph). Layer layout: pre-norm (``attn_norm`` before attention, ``mlp_norm`` before
    the MLP), or with ``post_norm`` the norms on the sublayers' outputs instead (OLMo2/FlexOlmo:
    ``h = x + norm(attn(x))``, ``out = h + norm(moe(h))``; the runtime applies the MoE output's norm).
    RoPE: ``rope_scaling`` holds the scaling type's parameters as (name, value) pairs
    (``edgemoe.runtime.rope``); interleaved (GPT-J) pairs are permuted to half-split at export, so
    the graphs know one kind. ``qk_norm_after_rope``: HunYuan normalises q/k per head after RoPE.
    """

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int            # per routed expert
    num_experts: int
    top_k: int
    max_position: int
    norm: str = "rms"                 # rms | layer (LayerNorm with bias)
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rotary_dim: int = 0               # 0 = head_dim
    rope_scaling: tuple = ()          # ((name, value), ...) incl. ("rope_type", kind); () = default
    router: RouterSpec = field(default_factory=RouterSpec)
    router_bias: bool = False         # the router Linear's bias (gpt-oss)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False            # biases on the dense and shared-expert MLPs (ERNIE use_bias)
    qk_norm: str = "none"             # none | per_head (Qwen3) | full (OLMoE)
    qk_norm_after_rope: bool = False  # HunYuan
    post_norm: bool = False           # norms after the sublayers, none before (FlexOlmo)
    sliding_window: int = 0           # keys a sliding layer's query sees, itself included (gpt-oss 128)
    sliding_layers: tuple[int, ...] = ()  # layers with that window; the others attend to everything
    attn_sinks: bool = False          # per-head learned sink logit in each softmax (gpt-oss)
    expert_act: str = "silu"          # silu: down(silu(g) * u) | clamped: gpt-oss's, see EXPERT_ACTS
    swiglu_alpha: float = 1.702       # clamped: g * sigmoid(alpha * g) ...
    swiglu_limit: float = 7.0         # ... with g <= limit and |u| <= limit, times (u + 1)
    expert_bias: bool = False         # biases on the experts' gate_up and down (in their records)
    # multi-head latent attention (DeepSeek-V2/V3): head_dim = qk_nope + qk_rope (the q/k width),
    # rotary_dim = qk_rope; the KV cache holds [normed latent | roped k_pe] per token (one head)
    attention: str = "gqa"            # gqa | mla
    q_lora_rank: int = 0              # 0: q_proj directly; else q_a_proj -> norm -> q_b_proj
    kv_lora_rank: int = 0
    v_head_dim: int = 0
    latent_norm_eps: float = 1e-6     # q_a / kv_a RMSNorms (transformers builds them with 1e-6)
    clip_qkv: float = 0.0             # 0 = off (OLMoE)
    shared_intermediate_size: int = 0 # 0 = no shared expert
    shared_expert_gate: bool = False  # sigmoid(Linear(H,1)) on the shared expert (Qwen2-MoE)
    dense_layers: tuple[int, ...] = ()  # layers with a dense MLP instead of experts
    dense_intermediate_size: int = 0
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_scale: float = 0.0     # 0 = head_dim ** -0.5
    logits_scaling: float = 1.0      # logits are divided by this (GraniteMoE)
    lm_head_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "intermediate_size", "num_experts", "top_k", "max_position"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"MoEArch.{name} must be positive, got {getattr(self, name)}")
        if self.norm not in NORMS:
            raise ConfigError(f"MoEArch.norm must be one of {NORMS}, got {self.norm!r}")
        if not isinstance(self.router, RouterSpec):
            raise ConfigError(f"MoEArch.router must be a RouterSpec, got {type(self.router).__name__}")
        self.router.check(self.num_experts, self.top_k)
        kind = dict(self.rope_scaling).get("rope_type", "default")
        if kind not in ROPE_TYPES:
            raise ConfigError(f"MoEArch rope_type must be one of {ROPE_TYPES}, got {kind!r}")
        if not 0 < self.rope_dim <= self.head_dim or self.rope_dim % 2:
            raise ConfigError(f"rotary dim {self.rope_dim} must be even and in 2..head_dim {self.head_dim}")
        if self.qk_norm not in QK_NORMS:
            raise ConfigError(f"MoEArch.qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of "
                              f"num_kv_heads {self.num_kv_heads}")
        if self.top_k > self.num_experts:
            raise ConfigError(f"top_k {self.top_k} exceeds num_experts {self.num_experts}")
        if self.post_norm and (self.shared_intermediate_size or self.residual_multiplier != 1.0
                               or self.norm != "rms"):
            raise ConfigError("post-norm layers are built with RMSNorm, no shared expert and no "
                              "residual multiplier (as OLMo2/FlexOlmo)")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"MoEArch.attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention == "mla" and (self.kv_lora_rank < 1 or self.v_head_dim < 1
                                        or self.rope_dim >= self.head_dim):
            raise ConfigError("latent attention needs kv_lora_rank, v_head_dim and a rope part "
                              "smaller than the q/k head")
        if self.expert_act not in EXPERT_ACTS:
            raise ConfigError(f"MoEArch.expert_act must be one of {EXPERT_ACTS}, got {self.expert_act!r}")
        if self.sliding_layers and self.sliding_window < 1:
            raise ConfigError("sliding_layers need a sliding_window >= 1")
        if any(not 0 <= i < self.num_layers for i in self.sliding_layers):
            raise ConfigError(f"sliding_layers {list(self.sliding_layers)} outside 0..{self.num_layers - 1}")
        bad = [i for i in self.dense_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ConfigError(f"dense_layers {bad} outside 0..{self.num_layers - 1}")

    # ---- derived ----
    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if i not in self.dense_layers)

    @property
    def is_moe_layer(self):
        dense = set(self.dense_layers)
        return lambda i: i not in dense

    @property
    def rope_dim(self) -> int:
        return self.rotary_dim or self.head_dim

    @property
    def scale(self) -> float:
        return self.attention_scale or self.head_dim ** -0.5

    @property
    def kv_heads_and_dim(self) -> tuple[int, int]:
        """(heads, width) of one layer's cached K (and V): MLA caches one head of
        [latent | k_pe] that serves as K and V at once."""
        if self.attention == "mla":
            return 1, self.kv_lora_rank + self.rope_dim
        return self.num_kv_heads, self.head_dim

    def window(self, layer: int) -> int:
        """The attention window of ``layer`` in keys (0: the whole sequence)."""
        return self.sliding_window if layer in self.sliding_layers else 0

    def expert_biases(self) -> tuple[str, ...]:
        """The expert matrices that carry a bias vector (stored in the record's first chunk)."""
        return ("gate_up", "down") if self.expert_bias else ()

    def expert_matrices(self) -> dict[str, tuple[int, int]]:
        """Shapes [N_out, K_in] of one routed expert's matrices, as stored in its record."""
        return {"gate_up": (2 * self.intermediate_size, self.hidden_size),
                "down": (self.hidden_size, self.intermediate_size)}

    # ---- (de)serialisation for the manifest ----
    def to_dict(self) -> dict:
        d = asdict(self)
        d["dense_layers"] = list(self.dense_layers)
        d["eos_token_ids"] = list(self.eos_token_ids)
        d["rope_scaling"] = [list(kv) for kv in self.rope_scaling]
        d["sliding_layers"] = list(self.sliding_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MoEArch":
        d = _from_format_2(dict(d))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown MoEArch keys {unknown}; this edgemoe knows {sorted(known)}")
        d["dense_layers"] = tuple(d.get("dense_layers", ()))
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        d["rope_scaling"] = tuple(tuple(kv) for kv in d.get("rope_scaling", ()))
        d["sliding_layers"] = tuple(d.get("sliding_layers", ()))
        router = d.get("router", {})
        if isinstance(router, dict):
            unknown = sorted(set(router) - {f.name for f in fields(RouterSpec)})
            if unknown:
                raise ConfigError(f"unknown router keys {unknown}; this edgemoe knows "
                                  f"{sorted(f.name for f in fields(RouterSpec))}")
            d["router"] = RouterSpec(**router)
        return cls(**d)


# packages of format <= 2.1 name one of three routing kinds with flat settings
_OLD_ROUTINGS = {"softmax_topk": dict(score="softmax"),
                 "topk_softmax": dict(score="softmax", topk_first=True, renormalize=False),
                 "sparsemixer": dict(score="sparsemixer", renormalize=False)}


def _from_format_2(d: dict) -> dict:
    """An arch dict of a format-2.0/2.1 manifest (``routing``, ``norm_topk_prob``,
    ``router_jitter_noise``, ``routed_scaling``) as today's ``router``; others unchanged."""
    if "routing" not in d:
        return d
    kind = d.pop("routing")
    if kind not in _OLD_ROUTINGS:
        raise ConfigError(f"unknown routing {kind!r} in the package's arch; re-export the package")
    router = dict(_OLD_ROUTINGS[kind], scaling=float(d.pop("routed_scaling", 1.0)),
                  jitter=float(d.pop("router_jitter_noise", 0.0)))
    norm = bool(d.pop("norm_topk_prob", True))
    if kind == "softmax_topk":
        router["renormalize"] = norm
    d["router"] = router
    return d
