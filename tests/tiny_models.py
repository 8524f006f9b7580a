"""Tiny random models of every supported family, built from a config (no downloads).

One line per family: a new family is an adapter file plus a line here.
"""
from __future__ import annotations


import re

ROUTER = re.compile(r"\.(mlp\.gate|block_sparse_moe\.gate|router(\.layer)?)\.weight$")
ROUTER_SHARPEN = 4.0
HEAD_SHARPEN = 3.0   # random heads give near-tie logits; widen the margins the same way

COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.08)

FAMILIES = {
    "mixtral": dict(intermediate_size=96, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(moe_intermediate_size=96, shared_expert_intermediate_size=128, num_experts=4,
                      num_experts_per_tok=2, intermediate_size=128, norm_topk_prob=False),
    "qwen3_moe": dict(moe_intermediate_size=96, num_experts=4, num_experts_per_tok=2,
                      intermediate_size=128, head_dim=16, norm_topk_prob=True),
    "olmoe": dict(intermediate_size=96, num_experts=4, num_experts_per_tok=2, clip_qkv=2.0,
                  norm_topk_prob=False, eos_token_id=1, pad_token_id=0),
    "phimoe": dict(intermediate_size=96, num_local_experts=4, num_experts_per_tok=2,
                   attention_bias=True, lm_head_bias=True),
    "granitemoe": dict(intermediate_size=96, num_local_experts=4, num_experts_per_tok=2,
                       embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3,
                       logits_scaling=2.0),
}


def build(family: str, path, seed: int = 0, dtype=None, **overrides):
    """Save a random tiny ``family`` model to ``path``; returns the torch model (eval mode)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(family, **{**COMMON, **FAMILIES[family], **overrides})
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random routers are near ties; sharpen them so routing is decisive
        for name, p in model.named_parameters():
            if ROUTER.search(name):
                p.mul_(ROUTER_SHARPEN)
            elif name == "lm_head.weight":
                p.mul_(HEAD_SHARPEN)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    return model
