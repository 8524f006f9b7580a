"""MoEArch: the normalised hyper-parameters of every supported MoE family, frozen.

Family adapters (``edgemoe/exporters/families/*``) turn a Hugging Face ``config.json`` into one of
these; the graph builders, the package manifest and the runtime read nothing else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from edgemoe.errors import ConfigError

ROUTINGS = ("softmax_topk", "topk_softmax", "sparsemixer")
NORMS = ("rms", "layer")
QK_NORMS = ("none", "per_head", "full")


@dataclass(frozen=True)
class MoEArch:
    """Normalised architecture of a decoder-only MoE transformer (batch 1, causal).

    Routing kinds
    -------------
    softmax_topk : softmax over all E router logits (fp32), top-k, renormalise iff ``norm_topk_prob``
        (Mixtral, Qwen2/3-MoE, OLMoE).
    topk_softmax : top-k on the logits, softmax over the k (GraniteMoE).
    sparsemixer : PhiMoE's two-step masked softmax with ``router_jitter_noise`` as the threshold.
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
    routing: str = "softmax_topk"
    norm_topk_prob: bool = True
    router_jitter_noise: float = 0.0  # sparsemixer threshold (PhiMoE)
    routed_scaling: float = 1.0
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: str = "none"             # none | per_head (Qwen3) | full (OLMoE)
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
        if self.routing not in ROUTINGS:
            raise ConfigError(f"MoEArch.routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.qk_norm not in QK_NORMS:
            raise ConfigError(f"MoEArch.qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of "
                              f"num_kv_heads {self.num_kv_heads}")
        if self.top_k > self.num_experts:
            raise ConfigError(f"top_k {self.top_k} exceeds num_experts {self.num_experts}")
        if self.routing == "sparsemixer" and self.top_k != 2:
            raise ConfigError("sparsemixer routing is defined for top_k == 2 only")
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

    def expert_matrices(self) -> dict[str, tuple[int, int]]:
        """Shapes [N_out, K_in] of one routed expert's matrices, as stored in its record."""
        return {"gate_up": (2 * self.intermediate_size, self.hidden_size),
                "down": (self.hidden_size, self.intermediate_size)}

    # ---- (de)serialisation for the manifest ----
    def to_dict(self) -> dict:
        d = asdict(self)
        d["dense_layers"] = list(self.dense_layers)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MoEArch":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown MoEArch keys {unknown}; this edgemoe knows {sorted(known)}")
        d = dict(d)
        d["dense_layers"] = tuple(d.get("dense_layers", ()))
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        return cls(**d)
