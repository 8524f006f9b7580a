"""FP8 checkpoints in the official layout (float8 e4m3 weights + ``weight_scale_inv`` block scales,
``quantization_config``, as DeepSeek-V3/R1, MiniMax-M2 and GLM's FP8 releases ship them): the
export dequantizes block by block while streaming and matches the dequantized model."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from edgemoe.exporters.checkpoint import Checkpoint  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.quant.dense import FLOAT32  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402
from edgemoe.runtime.engine import Runtime  # noqa: E402


def _to_fp8(hf_dir, block=(128, 128), dequantized_dir=None):
    """Every 2-D Linear weight of the decoder layers (not the routers) and the LM head as
    float8 e4m3 with float32 block scales (amax / 448 per block); returns {name: dequantized}.
    With ``dequantized_dir``, also writes there the same checkpoint holding those dequantized
    values in float32 (the reference transformers loads)."""
    import shutil

    from safetensors.torch import load_file, save_file
    f = hf_dir / "model.safetensors"
    t = load_file(f)
    if dequantized_dir is not None:
        shutil.copytree(hf_dir, dequantized_dir)
    bn, bk = block
    deq = {}
    for name in list(t):
        w = t[name]
        if w.ndim != 2 or not name.endswith(".weight") or "embed" in name or ".gate.weight" in name \
                or "norm" in name:
            continue
        n, k = w.shape
        gn, gk = -(-n // bn), -(-k // bk)
        pad = torch.zeros(gn * bn, gk * bk)
        pad[:n, :k] = w.float()
        blocks = pad.reshape(gn, bn, gk, bk)
        scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0            # [gn, gk]
        q = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn)
        t[name] = q.reshape(gn * bn, gk * bk)[:n, :k].contiguous()
        t[name + "_scale_inv"] = scale.float().contiguous()
        deq[name] = (q.float() * scale[:, None, :, None]).reshape(gn * bn, gk * bk)[:n, :k].numpy()
    save_file(t, f, metadata={"format": "pt"})
    if dequantized_dir is not None:
        ref = {n: (torch.from_numpy(np.ascontiguousarray(deq[n])) if n in deq else v.float()) for n, v in t.items()
               if not n.endswith("_scale_inv")}
        save_file(ref, dequantized_dir / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": list(block)}
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    return deq


@pytest.mark.parametrize("family, block", [("minimax_m2", (128, 128)), ("glm4_moe", (16, 32))],
                         ids=["minimax_m2-128x128", "glm4_moe-16x32"])
def test_fp8_checkpoint_exports_and_matches_its_dequantized_model(tmp_path, family, block):
    from transformers import AutoModelForCausalLM
    tiny_models.build(family, tmp_path / "hf")
    deq = _to_fp8(tmp_path / "hf", block, dequantized_dir=tmp_path / "ref")
    ckpt = Checkpoint(tmp_path / "hf")
    assert {ckpt.stored_dtype(n) for n in deq} == {"F8_E4M3"}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ref").eval()   # the FP8 values
    ids = np.random.default_rng(11).integers(0, model.config.vocab_size, 32)
    with torch.no_grad():
        ref = model(torch.tensor(ids[None])).logits[0].numpy()
    f32 = export(tmp_path / "hf", tmp_path / "f32.edgemoe", QuantSpec.float32())
    rt = Runtime(f32, kv_dtype="f32")
    got = np.concatenate([rt.forward(ids[:16])] + [rt.forward(ids[t:t + 1]) for t in range(16, 32)])
    assert np.abs(got - ref).max() <= 1e-4
    # the matryoshka levels: within the error of the chosen level (as the family's own parity)
    q = export(tmp_path / "hf", tmp_path / "q.edgemoe", QuantSpec(), dense=FLOAT32)
    top = np.random.default_rng(12).integers(0, model.config.vocab_size, 256)
    with torch.no_grad():
        want = model(torch.tensor(top[None])).logits[0].numpy().argmax(-1)
    assert (Runtime(q, level=8, exact=True).forward(top).argmax(-1) == want).mean() >= 0.95


def test_an_fp8_weight_without_its_scales_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from edgemoe.errors import CheckpointError
    from edgemoe.exporters.export import plan_export
    tiny_models.build("minimax_m2", tmp_path)
    _to_fp8(tmp_path)
    t = load_file(tmp_path / "model.safetensors")
    victim = next(n for n in t if n.endswith("q_proj.weight_scale_inv"))
    del t[victim]
    save_file(t, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="block scales"):
        plan_export(tmp_path, QuantSpec())
