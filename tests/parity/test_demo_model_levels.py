"""Level-8 fidelity on the trained built-in model (real weights, real text): top-1 agreement with the
unquantized model over 256 teacher-forced held-out positions, per level: the experts' quantization
alone (float32 dense graphs), and export's default package (int8 dense graphs too)."""
from __future__ import annotations

import pytest

from edgemoe.demo import ASSET
from edgemoe.exporters.export import export
from edgemoe.quant.dense import FLOAT32
from edgemoe.quant.spec import QuantSpec
from edgemoe.runtime.engine import Runtime


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    if not (ASSET / "config.json").exists():
        pytest.skip("the built-in model is not in this checkout")
    d = tmp_path_factory.mktemp("demo")
    return (export(ASSET, d / "f32.edgemoe", QuantSpec.float32()),
            export(ASSET, d / "q.edgemoe", dense=FLOAT32), export(ASSET, d / "default.edgemoe"))


@pytest.mark.parametrize("exact", [True, False], ids=["fp32-compute", "int8-activations"])
def test_level8_top1_agreement_on_heldout(packages, exact):
    f32, q, default = packages
    ref = Runtime(f32)
    ids = ref.encode((ASSET / "heldout.txt").read_text())[5000:5256]
    want = ref.forward(ids).argmax(-1)
    agree = {b: (Runtime(q, level=b, exact=exact).forward(ids).argmax(-1) == want).mean()
             for b in (8, 4, 2)}
    # fp32 compute: the weights' error alone; int8 activations (onnxruntime's fast path) flip a
    # near-tie or two more: 0.992 with one MatMulNBits per plane, 0.988 with the fused per-level
    # codes (the two agree to 4e-7 per expert; one token of 256)
    assert agree[8] >= (0.99 if exact else 0.985)
    assert agree[8] >= agree[4] >= agree[2] > 0.5
    # int8 dense graphs (int8 activations in every dense matmul, as llama.cpp's Q8_0) cost about
    # one point more at level 8: measured 0.996 (fp32 compute) and 0.980 (int8 activations)
    full = (Runtime(default, level=8, exact=exact).forward(ids).argmax(-1) == want).mean()
    assert full >= 0.97, full
