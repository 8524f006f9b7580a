"""gpt-oss beyond the family table's parity: the windowed KV cache evicting (and its bytes), the
MXFP4 experts of the official layout, and each level's error against those 4-bit values."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.quant.dense import FLOAT32  # noqa: E402
from edgemoe.quant.record import decode_record  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402
from edgemoe.runtime.engine import Runtime  # noqa: E402
from edgemoe.runtime.kv_cache import KVCache, window_capacity  # noqa: E402

WINDOW = 8


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt_oss")
    model = tiny_models.build("gpt_oss", d / "hf")
    return d, model, export(d / "hf", d / "f32.edgemoe", QuantSpec.float32())


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids)[None])).logits[0].float().numpy()


def test_decoding_past_the_window_cache_matches(gpt_oss):
    """16-token prefill then 84 cached decode steps: the sliding layers' window-sized buffers
    (window 8 + slack = 40 rows) evict twice, logits stay within 1e-4 of transformers."""
    _, model, f32 = gpt_oss
    ids = np.random.default_rng(7).integers(0, model.config.vocab_size, 100)
    ref = _hf_logits(model, ids)
    rt = Runtime(f32, kv_dtype="f32", context=128)
    assert rt.kv.k[0].shape[2] == window_capacity(WINDOW) < 100      # layer 0 slides
    assert rt.kv.k[1].shape[2] == 128
    got = np.concatenate([rt.forward(ids[:16])] + [rt.forward(ids[t:t + 1]) for t in range(16, 100)])
    assert np.abs(got - ref).max() <= 1e-4


def test_a_batch_with_windowed_layers_equals_each_alone(gpt_oss):
    """Sequences joining, leaving (slots compacted: windowed rows moved) past the window."""
    _, model, f32 = gpt_oss
    rng = np.random.default_rng(8)
    prompts = [rng.integers(0, model.config.vocab_size, n).tolist() for n in (30, 5, 45)]
    alone = [Runtime(f32, kv_dtype="f32", context=128).generate(p, max_new_tokens=20, stop_at_eos=False).ids
             for p in prompts]
    rt = Runtime(f32, kv_dtype="f32", context=128, max_batch=2)
    from edgemoe.runtime.batch import generate_batch
    got = generate_batch(rt, prompts, max_new_tokens=20, stop_at_eos=False)
    assert got == alone


def test_sliding_layers_hold_only_their_window_at_2000_tokens(gpt_oss, capsys):
    _, model, f32 = gpt_oss
    rt = Runtime(f32, context=2048)
    ids = np.random.default_rng(9).integers(0, model.config.vocab_size, 2000)
    for s in range(0, 2000, 500):
        rt.forward(ids[s:s + 500], last_only=True)
    a = rt.arch
    per_row = 2 * a.num_kv_heads * 16 * 2                         # K and V, f16, head_dim 16
    sliding = sum(rt.kv.k[i].nbytes + rt.kv.v[i].nbytes for i in a.sliding_layers)
    full = sum(rt.kv.k[i].nbytes + rt.kv.v[i].nbytes for i in range(a.num_layers)
               if i not in a.sliding_layers)
    assert sliding == len(a.sliding_layers) * window_capacity(WINDOW) * per_row
    assert full == (a.num_layers - len(a.sliding_layers)) * 2048 * per_row
    assert rt.kv.nbytes() == KVCache.bytes_for(a, 2048)
    with capsys.disabled():
        print(f"\n[gpt-oss tiny, 2000 tokens, f16] KV {rt.kv.nbytes()} bytes: sliding layers "
              f"{sliding} (window {WINDOW} + slack), full layers {full}; an unwindowed cache "
              f"would hold {a.num_layers * 2048 * per_row}")


def test_mxfp4_experts_export_and_match_their_dequantized_values(tmp_path, capsys):
    model = tiny_models.build("gpt_oss", tmp_path / "hf", seed=3)
    deq = tiny_models.to_mxfp4(tmp_path / "hf")
    with torch.no_grad():       # the reference: the same model with the MXFP4 values
        params = dict(model.named_parameters())
        for name, w in deq.items():
            params[name].copy_(torch.from_numpy(np.ascontiguousarray(w)))
    f32 = export(tmp_path / "hf", tmp_path / "f32.edgemoe", QuantSpec.float32())
    ids = np.random.default_rng(10).integers(0, model.config.vocab_size, 24)
    assert np.abs(Runtime(f32, kv_dtype="f32").forward(ids) - _hf_logits(model, ids)).max() <= 1e-4

    q = export(tmp_path / "hf", tmp_path / "q.edgemoe", QuantSpec(), dense=FLOAT32)
    from edgemoe.package.reader import Package
    from edgemoe.package.record_store import ExpertStore
    pkg = Package(q)
    store = ExpertStore(pkg)
    gu = deq["model.layers.0.mlp.experts.gate_up_proj"]                # [E, H, 2I] interleaved
    i = gu.shape[2] // 2
    err = {}
    for bits in pkg.quant.ladder:
        w = decode_record(store.read(0, 1, bits), pkg.layout, bits)["gate_up"]   # [2I, H] gate first
        ref = np.concatenate([gu[1][:, 0::2], gu[1][:, 1::2]], axis=1).T
        assert w.shape == ref.shape == (2 * i, gu.shape[1])
        err[bits] = float(np.sqrt(np.mean((w - ref) ** 2) / np.mean(ref ** 2)))
    store.close()
    with capsys.disabled():
        print(f"\n[gpt-oss tiny MXFP4 experts] relative RMS error against the MXFP4 values: "
              + ", ".join(f"level {b} {e:.4f}" for b, e in err.items()))
    assert err[8] < 0.01            # near-lossless
    assert err[2] > err[4] > err[8]
