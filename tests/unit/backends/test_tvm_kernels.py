"""TVM host kernels on the bit planes: every kernel, every level, GEMV (T=1) and GEMM (T=4, 16),
against the numpy reference (``decode_record`` + float64 matmul; for the int8-activation GEMVs
that CPUs with integer SIMD get, ``matmul_from_planes_int8``), on small shapes: this CPU's own
kernels, and the AVX2 ones (built for Haswell) where it has AVX2."""
from __future__ import annotations

import numpy as np
import pytest

from edgemoe.backends.tvm import tvm_missing_reason
from edgemoe.quant.record import decode_record, encode_record
from edgemoe.quant.spec import QuantSpec

pytestmark = pytest.mark.skipif(tvm_missing_reason() is not None,
                                reason=f"apache-tvm is not installed: {tvm_missing_reason()}")

TOL = 1e-4          # max |y - ref| / max |ref|
# (spec, H, I): the default ladder with K not a multiple of the group (I = 96, gs 64); a two-level
# ladder with float32 scales and 4-bit planes only; the lone 8-bit plane with one padded group
CASES = {"2-4-8/gs64": (QuantSpec(), 128, 96),
         "4-8/gs32/f32": (QuantSpec(ladder=(4, 8), group_size=32, scale_dtype="float32"), 64, 80),
         "8/gs128": (QuantSpec(ladder=(8,), group_size=128), 64, 48),
         # shapes whose kernels take int8 activations on dot-product CPUs (plane rows of whole
         # 64-byte blocks): gate_up K = 256, down K = 512
         "2-4-8/gs64/int8": (QuantSpec(), 256, 512),
         # int8 with a full 16-group offset vector (gate_up K = 1024), and groups of 32 with a
         # merged 8-bit run (x86 VNNI; too wide for ARM's signed sdot)
         "2-4-8/gs64/int8-wide": (QuantSpec(), 1024, 256),
         "4-8/gs32/int8": (QuantSpec(ladder=(4, 8), group_size=32, scale_dtype="float32"), 256, 512),
         # the same two on AVX2 (vpmaddubsw; built for Haswell, so they run on any AVX2 CPU): the
         # merged 8-bit run is too wide for its saturating int16 pair sums and stays float32
         "2-4-8/gs64/int8/avx2": (QuantSpec(), 256, 512),
         "4-8/gs32/int8/avx2": (QuantSpec(ladder=(4, 8), group_size=32, scale_dtype="float32"), 256, 512)}
TARGETS = {"avx2": {"mcpu": "haswell"}}       # case-name suffix -> llvm target (else this CPU's)
BUCKETS = (1, 4, 16)


def _record(spec, hidden, inter, seed=0):
    rng = np.random.default_rng(seed)
    w = {"gate_up": (rng.standard_normal((2 * inter, hidden)) * 0.05).astype(np.float32),
         "down": (rng.standard_normal((hidden, inter)) * 0.05).astype(np.float32)}
    chunks, layout = encode_record(w, spec)
    return chunks, layout


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    from edgemoe.backends.tvm.backend import TvmBackend, jit_kernels

    from edgemoe.backends.tvm.runtime_lib import cpu_flags

    spec, hidden, inter = CASES[request.param]
    target = TARGETS.get(request.param.rsplit("/", 1)[-1])
    if target is not None and "avx2" not in cpu_flags():
        pytest.skip("this CPU has no AVX2 to run the AVX2 kernels on")
    chunks, layout = _record(spec, hidden, inter)
    buf = np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()
    ks = jit_kernels(hidden, inter, spec, BUCKETS, target=target)
    return {"isa": ks.index["isa"], "name": request.param, "spec": spec, "hidden": hidden,
            "inter": inter, "chunks": chunks, "layout": layout, "buf": buf, "kernels": ks,
            "backend": TvmBackend()}


def _rel(y, ref):
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max())


def _int8(case, m: str, bits: int) -> bool:
    """Whether the kernels of matrix ``m`` at level ``bits`` have int8 activations."""
    from edgemoe.backends.tvm.specs import kernel_name

    name = kernel_name(m, bits, 1)
    return next(k["activations"] for k in case["kernels"].index["kernels"] if k["name"] == name) == "int8"


def _product(case, x, m, bits):
    """The reference of one matrix's kernel: float64 product, or the int8-activation reference."""
    from edgemoe.quant.matmul import matmul_from_planes_int8
    from edgemoe.quant.record import slot_array

    spec, layout, buf = case["spec"], case["layout"], case["buf"]
    (n, k), = [(n, k) for name, n, k in layout.matrices if name == m]
    if _int8(case, m, bits):
        planes = [slot_array(buf, layout, layout.slot(m, "plane", spec.ladder[p]))
                  for p in range(spec.level_index(bits) + 1)]
        return matmul_from_planes_int8(x, planes, slot_array(buf, layout, layout.slot(m, "scale", bits)),
                                       slot_array(buf, layout, layout.slot(m, "offset", bits)),
                                       bits, spec, k).astype(np.float64)
    return x.astype(np.float64) @ decode_record(buf, layout, bits)[m].astype(np.float64).T


def _swiglu64(x, gate_up, down):
    gu = x @ gate_up.T
    i = gate_up.shape[0] // 2
    g, u = gu[:, :i], gu[:, i:]
    return ((g / (1 + np.exp(-g))) * u) @ down.T


@pytest.mark.parametrize("tokens", BUCKETS)
def test_every_matmul_kernel_matches_reference(case, tokens):
    from edgemoe.quant.record import slot_array
    from edgemoe.backends.tvm.specs import kernel_name

    spec, layout, buf, ks = case["spec"], case["layout"], case["buf"], case["kernels"]
    rng = np.random.default_rng(tokens)
    worst = {}
    for bits in spec.ladder:
        ref_w = decode_record(buf, layout, bits)
        for m, n, k in layout.matrices:
            planes = [slot_array(buf, layout, layout.slot(m, "plane", spec.ladder[p]))
                      for p in range(spec.level_index(bits) + 1)]
            a = slot_array(buf, layout, layout.slot(m, "scale", bits))
            b = slot_array(buf, layout, layout.slot(m, "offset", bits))
            x = rng.standard_normal((tokens, k)).astype(np.float32)
            y = np.full((tokens, n), np.nan, dtype=np.float32)
            ks.funcs[kernel_name(m, bits, tokens)](x, *planes, a, b, y)
            worst[(m, bits)] = _rel(y, _product(case, x, m, bits))
    print(f"{case['name']} T={tokens}: max rel err {max(worst.values()):.2e}")
    assert max(worst.values()) < TOL, worst


def test_int8_kernels_are_used_where_they_fit(case):
    """On a CPU with integer SIMD the int8 cases' kernels are int8 wherever the codes suit its byte
    product (so the tests above check them against the int8 reference); the int8 reference itself
    stays within 2% of the float product."""
    from edgemoe.backends.tvm.int8dot import codes_fit
    from edgemoe.backends.tvm.specs import plane_runs
    from edgemoe.quant.record import decode_record as dec

    spec, layout, isa = case["spec"], case["layout"], case["isa"]
    used = {(m, bits) for m, _, _ in layout.matrices for bits in spec.ladder if _int8(case, m, bits)}
    if "/int8" not in case["name"]:
        assert not used, used          # shapes that do not fit stay float32
        return
    if isa is None:
        pytest.skip("this CPU has no integer SIMD the int8 kernels use: they are float32 here")
    fit = {bits for bits in spec.ladder
           if all(codes_fit(isa, r.width * len(r.planes)) for r in plane_runs(spec, bits))}
    assert used == {(m, bits) for m, _, _ in layout.matrices for bits in fit}
    if case["name"] == "4-8/gs32/int8/avx2":
        assert fit == {4}              # the merged 8-bit run would saturate vpmaddubsw's pair sums
    x = np.random.default_rng(9).standard_normal((1, case["hidden"])).astype(np.float32)
    for bits in sorted(fit):
        exact = x.astype(np.float64) @ dec(case["buf"], layout, bits)["gate_up"].astype(np.float64).T
        assert 1e-4 < _rel(_product(case, x, "gate_up", bits), exact) < 2e-2


@pytest.mark.parametrize("tokens", BUCKETS)
def test_swiglu_kernel(case, tokens):
    inter = case["inter"]
    gu = np.random.default_rng(1).standard_normal((tokens, 2 * inter)).astype(np.float32) * 3
    h = np.empty((tokens, inter), dtype=np.float32)
    case["kernels"].funcs[f"swiglu_t{tokens}"](gu, h)
    g, u = gu[:, :inter].astype(np.float64), gu[:, inter:].astype(np.float64)
    assert _rel(h, g / (1 + np.exp(-g)) * u) < 1e-6


@pytest.mark.parametrize("tokens", [1, 3, 16, 37])
def test_expert_matches_reference_at_every_level(case, tokens):
    """Whole expert (gate_up -> SwiGLU -> down) through the backend: padding to a bucket (3 -> 4)
    and chunking (37 = 16 + 16 + 5 -> 16) included."""
    spec, layout, buf, be = case["spec"], case["layout"], case["buf"], case["backend"]
    x = np.random.default_rng(tokens).standard_normal((tokens, case["hidden"])).astype(np.float32)
    for bits in spec.ladder:
        gu = _product(case, x, "gate_up", bits)
        i = gu.shape[1] // 2
        h = (gu[:, :i] / (1 + np.exp(-gu[:, :i]))) * gu[:, i:]
        ref = _product(case, h.astype(np.float32), "down", bits)
        y = be.run(be.bind(case["kernels"], layout, bits, buf), x)
        assert y.shape == (tokens, case["hidden"]) and y.dtype == np.float32
        assert _rel(y, ref) < TOL, (bits, _rel(y, ref))


def test_views_are_zero_copy_and_any_alignment_works(case):
    """Planes, scales and offsets reach the kernels as views of the loader's buffers, whatever their
    address: a record at an odd offset, and a list of chunk buffers (the budgeted runtime's form)."""
    spec, layout, be, ks = case["spec"], case["layout"], case["backend"], case["kernels"]
    raw = b"".join(case["chunks"])
    big = np.zeros(len(raw) + 64, dtype=np.uint8)
    odd = big[3:3 + len(raw)]
    odd[:] = np.frombuffer(raw, dtype=np.uint8)
    chunk_bufs = [np.frombuffer(c, dtype=np.uint8).copy() for c in case["chunks"]]
    x = np.random.default_rng(5).standard_normal((2, case["hidden"])).astype(np.float32)
    bits = spec.ladder[-1]
    want = be.run(be.bind(ks, layout, bits, case["buf"]), x)
    for buf in (odd, chunk_bufs):
        handle = be.bind(ks, layout, bits, buf)
        owners = [odd] if buf is odd else chunk_bufs
        for tensors in handle["args"].values():
            for t in tensors:
                assert any(np.shares_memory(np.from_dlpack(t), o) for o in owners)
        np.testing.assert_array_equal(be.run(handle, x), want)


def test_read_only_buffer_still_runs(case):
    """bytes cannot be exported through DLPack; the backend copies them once rather than fail."""
    spec, layout, be = case["spec"], case["layout"], case["backend"]
    x = np.random.default_rng(6).standard_normal((1, case["hidden"])).astype(np.float32)
    bits = spec.ladder[0]
    want = be.run(be.bind(case["kernels"], layout, bits, case["buf"]), x)
    got = be.run(be.bind(case["kernels"], layout, bits, b"".join(case["chunks"])), x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("tokens", [1, 16])
def test_int8_kernels_match_onnxruntime_int8_path(case, tokens):
    """The int8 kernels quantize activations exactly as onnxruntime's ``MatMulNBits`` at
    accuracy_level 4 does (the package's expert graphs): whole experts agree to float rounding
    (measured 4e-7 relative), 30x below the 1.5% both differ from the exact product."""
    import onnx
    import onnxruntime as ort

    from edgemoe.backends.ort.backend import session_options, slot_views
    from edgemoe.package.expert_graph import expert_graph

    if not case["name"].startswith("2-4-8/gs64/int8") or case["isa"] is None:
        pytest.skip("needs the int8 case's shapes on a CPU with a byte dot product")
    spec, layout, buf, be = case["spec"], case["layout"], case["buf"], case["backend"]
    x = np.random.default_rng(11).standard_normal((tokens, case["hidden"])).astype(np.float32)
    for bits in spec.ladder:
        model = expert_graph(layout, bits, "record.bin", 0, case["hidden"], case["inter"])
        views = slot_views(buf, layout, bits)
        so = session_options(1)
        inits = [i.name for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
        values = [ort.OrtValue.ortvalue_from_numpy(views[n]) for n in inits]
        so.add_external_initializers(inits, values)
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        want = sess.run(None, {"x": x})[0].astype(np.float64)
        assert _rel(be.run(be.bind(case["kernels"], layout, bits, buf), x), want) < 1e-5, bits


def test_experts_with_biases_and_the_clamped_swiglu_match_the_reference():
    """gpt-oss experts: the matrix kernels, biases and clamped activation (numpy between the
    kernels) against the numpy reference, every level, GEMV and GEMM."""
    from edgemoe.backends.reference.backend import swiglu
    from edgemoe.backends.tvm.backend import TvmBackend, jit_kernels

    spec, h, i = QuantSpec(), 64, 32
    rng = np.random.default_rng(5)
    mats = {"gate_up": rng.standard_normal((2 * i, h)).astype(np.float32) * 0.3,
            "down": rng.standard_normal((h, i)).astype(np.float32) * 0.3}
    biases = {"gate_up": rng.standard_normal(2 * i).astype(np.float32),
              "down": rng.standard_normal(h).astype(np.float32)}
    chunks, layout = encode_record(mats, spec, biases)
    buf = np.frombuffer(b"".join(chunks), np.uint8)
    act = ("clamped", 1.702, 7.0)
    ks = jit_kernels(h, i, spec, int8=False)
    for bits in spec.ladder:
        w = decode_record(buf, layout, bits)
        handle = TvmBackend().bind(ks, layout, bits, buf, act)
        for t in (1, 4):
            x = rng.standard_normal((t, h)).astype(np.float32) * 4     # past the clamp
            ref = swiglu(x, w["gate_up"], w["down"], act, w["gate_up.bias"], w["down.bias"])
            got = TvmBackend().run(handle, x)
            assert np.abs(got - ref).max() / np.abs(ref).max() <= TOL, (bits, t)
