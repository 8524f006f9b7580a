"""Latent attention beyond the family table: the cache holds [latent | k_pe] per token (one buffer
that is K and V), measured at 2,000 tokens; decoding far past the prefill matches transformers;
DeepSeek-V3.2's context is capped at its indexer's top-k."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.package.graph_io import kv_bytes_per_token, kv_head_dim  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402
from edgemoe.runtime.engine import Runtime  # noqa: E402


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    d = tmp_path_factory.mktemp("v3")
    model = tiny_models.build("deepseek_v3", d / "hf", max_position_embeddings=4096)
    return model, export(d / "hf", d / "f32.edgemoe", QuantSpec.float32())


def test_the_latent_cache_holds_latent_plus_rope_per_token_at_2000_tokens(v3, capsys):
    model, f32 = v3
    rt = Runtime(f32, context=2048)
    ids = np.random.default_rng(20).integers(0, model.config.vocab_size, 2000)
    for s in range(0, 2000, 500):
        rt.forward(ids[s:s + 500], last_only=True)
    a = rt.arch
    width = a.kv_lora_rank + a.rope_dim                                   # 16 + 8
    assert all(k is v for k, v in zip(rt.kv.k, rt.kv.v))                 # one buffer is K and V
    assert kv_bytes_per_token(a, "f16") == kv_head_dim(width) * a.num_layers * 2
    assert rt.kv.nbytes() == 2048 * kv_bytes_per_token(a, "f16")
    expanded = a.num_heads * (a.head_dim + a.v_head_dim) * a.num_layers * 2   # K [NH, dn+dr], V [NH, dv]
    with capsys.disabled():
        print(f"\n[deepseek_v3 tiny, f16] latent cache {kv_bytes_per_token(a, 'f16')} bytes/token "
              f"({width} values x {a.num_layers} layers x 2 bytes), {rt.kv.nbytes()} bytes for 2048 "
              f"positions; expanded K/V would be {expanded} bytes/token")
    assert expanded > kv_bytes_per_token(a, "f16")


def test_decoding_far_past_the_prefill_matches(v3):
    model, f32 = v3
    ids = np.random.default_rng(21).integers(0, model.config.vocab_size, 96)
    with torch.no_grad():
        ref = model(torch.tensor(ids[None])).logits[0].numpy()
    rt = Runtime(f32, kv_dtype="f32", context=128)
    got = np.concatenate([rt.forward(ids[:8])] + [rt.forward(ids[t:t + 1]) for t in range(8, 96)])
    assert np.abs(got - ref).max() <= 1e-4


def test_deepseek_v32_caps_the_context_at_the_indexers_top_k(tmp_path, capfd):
    tiny_models.build("deepseek_v32", tmp_path / "hf")
    pkg = export(tmp_path / "hf", tmp_path / "p.edgemoe", QuantSpec.float32())
    assert "capped at its index_topk = 256" in capfd.readouterr().err
    rt = Runtime(pkg)
    assert rt.arch.max_position == 256
    from edgemoe.errors import ConfigError
    with pytest.raises(ConfigError, match="max_position 256"):
        rt.forward(np.zeros(257, dtype=np.int64))
