"""Config plumbing shared by the families: RoPE scaling types against transformers' formulas,
interleaved RoPE as a permutation, MTP layers ignored per config, per-layer values, windows."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgemoe.arch import MoEArch
from edgemoe.errors import CheckpointError, UnsupportedArchitectureError
from edgemoe.exporters.families.base import per_layer_value, rope_scaling, rotary_dim
from edgemoe.exporters.weight_map import half_split_order
from edgemoe.runtime.rope import inv_freq, rope_tables

ROPES = {
    "yarn": {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
             "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False},
    "yarn_mscale": {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                    "mscale": 1.0, "mscale_all_dim": 0.707},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "ntk_alpha": {"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0},
}


def _arch(cfg: dict, head_dim: int = 64) -> MoEArch:
    return MoEArch(family="t", vocab_size=8, hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=4,
                   head_dim=head_dim, intermediate_size=8, num_experts=4, top_k=2,
                   max_position=cfg["max_position_embeddings"],
                   rope_theta=cfg["rope_parameters"]["rope_theta"], rope_scaling=rope_scaling(cfg),
                   rotary_dim=rotary_dim(cfg, head_dim))


@pytest.mark.parametrize("kind", sorted(ROPES))
def test_rope_scaling_matches_transformers(kind):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    params = dict(ROPES[kind], rope_theta=150000.0)
    cfg = dict(max_position_embeddings=131072, rope_parameters=params, head_dim=64)
    a = _arch(cfg)
    got, scale = inv_freq(a)
    hf = AutoConfig.for_model("llama", hidden_size=256, num_attention_heads=4, head_dim=64,
                              max_position_embeddings=131072, rope_parameters=dict(params))
    if kind == "ntk_alpha":        # HunYuan's static NTK-alpha base (its modeling file's formula)
        from transformers.models.hunyuan_v1_moe.modeling_hunyuan_v1_moe import HunYuanMoEV1RotaryEmbedding
        ref, ref_scale = HunYuanMoEV1RotaryEmbedding.compute_ntk_alpha_rope_parameters(hf)
    else:
        ref, ref_scale = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf, "cpu")
    np.testing.assert_allclose(got, ref.numpy(), rtol=2e-6)
    assert scale == pytest.approx(ref_scale, rel=1e-6)
    cos, _ = rope_tables(a, np.array([0, 5000]))
    assert cos[0].max() == pytest.approx(scale)        # the attention factor scales cos and sin
    assert a.rope_scaling[0] == ("rope_type", "ntk_alpha" if kind == "ntk_alpha" else params["rope_type"])


def test_dynamic_without_alpha_is_default_and_unknown_types_are_refused():
    assert rope_scaling({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}) == ()
    with pytest.raises(UnsupportedArchitectureError, match="longrope"):
        rope_scaling({"rope_parameters": {"rope_type": "longrope"}})


def test_partial_rotary_from_rope_parameters_top_level_or_rotary_dim():
    assert rotary_dim({"rope_parameters": {"partial_rotary_factor": 0.5}}, 128) == 64
    assert rotary_dim({"partial_rotary_factor": 0.25}, 128) == 32
    assert rotary_dim({"rotary_dim": 64}, 128) == 64
    assert rotary_dim({}, 128) == 128


def test_interleaved_rope_is_a_permutation_of_half_split():
    """GPT-J pairs (2j, 2j+1) rotated by frequency j equal half-split rotation of the permuted
    vector: the permutation moves element 2j to j and 2j+1 to j + R/2."""
    rng = np.random.default_rng(0)
    d, r = 16, 12
    x = rng.standard_normal(d).astype(np.float32)
    theta = rng.standard_normal(r // 2).astype(np.float32)
    gptj = x.copy()
    for j in range(r // 2):
        a, b = x[2 * j], x[2 * j + 1]
        gptj[2 * j] = a * np.cos(theta[j]) - b * np.sin(theta[j])
        gptj[2 * j + 1] = b * np.cos(theta[j]) + a * np.sin(theta[j])
    order = half_split_order(d, r)
    p = x[order]
    cos, sin = np.cos(np.concatenate([theta, theta])), np.sin(np.concatenate([theta, theta]))
    rot = p[:r] * cos + np.concatenate([-p[r // 2:r], p[:r // 2]]) * sin
    np.testing.assert_allclose(np.concatenate([rot, p[r:]]), gptj[order], rtol=1e-6, atol=1e-6)


def test_per_layer_values_must_agree():
    assert per_layer_value({"moe_topk": [8, 8, 8]}, "moe_topk") == 8
    with pytest.raises(UnsupportedArchitectureError, match="differs between layers"):
        per_layer_value({"num_experts": [64, 32]}, "num_experts")


def test_mtp_layers_are_ignored_only_as_the_config_counts_them(tmp_path):
    """GLM-4.5 checkpoints append num_nextn_predict_layers MTP layers after the decoder: those are
    skipped; a tensor of a layer the config does not declare still fails the export."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from safetensors.numpy import load_file, save_file

    import tiny_models
    from edgemoe.exporters.export import plan_export
    from edgemoe.quant.spec import QuantSpec
    tiny_models.build("glm4_moe", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    n = cfg["num_hidden_layers"]
    f = tmp_path / "model.safetensors"
    t = load_file(f)
    t[f"model.layers.{n}.eh_proj.weight"] = np.ones((4, 4), np.float32)     # the MTP layer's
    save_file(t, f, metadata={"format": "pt"})
    cfg["num_nextn_predict_layers"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    plan_export(tmp_path, QuantSpec())
    cfg["num_nextn_predict_layers"] = 0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"model.layers.{n}.eh_proj"):
        plan_export(tmp_path, QuantSpec())


def test_sliding_layers_outside_gpt_oss_are_refused():
    from edgemoe.exporters.families.base import common_arch
    cfg = dict(vocab_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               layer_types=["sliding_attention", "full_attention"])
    with pytest.raises(UnsupportedArchitectureError, match="sliding_attention"):
        common_arch(cfg, "t", intermediate_size=8, num_experts=4, top_k=2)
