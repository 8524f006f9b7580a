"""Checkpoint variants export and, with unquantized experts, reproduce transformers' logits:
fp16 and bf16 weights, sharded checkpoints (index + shards), fused 3-D expert tensors on disk."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import tiny_models  # noqa: E402
from edgemoe.exporters.checkpoint import Checkpoint  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402
from edgemoe.runtime.engine import Runtime  # noqa: E402

TOL = 1e-4
IDS = np.random.default_rng(0).integers(0, tiny_models.COMMON["vocab_size"], 12)


def _hf_logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch.tensor(ids[None])).logits[0].float().numpy()


def _check_parity(src, out, model):
    pkg = export(src, out, QuantSpec.float32())
    got = Runtime(pkg, kv_dtype="f32").forward(IDS)
    ref = _hf_logits(model)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= TOL


def _dtypes_on_disk(path):
    return {t.dtype for t in Checkpoint(path).tensors.values()}


@pytest.mark.parametrize("dtype, tag", [(torch.float16, "F16"), (torch.bfloat16, "BF16")])
def test_half_precision_checkpoint(tmp_path, dtype, tag):
    tiny_models.build("mixtral", tmp_path / "hf", dtype=dtype)
    assert _dtypes_on_disk(tmp_path / "hf") == {tag}
    # the reference: transformers on the saved weights, upcast to float32 (as the exporter does)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    _check_parity(tmp_path / "hf", tmp_path / "pkg.edgemoe", model)


def test_bf16_values_are_widened_exactly(tmp_path):
    model = tiny_models.build("mixtral", tmp_path / "hf", dtype=torch.bfloat16)
    ckpt = Checkpoint(tmp_path / "hf")
    name = "model.layers.0.self_attn.q_proj.weight"
    got = ckpt.read(name)
    want = model.state_dict()[name].float().numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_sharded_checkpoint(tmp_path):
    model = tiny_models.build("mixtral", tmp_path / "one")
    model.save_pretrained(tmp_path / "hf", max_shard_size="50KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and len(list((tmp_path / "hf").glob("*.safetensors"))) == len(shards)
    assert set(Checkpoint(tmp_path / "hf").tensors) == set(index["weight_map"])
    _check_parity(tmp_path / "hf", tmp_path / "pkg.edgemoe", model)


def test_fused_3d_expert_tensors(tmp_path):
    """transformers' in-memory layout, saved as is: experts.gate_up_proj [E, 2I, H], down_proj
    [E, H, I] and the router as mlp.gate.weight."""
    model = tiny_models.build("mixtral", tmp_path / "per_expert")
    src = tmp_path / "hf"
    src.mkdir()
    model.config.save_pretrained(src)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    E, I, H = 4, 96, 64
    for i in range(2):
        assert tuple(sd[f"model.layers.{i}.mlp.experts.gate_up_proj"].shape) == (E, 2 * I, H)
        assert tuple(sd[f"model.layers.{i}.mlp.experts.down_proj"].shape) == (E, H, I)
        assert f"model.layers.{i}.mlp.gate.weight" in sd
    save_file(sd, str(src / "model.safetensors"))
    assert not any("block_sparse_moe" in n for n in Checkpoint(src).tensors)
    _check_parity(src, tmp_path / "pkg.edgemoe", model)
