"""The general router (``runtime/routing.py``) against the routers of transformers' modeling files,
run on the same random logits: every setting a family uses, selection biases random (not zero)."""
from __future__ import annotations

import numpy as np
import pytest

from edgemoe.arch import MoEArch, RouterSpec, _from_format_2
from edgemoe.errors import ConfigError
from edgemoe.runtime.routing import route

E, H, T = 16, 32, 64


def _arch(router: RouterSpec, top_k: int = 4, experts: int = E) -> MoEArch:
    return MoEArch(family="t", vocab_size=8, hidden_size=H, num_layers=1, num_heads=1, num_kv_heads=1,
                   head_dim=8, intermediate_size=8, num_experts=experts, top_k=top_k, max_position=8,
                   router=router)


def _same(idx, w, ref_idx, ref_w):
    """Equal as sets of (expert, weight) per token: transformers' topk(sorted=False) may order them
    otherwise."""
    ref_idx, ref_w = np.asarray(ref_idx), np.asarray(ref_w, dtype=np.float32)
    for t in range(len(idx)):
        a, b = np.argsort(idx[t]), np.argsort(ref_idx[t])
        assert idx[t][a].tolist() == ref_idx[t][b].tolist(), t
        np.testing.assert_allclose(w[t][a], ref_w[t][b], rtol=1e-5, atol=1e-7)


@pytest.fixture
def hidden():
    rng = np.random.default_rng(0)
    return rng.standard_normal((T, H)).astype(np.float32)


def _hf_router(cls_path: str, model_type: str, hidden, **cfg):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import importlib

    from transformers import AutoConfig
    mod, cls = cls_path.rsplit(".", 1)
    config = AutoConfig.for_model(model_type, hidden_size=H, **cfg)
    router = getattr(importlib.import_module(mod), cls)(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=g))
        bias = None
        for name, buf in list(router.named_buffers()) + list(router.named_parameters()):
            if "bias" in name:
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
                bias = buf.detach().numpy().reshape(-1).copy()
        out = router(torch.tensor(hidden))
    logits = hidden @ router.weight.detach().numpy().T
    return logits, bias, [o.detach().numpy() for o in out]


def test_deepseek_v3_groups_top2_sum_sigmoid_bias_matches_glm4_router(hidden):
    """sigmoid, selection on score + bias within the best 2 of 4 groups (top-2 sum), renorm, x2.5."""
    logits, bias, (_, w, idx) = _hf_router(
        "transformers.models.glm4_moe.modeling_glm4_moe.Glm4MoeTopkRouter", "glm4_moe", hidden,
        n_routed_experts=E, num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        norm_topk_prob=True)
    r = RouterSpec(score="sigmoid", selection_bias=True, n_group=4, topk_group=2,
                   group_score="top2_sum", renorm_eps=1e-20, scaling=2.5)
    got_idx, got_w = route(logits, _arch(r), bias)
    _same(got_idx, got_w, idx, w)
    # the bias and the group limit both change choices here (or this test would not see them)
    plain = route(logits, _arch(RouterSpec(score="sigmoid", scaling=2.5)))[0]
    nobias = route(logits, _arch(r), np.zeros(E, np.float32))[0]
    assert (np.sort(plain, -1) != np.sort(got_idx, -1)).any()
    assert (np.sort(nobias, -1) != np.sort(got_idx, -1)).any()


def test_ernie_softmax_bias_clamped_renorm_matches(hidden):
    logits, bias, (_, w, idx) = _hf_router(
        "transformers.models.ernie4_5_moe.modeling_ernie4_5_moe.Ernie4_5_MoeTopKRouter", "ernie4_5_moe",
        hidden, moe_num_experts=E, moe_k=4)
    got_idx, got_w = route(logits, _arch(RouterSpec(selection_bias=True, renorm_min=1e-12)), bias)
    _same(got_idx, got_w, idx, w)


def test_minimax_sigmoid_bias_renorm_matches(hidden):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoConfig
    from transformers.models.minimax_m2.modeling_minimax_m2 import MiniMaxM2TopKRouter
    config = AutoConfig.for_model("minimax_m2", hidden_size=H, num_local_experts=E, num_experts_per_tok=4)
    router = MiniMaxM2TopKRouter(config)
    g = torch.Generator().manual_seed(2)
    bias = torch.randn(E, generator=g) * 0.1
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=g))
        _, w, idx = router(torch.tensor(hidden), bias)
    logits = hidden @ router.weight.detach().numpy().T
    got = route(logits, _arch(RouterSpec(score="sigmoid", selection_bias=True)), bias.numpy())
    _same(*got, idx.numpy(), w.numpy())


def test_group_limit_by_max_keeps_only_the_best_groups():
    """DeepSeek-V2's group_limited_greedy: group score = its best expert; experts of other groups
    are never chosen, however high their score."""
    logits = np.array([[5, 0, 0, 0, 4.9, 4.8, 0, 0]], np.float32)     # groups {0..3}, {4..7}
    r = RouterSpec(n_group=2, topk_group=1, group_score="max", renormalize=False)
    idx, _ = route(logits, _arch(r, top_k=3, experts=8))
    assert sorted(idx[0].tolist()) == [0, 1, 2]          # not 4 and 5 from the other group
    r2 = RouterSpec(n_group=2, topk_group=1, group_score="top2_sum", renormalize=False)
    assert sorted(route(logits, _arch(r2, top_k=3, experts=8))[0][0].tolist()) == [4, 5, 6]


def test_topk_first_softmax_over_the_k_and_sqrtsoftplus():
    logits = np.random.default_rng(3).standard_normal((8, 8)).astype(np.float32)
    idx, w = route(logits, _arch(RouterSpec(topk_first=True, renormalize=False), top_k=2, experts=8))
    top = np.sort(logits, -1)[:, ::-1][:, :2]
    e = np.exp(top - top.max(-1, keepdims=True))
    np.testing.assert_allclose(w, e / e.sum(-1, keepdims=True), rtol=1e-6)
    idx, w = route(logits, _arch(RouterSpec(score="sqrtsoftplus", renormalize=False), top_k=2, experts=8))
    np.testing.assert_allclose(w, np.sqrt(np.log1p(np.exp(np.sort(logits, -1)[:, ::-1][:, :2]))), rtol=1e-5)


def test_a_biased_router_needs_its_bias():
    with pytest.raises(ValueError, match="selection_bias"):
        route(np.zeros((1, E), np.float32), _arch(RouterSpec(score="sigmoid", selection_bias=True)))


def test_old_manifests_routing_kinds_become_router_settings():
    old = {"routing": "softmax_topk", "norm_topk_prob": False, "router_jitter_noise": 0.0,
           "routed_scaling": 1.0}
    assert _from_format_2(dict(old))["router"] == dict(score="softmax", renormalize=False, scaling=1.0,
                                                       jitter=0.0)
    assert RouterSpec(**_from_format_2({"routing": "topk_softmax"})["router"]) == \
        RouterSpec(topk_first=True, renormalize=False)
    assert RouterSpec(**_from_format_2({"routing": "sparsemixer", "router_jitter_noise": 0.01})["router"]) \
        == RouterSpec(score="sparsemixer", renormalize=False, jitter=0.01)
    with pytest.raises(ConfigError, match="re-export"):
        _from_format_2({"routing": "bogus"})


@pytest.mark.parametrize("bad, match", [
    (dict(score="relu"), "score"), (dict(n_group=3), "divide"), (dict(n_group=4, topk_group=5), "topk_group"),
    (dict(topk_first=True, selection_bias=True), "top-k-first")])
def test_bad_router_settings_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        _arch(RouterSpec(**bad))
