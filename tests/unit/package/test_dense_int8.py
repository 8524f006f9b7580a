"""`export --dense int8`: int8 dense graphs (golden structure), the embedding gathered exactly as
the numpy reference dequantizes it, logits close to the float32-dense package, and the budgeted
runtime exact on it."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from edgemoe.cli import main  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.package import constants as C  # noqa: E402
from edgemoe.package.graph_io import ROUTER_WEIGHT  # noqa: E402
from edgemoe.package.reader import Package  # noqa: E402
from edgemoe.quant.dense import (FLOAT32, DenseQuant, dequantize_int4_groups, dequantize_int8_groups,  # noqa: E402
                                 quantize_int4_groups, quantize_int8_groups)
from edgemoe.runtime.engine import Runtime  # noqa: E402

INT8 = DenseQuant("int8", 64)
FAMILIES = ["mixtral", "qwen2_moe", "phimoe", "granitemoe"]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    model = tiny_models.build(request.param, d / "hf")
    return model, export(d / "hf", d / "f32.edgemoe", dense=FLOAT32), export(d / "hf", d / "i8.edgemoe", dense=INT8)


def _logits(pkg, ids, **kw):
    rt = Runtime(pkg, level=8, **({"exact": True} if "backend" not in kw else {}), **kw)
    try:
        return rt.forward(ids)
    finally:
        rt.close()


def test_graphs_use_int8_matmuls_except_the_router(pair):
    _, _, i8 = pair
    pkg = Package(i8)
    for rel in [pkg.head_graph, *pkg.layer_graphs]:
        g = onnx.load(str(pkg.path(rel)), load_external_data=False).graph
        inits = {t.name: t for t in g.initializer}
        weighted = [n for n in g.node if n.op_type == "MatMul" and any(i in inits for i in n.input)]
        # float32 stays only for the router and [1, K] gates (Qwen2's shared-expert gate)
        w = [inits[i] for n in weighted for i in n.input if i in inits]
        assert all(t.name == ROUTER_WEIGHT or t.dims[-1] == 1 for t in w), rel
        nbits = [n for n in g.node if n.op_type == "MatMulNBits"]
        assert nbits and all(inits[n.input[1]].data_type == onnx.TensorProto.UINT8 for n in nbits)


def test_manifest_and_sizes(pair):
    _, f32, i8 = pair
    p32, p8 = Package(f32), Package(i8)
    assert p8.dense == INT8 and p32.dense == DenseQuant()
    assert C.K_DENSE in p8.manifest and C.K_DENSE not in p32.manifest
    assert p8.dense_bytes() < 0.45 * p32.dense_bytes()


def test_embedding_is_the_reference_dequantization(pair):
    model, _, i8 = pair
    pkg = Package(i8)
    sess = ort.InferenceSession(str(pkg.path(pkg.embed_graph)), providers=["CPUExecutionProvider"])
    ids = np.array([0, 5, 17, pkg.arch.vocab_size - 1], dtype=np.int64)
    got = sess.run(None, {"ids": ids})[0]
    w = model.get_input_embeddings().weight.detach().float().numpy()
    codes, scales = quantize_int8_groups(w, INT8.group_size)
    ref = dequantize_int8_groups(codes, scales, w.shape[1])[ids] * pkg.arch.embedding_multiplier
    np.testing.assert_array_equal(got, ref.astype(np.float32))


def test_logits_close_to_float32_dense(pair):
    _, f32, i8 = pair
    ids = np.arange(3, 19)
    a, b = _logits(f32, ids), _logits(i8, ids)
    # median over positions: PhiMoE's sparsemixer gate weight jumps where a score crosses its
    # threshold, so one position of 16 may move by far more than int8 rounding (seen: 1.6 vs 0.1)
    rel = np.median(np.abs(a - b).max(-1)) / np.abs(a).max()
    assert rel < 0.03, rel
    # a changed top-1 is only allowed at a near tie: the float32 margin between the two tokens
    # is within the logits' own change there (random tiny models are full of near ties)
    ta, tb = a.argmax(-1), b.argmax(-1)
    for t in np.flatnonzero(ta != tb):
        assert a[t, ta[t]] - a[t, tb[t]] <= 2 * np.abs(a[t] - b[t]).max(), t


def test_budgeted_run_is_exact_on_int8_dense(pair):
    _, _, i8 = pair
    ids = np.arange(3, 19)
    ref = _logits(i8, ids, backend="planes")     # the budgeted runtime's backend, all resident
    rt = Runtime(i8, level=8, budget="50%", context=64)
    try:
        got = rt.forward(ids)
    finally:
        rt.close()
    np.testing.assert_array_equal(got, ref)


def test_cli_export_dense_int8_and_inspect(pair, tmp_path):
    model, f32, _ = pair
    src = Package(f32).manifest[C.K_PRODUCER]["source"]["path"]
    r = CliRunner().invoke(main, ["export", src, "-o", str(tmp_path / "p"), "--dense", "int8"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "p")])
    assert "(int8, group 64)" in r.output
    info = json.loads(CliRunner().invoke(main, ["inspect", str(tmp_path / "p"), "--json"]).output)
    assert info["dense"] == INT8.to_dict()
    r = CliRunner().invoke(main, ["export", src, "-o", str(tmp_path / "q"), "--dense", "int2"])
    assert r.exit_code == 2 and "int2" in r.output


def test_dense_defaults_to_int8_and_to_float32_on_the_exact_path(pair, tmp_path):
    """Export's default: int8 dense graphs of the experts' group size; float32 (exact) with
    float32 experts, or when asked for."""
    model, f32, _ = pair
    src = Package(f32).manifest[C.K_PRODUCER]["source"]["path"]
    cases = {"d": ([], DenseQuant("int8", 64)), "g32": (["--group-size", "32"], DenseQuant("int8", 32)),
             "x": (["--experts", "float32"], FLOAT32), "f": (["--dense", "float32"], FLOAT32)}
    for name, (args, want) in cases.items():
        r = CliRunner().invoke(main, ["export", src, "-o", str(tmp_path / name), *args])
        assert r.exit_code == 0, r.output
        assert Package(tmp_path / name).dense == want, name
    assert Package(export(src, tmp_path / "py")).dense == DenseQuant("int8", 64)
    r = CliRunner().invoke(main, ["export", "--help"])
    assert "default: int8; float32 with --experts float32" in " ".join(r.output.split())


def test_int4_dense_matmuls_at_4_bits_the_embedding_int8(pair, tmp_path):
    """``--dense int4``: attention, dense MLPs and the LM head as 4-bit MatMulNBits (codes and
    scales exactly ``quantize_int4_groups``), the embedding as int8 (one row a token); logits
    further from float32 than int8's, within what 4-bit rounding gives."""
    model, f32, i8 = pair
    src = Package(f32).manifest[C.K_PRODUCER]["source"]["path"]
    i4 = export(src, tmp_path / "i4.edgemoe", dense=DenseQuant("int4", 64))
    pkg = Package(i4)
    assert pkg.dense == DenseQuant("int4", 64) and pkg.dense.embedding == INT8
    def head_bytes(p):
        return sum(os.path.getsize(p.path(r)) for r in (p.head_graph, p.head_graph + ".data")
                   if os.path.exists(p.path(r)))
    assert head_bytes(pkg) < 0.65 * head_bytes(Package(i8))     # 4.5 bits a weight against 8.5
    for rel in [pkg.head_graph, *pkg.layer_graphs]:
        g = onnx.load(str(pkg.path(rel)), load_external_data=True).graph
        nbits = [n for n in g.node if n.op_type == "MatMulNBits"]
        assert nbits and all(a.i == 4 for n in nbits for a in n.attribute if a.name == "bits"), rel
    g = onnx.load(str(pkg.path(pkg.head_graph)), load_external_data=True).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    node, = [n for n in g.node if n.op_type == "MatMulNBits"]
    w = (model.get_output_embeddings().weight.detach().float().numpy())
    codes, scales = quantize_int4_groups(w, 64)
    np.testing.assert_array_equal(inits[node.input[1]], codes)
    np.testing.assert_array_equal(inits[node.input[2]].reshape(scales.shape), scales)
    sess = ort.InferenceSession(str(pkg.path(pkg.embed_graph)), providers=["CPUExecutionProvider"])
    ref8 = ort.InferenceSession(str(Package(i8).path(Package(i8).embed_graph)), providers=["CPUExecutionProvider"])
    ids = np.array([0, 5, 17], dtype=np.int64)
    np.testing.assert_array_equal(sess.run(None, {"ids": ids})[0], ref8.run(None, {"ids": ids})[0])
    tok = np.arange(3, 19)
    a, b4, b8 = _logits(f32, tok), _logits(i4, tok), _logits(i8, tok)
    rel4 = np.median(np.abs(a - b4).max(-1)) / np.abs(a).max()
    rel8 = np.median(np.abs(a - b8).max(-1)) / np.abs(a).max()
    print(f"dense int4 logits rel err {rel4:.3f} (int8 {rel8:.3f})")
    assert rel8 < rel4 < 0.3, (rel4, rel8)


def test_int4_codes_round_trip():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 200)).astype(np.float32)
    codes, scales = quantize_int4_groups(w, 64)
    assert codes.shape == (8, 4, 32) and scales.shape == (8, 4)
    back = dequantize_int4_groups(codes, scales, 200)
    err = np.abs(back - w).reshape(8, -1)
    assert err.max() <= scales.max() / 2 + 1e-6            # round to nearest of a 15-level grid
    assert np.abs(back - w).mean() > 0                     # and it is 4-bit, not lossless
