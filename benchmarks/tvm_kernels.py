"""Host TVM expert kernels vs onnxruntime MatMulNBits and numpy, per level, on real expert shapes.

One SwiGLU expert (``gate_up [2I, H]``, ``down [H, I]``) with synthetic Gaussian weights is encoded
into a matryoshka record once; then, per level of the ladder and token count T, the same record
buffer runs through:

* ``tvm``: the llvm kernels (``edgemoe.backends.tvm``, host CPU, one thread), on views of the record,
  as ``edgemoe compile --device host`` builds them: int8 activations (quantized per group in the
  kernel; the same math as onnxruntime's ``accuracy_level 4``) on ``vpdpbusd`` with AVX-512 VNNI,
  on ``vpmaddubsw`` with AVX2 only (``int8dot``);
* ``tvm_avx2``: on a CPU with more than AVX2, the kernels an AVX2-only CPU gets (built for Haswell,
  run here), so one machine measures both;
* ``tvm_f32``: the kernels with float32 activations (what CPUs without integer SIMD get, and what
  AVX2 CPUs got before their int8 kernels);
* ``ort``: the package's per-expert ONNX graph (one ``MatMulNBits`` per plane,
  ``edgemoe.package.expert_graph``, accuracy_level 4 = int8 activations, 1-2% error per expert)
  with the record bound as external initializers, one intra-op thread, as ``OrtBackend`` runs it;
* ``ort_fp32``: the same graph at accuracy_level 1 (fp32 activations, the precision the TVM and
  numpy kernels keep: ``OrtBackend(exact=True)``);
* ``numpy``: ``PlanesBackend`` (codes rebuilt per call, float32 matmul, BLAS pinned to one thread).

Reported: median milliseconds per expert call, the bytes of weights a level reads per call
(its planes, scales and offsets; no padding), and each fast path's max relative error against
the float64 reference of the same level (``err_vs_exact``: tvm and ort). Mixtral-8x7B's expert (I = 14336) is measured on a
slice of ``--mixtral-inter`` intermediate rows (both matrices scale linearly in I) and also
extrapolated to the full expert.

    python benchmarks/tvm_kernels.py [--quick] [--repeat 15] [--json bench_out/tvm_kernels.json]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # before numpy / tvm start their pools

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgemoe.backends.planes.backend import PlanesBackend  # noqa: E402
from edgemoe.quant.record import encode_record  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402

# (model, H, I full, I measured, I measured with --quick)
SHAPES = [("OLMoE-1B-7B", 2048, 1024, 1024, 256), ("Mixtral-8x7B", 4096, 14336, 2048, 256)]
TOKENS = (1, 16)


def median_ms(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def level_bytes(layout, bits: int) -> int:
    """Bytes of planes, scales and offsets level ``bits`` reads (no padding)."""
    spec = layout.spec
    idx = spec.level_index(bits)
    n = 0
    for c in layout.chunks[: idx + 1]:
        for t in c.tensors:
            if t.role == "plane" or c.bits == bits:
                n += t.nbytes
    return n


def ort_session(layout, bits: int, buf, hidden: int, inter: int, exact: bool = False):
    import onnxruntime as ort

    from edgemoe.backends.ort.backend import session_options, slot_views
    from edgemoe.package.expert_graph import expert_graph

    model = expert_graph(layout, bits, "record.bin", 0, hidden, inter)
    if exact:
        for node in model.graph.node:
            for attr in node.attribute:
                if node.op_type == "MatMulNBits" and attr.name == "accuracy_level":
                    attr.i = 1
    views = slot_views(buf, layout, bits)
    so = session_options(1)
    names, values = [], []
    import onnx
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            names.append(init.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(views[init.name]))
    so.add_external_initializers(names, values)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x})[0], values


def bench_shape(model: str, hidden: int, inter_full: int, inter: int, repeat: int, spec: QuantSpec):
    from edgemoe.backends.tvm.backend import TvmBackend, jit_kernels

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    weights = {"gate_up": (rng.standard_normal((2 * inter, hidden)) * 0.02).astype(np.float32),
               "down": (rng.standard_normal((hidden, inter)) * 0.02).astype(np.float32)}
    chunks, layout = encode_record(weights, spec)
    buf = np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()
    del weights, chunks
    print(f"{model}: encoded H {hidden} I {inter} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    t0 = time.perf_counter()
    ks = jit_kernels(hidden, inter, spec, buckets=TOKENS)
    from edgemoe.backends.tvm.specs import int8_fits
    from edgemoe.backends.tvm.runtime_lib import cpu_flags
    int8 = ks.index["isa"] is not None and int8_fits(spec, hidden) and int8_fits(spec, inter)
    variants = {"tvm_f32": jit_kernels(hidden, inter, spec, buckets=TOKENS, int8=False)}
    if ks.index["isa"] not in (None, "avx2") and "avx2" in cpu_flags():
        variants["tvm_avx2"] = jit_kernels(hidden, inter, spec, buckets=TOKENS, target={"mcpu": "haswell"})
    print(f"{model}: compiled {len(ks.funcs)} TVM kernels in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    tvm_be, np_be = TvmBackend(), PlanesBackend()
    pkg = SimpleNamespace(layout=layout, quant=spec)
    scale = inter_full / inter
    rows = []
    for bits in spec.ladder:
        h_tvm = tvm_be.bind(ks, layout, bits, buf)
        h_var = {name: tvm_be.bind(k, layout, bits, buf) for name, k in variants.items()}
        h_np = np_be.load(pkg, 0, 0, bits, buf)
        run_ort, keep = ort_session(layout, bits, buf, hidden, inter)
        run_exact, keep2 = ort_session(layout, bits, buf, hidden, inter, exact=True)
        for t in TOKENS:
            x = rng.standard_normal((t, hidden)).astype(np.float32)
            ms = {"tvm": median_ms(lambda: tvm_be.run(h_tvm, x), repeat),
                  **{name: median_ms(lambda h=h: tvm_be.run(h, x), repeat) for name, h in h_var.items()},
                  "ort": median_ms(lambda: run_ort(x), repeat),
                  "ort_fp32": median_ms(lambda: run_exact(x), max(3, repeat // 5)),
                  "numpy": median_ms(lambda: np_be.run(h_np, x), max(3, repeat // 3))}
            ref = np_be.run(h_np, x)

            def err(y):
                return float(np.abs(y - ref).max() / np.abs(ref).max())
            nbytes = level_bytes(layout, bits)
            rows.append({"model": model, "hidden": hidden, "intermediate": inter_full,
                         "intermediate_measured": inter, "bits": bits, "tokens": t,
                         "ms": {k: round(v, 3) for k, v in ms.items()},
                         "ms_full_expert": {k: round(v * scale, 3) for k, v in ms.items()},
                         "weight_bytes_per_call": int(nbytes * scale),
                         "resident_bytes": int(layout.prefix_length(bits) * scale),
                         "tvm_activations": f"int8 ({ks.index['isa']})" if int8 else "float32",
                         "err_vs_exact": {"tvm": err(tvm_be.run(h_tvm, x)), "ort": err(run_ort(x))}})
            print(f"{model} k{bits} T{t}: " + " ".join(f"{k} {v:.2f}ms" for k, v in ms.items()),
                  file=sys.stderr)
        del keep, keep2
    return rows


def table(rows: list[dict]) -> str:
    extra = [k for k in ("tvm_avx2", "tvm_f32") if k in rows[0]["ms"]]
    head = (f"{'model':<13} {'bits':>4} {'T':>3} {'tvm ms':>9} " + "".join(f"{k:>9} " for k in extra) +
            f"{'ort ms':>9} {'ort_fp32':>9} "
            f"{'numpy ms':>9} {'MB read/call':>12} {'tvm GB/s':>8} {'ort/tvm':>7} {'tvm err':>8} "
            f"{'ort err':>8}")
    out = [head, "-" * len(head)]
    for r in rows:
        m = r["ms_full_expert"]
        out.append(f"{r['model']:<13} {r['bits']:>4} {r['tokens']:>3} {m['tvm']:>9.2f} "
                   + "".join(f"{m[k]:>9.2f} " for k in extra) + f"{m['ort']:>9.2f} "
                   f"{m['ort_fp32']:>9.2f} {m['numpy']:>9.2f} "
                   f"{r['weight_bytes_per_call'] / 1e6:>12.2f} "
                   f"{r['weight_bytes_per_call'] / m['tvm'] / 1e6:>8.2f} {m['ort'] / m['tvm']:>7.2f} "
                   f"{r['err_vs_exact']['tvm']:>8.1e} {r['err_vs_exact']['ort']:>8.1e}")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small slices, few repeats (a smoke run)")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--mixtral-inter", type=int, default=None,
                    help="intermediate rows of the Mixtral expert to measure (default 2048)")
    ap.add_argument("--json", default="bench_out/tvm_kernels.json")
    args = ap.parse_args(argv)
    from edgemoe.backends.tvm import tvm_missing_reason

    reason = tvm_missing_reason()
    if reason:
        sys.exit(f"cannot benchmark the tvm backend: {reason}")
    spec = QuantSpec()
    rows = []
    for model, hidden, inter_full, inter, inter_quick in SHAPES:
        inter = inter_quick if args.quick else inter
        if model.startswith("Mixtral") and args.mixtral_inter:
            inter = args.mixtral_inter
        rows += bench_shape(model, hidden, inter_full, inter, 3 if args.quick else args.repeat, spec)
    from edgemoe.backends.tvm.runtime_lib import cpu_flags
    from tvm.target import codegen
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    feats = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp") if f in cpu_flags()]
    cpu = {"model": model, "llvm_cpu": str(codegen.llvm_get_system_cpu()), "features": feats}
    print(f"CPU: {model} (llvm: {cpu['llvm_cpu']}), {' '.join(feats)}")
    print("per expert call, full expert (Mixtral extrapolated from the measured slice); one thread")
    print(table(rows))
    from edgemoe.backends.tvm.targets import host_target
    doc = {"host_target": host_target(), "cpu": cpu, "threads": 1, "ladder": list(spec.ladder),
           "group_size": spec.group_size, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
