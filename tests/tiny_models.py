"""Tiny random models of every supported family, built from a config (no downloads).

One line per family: a new family is an adapter file plus a line here.
"""
from __future__ import annotations


import re

ROUTER = re.compile(r"\.(mlp\.gate(\.wg)?|block_sparse_moe\.gate|router(\.layer)?)\.weight$")
# zero-initialised tensors that feed a path: the selection biases (buffers in some families) and
# every zero bias; random values make the parity tests exercise them
SELECTION_BIAS = re.compile(r"(e_score_correction_bias|expert_bias)$")
SELECTION_BIAS_STD = 0.1
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
    "granitemoeshared": dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
                             shared_intermediate_size=80, residual_multiplier=0.5,
                             embedding_multiplier=2.0),
    # two groups of four, one kept: the group limit decides; a dense first layer
    "glm4_moe": dict(intermediate_size=128, moe_intermediate_size=32, n_routed_experts=8,
                     n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1, head_dim=16,
                     use_qk_norm=True, attention_bias=True, n_group=2, topk_group=1,
                     routed_scaling_factor=1.5, num_hidden_layers=3),
    "sarvam_moe": dict(intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                       num_experts_per_tok=2, head_dim=16, routed_scaling_factor=2.5, num_hidden_layers=3),
    "dots1": dict(intermediate_size=128, moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
                  num_experts_per_tok=2, first_k_dense_replace=1, n_group=2, topk_group=1,
                  norm_topk_prob=True, routed_scaling_factor=2.0, num_hidden_layers=3),
    "ernie4_5_moe": dict(moe_num_experts=8, moe_k=2, moe_intermediate_size=32, intermediate_size=128,
                         moe_num_shared_experts=1, moe_layer_start_index=1, use_bias=True,
                         num_hidden_layers=3),
    "hunyuan_v1_moe": dict(num_experts=8, moe_topk=2, intermediate_size=32, head_dim=16,
                           rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0,
                                            "rope_theta": 10000.0}),
    "minimax_m2": dict(intermediate_size=32, num_local_experts=8, num_experts_per_tok=2, head_dim=16,
                       rotary_dim=8, bos_token_id=None, eos_token_id=None,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                        "partial_rotary_factor": 0.5}),
    # sliding window 8 < the 16-token prompt, so the windowed layers' eviction is exercised
    "gpt_oss": dict(head_dim=16, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
                    sliding_window=8, max_position_embeddings=131072, num_hidden_layers=4),
    # latent attention with q LoRA; rope 8 / nope 16 / v 16, latent 16: 24-wide cached rows
    "deepseek_v3": dict(kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
                        v_head_dim=16, num_key_value_heads=4, intermediate_size=128,
                        moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
                        num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
                        routed_scaling_factor=2.5, num_hidden_layers=3),
    # V2-Lite-like: no q LoRA, group-limited softmax routing (2 groups of 4, one kept)
    "deepseek_v2": dict(kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16,
                        v_head_dim=16, num_key_value_heads=4, intermediate_size=128,
                        moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=2,
                        num_experts_per_tok=2, topk_method="group_limited_greedy", n_group=2,
                        topk_group=1, first_k_dense_replace=1, routed_scaling_factor=1.5,
                        num_hidden_layers=3),
    # V3.2: V3 plus the lightning indexer (ignored: the test's 32 tokens are under index_topk)
    "deepseek_v32": dict(kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
                         v_head_dim=16, num_key_value_heads=4, intermediate_size=128,
                         moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
                         num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
                         index_topk=256, index_head_dim=16, index_n_heads=2, num_hidden_layers=3,
                         max_position_embeddings=4096),
    # GLM-4.7-Flash: latent attention without q LoRA, v wider than nope
    "glm4_moe_lite": dict(kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16,
                          v_head_dim=24, num_key_value_heads=4, intermediate_size=128,
                          moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
                          num_experts_per_tok=2, num_hidden_layers=3),
    "flex_olmo": dict(intermediate_size=32, num_experts=8, num_experts_per_tok=2, pad_token_id=0,
                      eos_token_id=1),
}


def build(family: str, path, seed: int = 0, dtype=None, **overrides):
    """Save a random tiny ``family`` model to ``path``; returns the torch model (eval mode)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(family, **{**COMMON, **FAMILIES[family], **overrides})
    model = AutoModelForCausalLM.from_config(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random routers are near ties; sharpen them so routing is decisive
        for name, p in model.named_parameters():
            if ROUTER.search(name):
                p.mul_(ROUTER_SHARPEN)
            elif name == "lm_head.weight":
                p.mul_(HEAD_SHARPEN)
            elif SELECTION_BIAS.search(name):
                p.copy_(torch.randn(p.shape, generator=gen) * SELECTION_BIAS_STD)
            elif name.endswith("bias") and not p.any():   # zero-initialised Linear biases
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        for name, buf in model.named_buffers():
            if SELECTION_BIAS.search(name):
                buf.copy_(torch.randn(buf.shape, generator=gen) * SELECTION_BIAS_STD)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    return model


WORDS = ("the a small mixture of experts runs on tiny boards under budget memory flash bits level "
         "token model layer expert router graph onnx numpy quant").split()


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer every id of a tiny model decodes to (WORDS, then w<i>)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0}
    for i in range(1, vocab_size):
        vocab[WORDS[i - 1] if i <= len(WORDS) else f"w{i}"] = i
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok


def to_mxfp4(hf_dir):
    """Rewrite a saved gpt-oss checkpoint with MXFP4 experts as the official one is laid out
    (``*_blocks`` [E, out, in/32, 16], ``*_scales`` [E, out, in/32], quantization_config);
    returns {param name: the dequantized [E, in, out] weights} to load into the torch model."""
    import json

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from edgemoe.exporters.mxfp4 import dequantize_mxfp4, quantize_mxfp4
    f = hf_dir / "model.safetensors"
    t = load_file(f)
    deq = {}
    for name in [n for n in t if n.endswith(("gate_up_proj", "down_proj")) and ".experts." in n]:
        out_major = np.ascontiguousarray(t.pop(name).transpose(0, 2, 1))     # [E, out, in]
        blocks, scales = quantize_mxfp4(out_major)
        t[name + "_blocks"] = blocks.reshape(*out_major.shape[:2], -1, 16)
        t[name + "_scales"] = scales
        deq[name] = dequantize_mxfp4(t[name + "_blocks"], scales).transpose(0, 2, 1)
    save_file(t, f, metadata={"format": "pt"})
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    return deq
