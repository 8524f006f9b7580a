"""The engine at realistic shapes: decode cost against context length, batched decode, and the budget.

    python benchmarks/engine_bench.py context [--layers 2]     # ms/token at positions 16 / 1500 / 3000
    python benchmarks/engine_bench.py batch [--layers 2]       # tok/s and expert bytes per token, batch 1-16
    python benchmarks/engine_bench.py policies                 # hebf / lru / lfu / belady on batch traces
    python benchmarks/engine_bench.py headline [--llama-bench B --gguf G]  # Qwen3-30B-A3B x 24 layers, 3 GiB
    python benchmarks/engine_bench.py sweep                    # peak RSS / budget on odd tiny shapes
    python benchmarks/engine_bench.py resident [--layers 4]    # resident peak RSS / package bytes per level
    python benchmarks/engine_bench.py layer [--package P]      # where a decode token goes, per-expert vs grouped
    python benchmarks/engine_bench.py speed --llama-bin DIR --llama-dir SRC [--model olmoe|qwen3]
                                                               # resident decode / prefill vs llama.cpp

``context`` and ``batch`` export a synthetic checkpoint with OLMoE-1B-7B layer shapes (hidden 2048,
64 experts of 1024, top-8, 16 heads = 16 KV heads, vocabulary 50304; random weights, the embedding
redrawn at std 1 so routing varies per token: with std 0.02 every token picks nearly the same
experts) once into ``bench_out/engine/``. ``sweep`` builds tiny transformers models of odd shapes and
runs each budgeted configuration in a fresh process, measuring its peak RSS (VmHWM) above the
baseline the runtime itself takes (libraries imported and started). Each prints a table and writes
JSON to ``bench_out/engine_*.json``. One onnxruntime thread; medians.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench_out"
sys.path.insert(0, str(REPO / "benchmarks"))


def cpu_info() -> dict:
    flags = set()
    model = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    keep = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
    return {"model": model, "cores": os.cpu_count(), "features": sorted(f for f in keep if f in flags)}


# ---------------------------------------------------------------- the realistic-shape package
def _paths(name: str) -> tuple[Path, Path]:
    """(package, checkpoint folder) of a synthetic model under bench_out/engine/NAME."""
    d = OUT / "engine" / name
    return d / "pkg.edgemoe", d / "hf"


def _fresh(ckpt: Path) -> bool:
    """True (after removing any partial one) when the checkpoint must be written."""
    if (ckpt / "config.json").exists():
        return False
    import shutil
    shutil.rmtree(ckpt, ignore_errors=True)
    return True


def olmoe_package(layers: int) -> Path:
    """Export (once) a synthetic OLMoE-1B-7B-shaped checkpoint of ``layers`` layers, level ladder
    2/4/8, export's default (int8) dense graphs."""
    import export_scale as xs

    pkg, ckpt = _paths(f"olmoe-{layers}l")
    if (pkg / "manifest.yaml").exists():
        return pkg
    if _fresh(ckpt):
        print(f"writing a synthetic checkpoint ({layers} layers of OLMoE-1B-7B shapes) ...", flush=True)
        xs.write_checkpoint(ckpt, layers, shard_mb=2000)
        redraw_embedding(ckpt, std=1.0)
    from edgemoe.exporters.export import export
    from edgemoe.quant.spec import QuantSpec
    print("exporting ...", flush=True)
    t = time.time()
    export(ckpt, pkg, QuantSpec())
    print(f"exported in {time.time() - t:.0f} s", flush=True)
    return pkg


def redraw_embedding(ckpt: Path, std: float):
    """Overwrite model.embed_tokens.weight in its shard with N(0, std) bf16 values (same bytes)."""
    import export_scale as xs

    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    shard = ckpt / index["model.embed_tokens.weight"]
    with open(shard, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["model.embed_tokens.weight"]
        begin, end = meta["data_offsets"]
        rng = np.random.default_rng(1)
        f.seek(8 + n + begin)
        count = (end - begin) // 2
        for s in range(0, count, 1 << 22):
            k = min(1 << 22, count - s)
            f.write(xs.to_bf16_bits(rng.standard_normal(k, dtype=np.float32) * std).tobytes())


# Qwen3-30B-A3B (Qwen/Qwen3-30B-A3B) shapes
QWEN3 = dict(hidden=2048, moe_inter=768, experts=128, top_k=8, heads=32, kv_heads=4, head_dim=128,
             vocab=151936)


def qwen3_config(layers: int) -> dict:
    q = QWEN3
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
            "hidden_size": q["hidden"], "intermediate_size": 6144, "moe_intermediate_size": q["moe_inter"],
            "num_hidden_layers": layers, "num_attention_heads": q["heads"],
            "num_key_value_heads": q["kv_heads"], "head_dim": q["head_dim"], "num_experts": q["experts"],
            "num_experts_per_tok": q["top_k"], "vocab_size": q["vocab"], "norm_topk_prob": True,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False,
            "hidden_act": "silu", "attention_bias": False, "bos_token_id": 151643,
            "eos_token_id": 151645, "torch_dtype": "bfloat16"}


def qwen3_specs(layers: int) -> list:
    q = QWEN3
    H, I, E, D = q["hidden"], q["moe_inter"], q["experts"], q["head_dim"]
    specs = [("model.embed_tokens.weight", (q["vocab"], H), False)]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [(p + "input_layernorm.weight", (H,), True), (p + "post_attention_layernorm.weight", (H,), True),
                  (p + "self_attn.q_proj.weight", (q["heads"] * D, H), False),
                  (p + "self_attn.k_proj.weight", (q["kv_heads"] * D, H), False),
                  (p + "self_attn.v_proj.weight", (q["kv_heads"] * D, H), False),
                  (p + "self_attn.o_proj.weight", (H, q["heads"] * D), False),
                  (p + "self_attn.q_norm.weight", (D,), True), (p + "self_attn.k_norm.weight", (D,), True),
                  (p + "mlp.gate.weight", (E, H), False)]
        for e in range(E):
            x = p + f"mlp.experts.{e}."
            specs += [(x + "gate_proj.weight", (I, H), False), (x + "up_proj.weight", (I, H), False),
                      (x + "down_proj.weight", (H, I), False)]
    specs += [("model.norm.weight", (H,), True), ("lm_head.weight", (q["vocab"], H), False)]
    return specs


def qwen3_package(layers: int) -> Path:
    """Export (once) a synthetic Qwen3-30B-A3B-shaped checkpoint of ``layers`` layers (written shard
    by shard, bf16, embedding at std 1), int8 dense weights (float32 ones would be 2.5 GB of
    embedding and LM head alone)."""
    import export_scale as xs

    pkg, ckpt = _paths(f"qwen3-{layers}l")
    if (pkg / "manifest.yaml").exists():
        return pkg
    if _fresh(ckpt):
        ckpt.mkdir(parents=True)
        print(f"writing a synthetic checkpoint ({layers} layers of Qwen3-30B-A3B shapes) ...", flush=True)
        specs = qwen3_specs(layers)
        shards = xs.plan_shards(specs, 4000 * xs.MB)
        src, weight_map, total = xs.RandomSource(seed=0), {}, 0
        for k, group in enumerate(shards, 1):
            name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            xs.write_shard(ckpt / name, group, src)
            for tname, shape, _ in group:
                weight_map[tname] = name
                total += 2 * xs._numel(shape)
            print(f"  shard {k}/{len(shards)}", flush=True)
        (ckpt / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
        redraw_embedding(ckpt, std=1.0)
        (ckpt / "config.json").write_text(json.dumps(qwen3_config(layers), indent=2))
    from edgemoe.exporters.export import export
    from edgemoe.quant.dense import DenseQuant
    from edgemoe.quant.spec import QuantSpec
    print("exporting ...", flush=True)
    t = time.time()
    export(ckpt, pkg, QuantSpec(), dense=DenseQuant("int8", 64),
           progress=lambda stage, done, total: print(f"  {stage} {done}/{total}", flush=True)
           if done % 256 == 0 or done == total else None)
    print(f"exported in {time.time() - t:.0f} s", flush=True)
    return pkg


def _decode_ms(rt, steps: int, slot: int = 0) -> float:
    ts, tok = [], 7
    for _ in range(steps):
        t = time.perf_counter()
        tok = int(np.argmax(rt.forward([tok], slot=slot)[-1]))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


# ---------------------------------------------------------------- context
def bench_context(args) -> dict:
    from edgemoe.package.reader import Package
    from edgemoe.runtime.engine import Runtime

    pkg = olmoe_package(args.layers) if args.model == "olmoe" else tiny_kv10_package()
    positions = [16, 1500, 3000]
    rows = []
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, Package(pkg).arch.vocab_size, max(positions)).tolist()
    for kv in ("f16", "f32", "int8"):
        rt = Runtime(pkg, level=args.level, kv_dtype=kv, context=max(positions) + 64)
        ms, done = {}, 0
        for p in positions:
            while done < p:            # fill the cache to position p (chunks of 512)
                n = min(512, p - done)
                rt.forward(prompt[done:done + n])
                done += n
            ms[p] = _decode_ms(rt, args.steps)
            done += args.steps
            prompt_pos = done
            assert prompt_pos == rt.kv.lengths[0]
        rows.append({"kv": kv, "ms": ms, "ratio_3000_16": ms[3000] / ms[16], "plus_1500_ms": ms[1500] - ms[16],
                     "kv_bytes_per_token": rt.kv.bytes_per_token(rt.arch, kv)})
        rt.close()
    llama = llama_context(args, positions) if args.llama_bench else None
    name = f"OLMoE-1B-7B shapes x {args.layers} layers" if args.model == "olmoe" else TINY_KV10_NAME
    print(f"\ncontext, {name}, level {args.level}, resident (ort), one thread, median of {args.steps} "
          f"decode steps")
    print("| KV | ms @16 | ms @1500 | ms @3000 | @3000 / @16 | +ms @1500 | KV bytes/token |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["ms"]
        print(f"| {r['kv']} | {m[16]:.1f} | {m[1500]:.1f} | {m[3000]:.1f} | {r['ratio_3000_16']:.2f} | "
              f"{r['plus_1500_ms']:+.1f} | {r['kv_bytes_per_token']:,} |")
    if llama:
        m = llama["ms"]
        print(f"| llama.cpp {llama['gguf']} (f16 cache) | {m[16]:.1f} | {m[1500]:.1f} | {m[3000]:.1f} | "
              f"{m[3000] / m[16]:.2f} | {m[1500] - m[16]:+.1f} | |")
    return {"model": args.model, "layers": args.layers, "level": args.level, "rows": rows, "llama": llama}


TINY_KV10_NAME = "a small Mixtral (hidden 640, 10 heads = 10 KV heads, 4 layers, 8 experts of 1024, top-2)"


def tiny_kv10_package() -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    import tiny_models
    from edgemoe.exporters.export import export

    d = OUT / "engine" / "tiny-kv10"
    pkg = d / "pkg.edgemoe"
    if not (pkg / "manifest.yaml").exists():
        tiny_models.build("mixtral", d / "hf", hidden_size=640, num_attention_heads=10, num_key_value_heads=10,
                          num_hidden_layers=4, intermediate_size=1024, num_local_experts=8,
                          vocab_size=4096, max_position_embeddings=4096)
        export(d / "hf", pkg)
    return pkg


def llama_context(args, positions) -> dict:
    """llama-bench's decode at the same context depths (its KV cache: f16, in place)."""
    # 32 tokens x 5 repetitions: with 16 x 3 the first depth measured came out 50% slow once
    p = subprocess.run([args.llama_bench, "-m", args.gguf, "-p", "0", "-n", str(max(args.steps, 32)), "-d",
                        ",".join(map(str, positions)), "-t", "1", "-r", "5", "-o", "json"],
                       capture_output=True, text=True, check=True)
    return {"gguf": Path(args.gguf).name, "ms": {int(r["n_depth"]): 1000 / r["avg_ts"] for r in json.loads(p.stdout)}}


# ---------------------------------------------------------------- batch
def bench_batch(args) -> dict:
    from edgemoe.runtime.batch import Batch
    from edgemoe.runtime.engine import Runtime

    pkg = olmoe_package(args.layers)
    rng = np.random.default_rng(0)
    sizes = [int(b) for b in args.batches.split(",")]
    prompts = [rng.integers(0, 50304, 16).tolist() for _ in range(max(sizes))]
    rows = []
    alone = {}
    for budget in (None, "50%"):
        for b in sizes:
            kw = dict(level=args.level, max_batch=b, context=16 + args.tokens + 8)
            if budget:
                kw.update(budget=budget, backend=args.budget_backend)
            rt = Runtime(pkg, **kw)
            batch = Batch(rt)
            for p in prompts[:b]:
                batch.add(p, max_new_tokens=args.tokens, stop_at_eos=False)
            while any(s.prefilling for s in batch.seqs.values()):
                batch.step()
            read0, t0, n0 = rt.stats()["expert_bytes_read"], time.perf_counter(), sum(len(s.ids) for s in batch.seqs.values())
            while batch.active:
                batch.step()
            dt = time.perf_counter() - t0
            gen = sum(len(s.ids) for s in batch.finished.values()) - n0
            st = rt.stats()
            row = {"budget": budget or "resident", "batch": b, "tok_s": gen / dt,
                   "expert_bytes_per_token": (st["expert_bytes_read"] - read0) / gen,
                   "hit_rate": st.get("hit_rate")}
            ids = {s.id: s.ids for s in batch.finished.values()}
            if b == 1:
                alone[budget] = ids[0]
            row["seq0_same_as_alone"] = ids[0] == alone[budget]
            rows.append(row)
            print(f"  {row}", flush=True)
            rt.close()
    print(f"\nbatched decode, OLMoE-1B-7B shapes x {args.layers} layers, level {args.level}, "
          f"{args.tokens} tokens per sequence after a 16-token prompt, one thread")
    print("| memory | batch | tok/s (sum) | expert MiB read / token | hit rate | seq 0 = alone |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        hr = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.0%}"
        print(f"| {r['budget']} | {r['batch']} | {r['tok_s']:.1f} | {r['expert_bytes_per_token'] / 2**20:.2f} "
              f"| {hr} | {r['seq0_same_as_alone']} |")
    return {"layers": args.layers, "level": args.level, "rows": rows}


# ---------------------------------------------------------------- policies on batch traces
def bench_policies(args) -> dict:
    """Record the routing of a batch under a budget (hebf, level 8), then replay it through every
    policy with the same cache: expert bytes read per step, against belady's offline optimum."""
    from edgemoe.runtime.batch import Batch
    from edgemoe.runtime.engine import Runtime
    from edgemoe.runtime.trace import accesses, read_trace
    from edgemoe.schedulers import make_policy
    from edgemoe.schedulers.replay import replay, steps_from_trace

    pkg = olmoe_package(args.layers)
    rng = np.random.default_rng(0)
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        path = OUT / "engine" / f"trace-b{b}.jsonl"
        rt = Runtime(pkg, level=8, budget=args.budget, max_batch=b, context=16 + args.tokens + 8,
                     trace=path)
        batch = Batch(rt)
        for _ in range(b):
            batch.add(rng.integers(0, 50304, 16).tolist(), max_new_tokens=args.tokens, stop_at_eos=False)
        batch.run()
        capacity, live = rt.budget_plan.experts, rt.stats()["expert_bytes_read"]
        rt.close()
        _, records = read_trace(path)
        steps = steps_from_trace(records)
        keys = sorted(rt.pkg.experts)
        chunk_bytes = tuple(ch.length for ch in rt.pkg.layout.chunks)
        got = {}
        for name in ("hebf", "lru", "lfu", "belady"):
            extra = {"future": accesses(records)} if name == "belady" else {}
            def run(part):
                return replay(make_policy(name, experts=keys, **extra), part, capacity,
                              rt.pkg.quant.ladder, chunk_bytes, level=8, top_k=rt.arch.top_k).bytes_total
            # the first b steps prefill one prompt each (beside the others' decode): count only the
            # steps after them, where every sequence decodes one token (replay is deterministic, so
            # the prefix's bytes are the full run's first bytes)
            got[name] = (run(steps) - run(steps[:b])) / max(b * (len(steps) - b), 1)
        rows.append({"batch": b, "live_hebf_bytes": live, "per_token": got,
                     "vs_belady": {k: v / got["belady"] for k, v in got.items()}})
        print(f"  batch {b}: {got}", flush=True)
    print(f"\npolicies on batch traces (OLMoE-1B-7B shapes x {args.layers} layers, {args.budget}, level 8; "
          f"replayed decode steps), expert MiB read per generated token in the steps where all decode, and the ratio to belady")
    print("| batch | hebf | lru | lfu | belady | hebf/belady | lru/belady | lfu/belady |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        g, v = r["per_token"], r["vs_belady"]
        print(f"| {r['batch']} | {g['hebf'] / 2**20:.1f} | {g['lru'] / 2**20:.1f} | {g['lfu'] / 2**20:.1f} | "
              f"{g['belady'] / 2**20:.1f} | {v['hebf']:.2f} | {v['lru']:.2f} | {v['lfu']:.2f} |")
    return {"layers": args.layers, "budget": args.budget, "rows": rows}


# ---------------------------------------------------------------- a 30B-class model on a small budget
HEADLINE_CHILD = r"""
import json, sys, time, numpy as np
from edgemoe.runtime.memory import pin_malloc_mmap_threshold, rss_bytes, start_libraries
pin_malloc_mmap_threshold(); start_libraries()
from edgemoe.runtime.engine import Runtime
pkg, budget, level, tokens, vocab = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
prompt = np.random.default_rng(0).integers(0, vocab, 16).tolist()
base = rss_bytes()
rt = Runtime(pkg, level=level if level == "auto" else int(level), budget=budget, context=16 + tokens + 8)
logits = rt.forward(prompt)[-1]
s0 = rt.stats(); t0 = time.perf_counter()
for _ in range(tokens):
    logits = rt.forward([int(np.argmax(logits))])[-1]
dt = time.perf_counter() - t0
st = rt.stats()
print(json.dumps({"tok_s": tokens / dt, "expert_bytes_per_token": (st["expert_bytes_read"] - s0["expert_bytes_read"]) / tokens,
                  "hit_rate": st["hit_rate"], "backend": rt.backend.name,
                  "peak_above_baseline": rss_bytes("VmHWM") - base, "budget": rt.budget_plan.budget,
                  "plan": rt.budget_plan.to_dict(), "level_mix": st["level_mix"]}))
"""


def bench_headline(args) -> dict:
    """Qwen3-30B-A3B shapes at ``--layers`` of its 48 layers under ``--budget``, levels 4 and auto
    (each in a fresh process), and llama.cpp's Q8_0 GGUF of the same checkpoint in a memory cgroup
    with the same allowance (its start-up charge plus the budget) when ``--llama-bench`` is given."""
    from edgemoe.runtime.budget import parse_size

    pkg = qwen3_package(args.layers)
    if not (pkg / "kernels" / "host" / "index.yaml").exists():   # the budgeted runs' TVM kernels
        from edgemoe.backends.compile import compile_for_device
        print("compiling TVM kernels for this machine ...", flush=True)
        compile_for_device(pkg, "host")
    rows = []
    for level in args.levels.split(","):
        p = subprocess.run([sys.executable, "-c", HEADLINE_CHILD, str(pkg), args.budget, level,
                            str(args.tokens), str(QWEN3["vocab"])], capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(p.stderr[-3000:])
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["runtime"], r["level"] = "edgemoe", level
        rows.append(r)
        print(f"  edgemoe level {level}: {r['tok_s']:.2f} tok/s", flush=True)
    if args.llama_bench:
        import llamacpp_compare as lc
        gguf = Path(args.gguf)
        allowance = parse_size(args.budget)
        start = lc.run_llama(Path(args.llama_bench), gguf, 1, None, 3600)
        startup = max(start["cgroup_peak"] - gguf.stat().st_size, 0)
        r = lc.run_llama(Path(args.llama_bench), gguf, args.llama_tokens, startup + allowance, 7200)
        rows.append({"runtime": "llama.cpp", "level": "Q8_0", "tok_s": r["tokens_per_s"],
                     "cgroup_limit": r["limit"], "cgroup_peak": r["cgroup_peak"], "limit_hits": r["failcnt"],
                     "startup": startup})
    print(f"\nQwen3-30B-A3B shapes x {args.layers} layers under {args.budget}, {args.tokens} decode tokens "
          f"after a 16-token prompt, one thread")
    print("| runtime | level | tok/s | expert MiB read / token | hit rate | peak above baseline MiB | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["runtime"] == "edgemoe":
            print(f"| edgemoe ({r['backend']}) | {r['level']} | {r['tok_s']:.2f} | "
                  f"{r['expert_bytes_per_token'] / 2**20:.0f} | {r['hit_rate']:.0%} | "
                  f"{r['peak_above_baseline'] / 2**20:.0f} | budget {r['budget'] / 2**20:.0f} MiB, "
                  f"levels {r['level_mix']} |")
        else:
            print(f"| llama.cpp | Q8_0 | {r['tok_s']:.3f} | - | - | cgroup peak {r['cgroup_peak'] / 2**20:.0f} | "
                  f"limit {r['cgroup_limit'] / 2**20:.0f} MiB ({r['limit_hits']} limit hits) |")
    return {"layers": args.layers, "budget": args.budget, "rows": rows}


# ---------------------------------------------------------------- budget sweep
SWEEP = [  # family, overrides, prefill tokens, batch
    ("mixtral", dict(hidden_size=96, intermediate_size=200, num_local_experts=4, num_experts_per_tok=1,
                     num_attention_heads=6, num_key_value_heads=2), 64, 1),
    ("mixtral", dict(hidden_size=520, intermediate_size=1400, num_local_experts=16, num_experts_per_tok=2,
                     num_attention_heads=10, num_key_value_heads=5), 200, 1),
    ("qwen2_moe", dict(hidden_size=392, moe_intermediate_size=300, shared_expert_intermediate_size=600,
                       num_experts=32, num_experts_per_tok=4, intermediate_size=600, num_attention_heads=7,
                       num_key_value_heads=7), 512, 1),
    ("olmoe", dict(hidden_size=1032, intermediate_size=520, num_experts=64, num_experts_per_tok=8,
                   num_attention_heads=12, num_key_value_heads=12), 200, 4),
    ("qwen2_moe", dict(hidden_size=2048, moe_intermediate_size=768, shared_expert_intermediate_size=256,
                       num_experts=32, num_experts_per_tok=8, intermediate_size=768, num_attention_heads=16,
                       num_key_value_heads=4), 128, 8),
    ("mixtral", dict(hidden_size=768, intermediate_size=1000, num_local_experts=8, num_experts_per_tok=2,
                     num_attention_heads=12, num_key_value_heads=4), 1, 8),
]

CHILD = r"""
import json, sys, numpy as np
from edgemoe.runtime.memory import pin_malloc_mmap_threshold, rss_bytes, start_libraries
pin_malloc_mmap_threshold(); start_libraries()
from edgemoe.runtime.engine import Runtime
from edgemoe.runtime.batch import Batch
pkg, prefill, batch, budget, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rng = np.random.default_rng(0)      # numpy.random's import (~2 MiB) is this script's, not the runtime's
prompts = [rng.integers(0, vocab, prefill).tolist() for _ in range(batch)]
base = rss_bytes()
rt = Runtime(pkg, level=8, budget=budget, context=prefill + 8, max_batch=batch)
fixed = rss_bytes() - base
b = Batch(rt)
for p in prompts:
    b.add(p, max_new_tokens=4, stop_at_eos=False)
b.run()
peak = rss_bytes("VmHWM")
print(json.dumps({"base": base, "peak": peak, "fixed_measured": fixed, "budget": rt.budget_plan.budget,
                  "plan": rt.budget_plan.to_dict()}))
"""


def bench_sweep(args) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    import tiny_models
    from edgemoe.exporters.export import export

    rows = []
    d = OUT / "engine" / "sweep"
    for j, (fam, over, prefill, batch) in enumerate(SWEEP):
        pkg = d / f"{j}-{fam}.edgemoe"
        if not (pkg / "manifest.yaml").exists():
            tiny_models.build(fam, d / f"{j}-{fam}-hf", num_hidden_layers=2, vocab_size=1000,
                              max_position_embeddings=4096, **over)
            export(d / f"{j}-{fam}-hf", pkg)
        for budget in args.budgets.split(","):
            p = subprocess.run([sys.executable, "-c", CHILD, str(pkg), str(prefill), str(batch), budget, "1000"],
                               capture_output=True, text=True)
            if p.returncode:
                print(p.stderr[-2000:])
                rows.append({"config": j, "family": fam, "budget": budget, "error": p.stderr.strip().splitlines()[-1]})
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            ratio = (r["peak"] - r["base"]) / r["budget"]
            rows.append({"config": j, "family": fam, "hidden": over["hidden_size"], "prefill": prefill,
                         "batch": batch, "budget": budget, "budget_bytes": r["budget"],
                         "above_baseline": r["peak"] - r["base"], "ratio": ratio, "plan": r["plan"]})
            print(f"  {rows[-1]['family']} h{rows[-1]['hidden']} prefill {prefill} batch {batch} {budget}: "
                  f"{ratio:.3f}", flush=True)
    print("\nbudget sweep: peak RSS above the runtime's baseline / budget (level 8, fresh process each)")
    print("| # | family | hidden | prefill | batch | budget | budget MiB | peak above baseline MiB | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | {r['family']} | | | | {r['budget']} | | error: {r['error'][:60]} | |")
            continue
        print(f"| {r['config']} | {r['family']} | {r['hidden']} | {r['prefill']} | {r['batch']} | {r['budget']} | "
              f"{r['budget_bytes'] / 2**20:.1f} | {r['above_baseline'] / 2**20:.1f} | {r['ratio']:.3f} |")
    return {"rows": rows}


RESIDENT_CHILD = r"""
import json, sys, time
from edgemoe.runtime.memory import rss_bytes, start_libraries
start_libraries()
base = rss_bytes()
from edgemoe.runtime.engine import Runtime
if sys.argv[3] == "keep":      # the previous behaviour: every session keeps its record buffer
    from edgemoe.backends.ort.backend import OrtBackend
    OrtBackend._session_ignores_source = lambda self, *a: False
rt = Runtime(sys.argv[1], level=int(sys.argv[2]))
r = rt.generate(list(range(5, 21)), 24, stop_at_eos=False)
print(json.dumps({"rss": rss_bytes() - base, "peak": rss_bytes("VmHWM") - base,
                  "package": rt.pkg.level_bytes(int(sys.argv[2])) + rt.pkg.dense_bytes(),
                  "kv": rt.kv.nbytes(), "tok_s": r.decode_tokens_per_s, "ids": r.ids[:8]}))
"""


def bench_resident(args) -> dict:
    """Resident runs (onnxruntime experts) at each level in a fresh process: peak RSS above the
    started libraries against the package's bytes at that level (experts + dense) plus the KV cache."""
    pkg = Path(args.package) if args.package else olmoe_package(args.layers)
    rows = []
    for level in [int(x) for x in args.levels.split(",")]:
        for records in ("released", "keep"):
            p = subprocess.run([sys.executable, "-c", RESIDENT_CHILD, str(pkg), str(level), records],
                               capture_output=True, text=True, check=True)
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r.update(level=level, records=records, ratio=r["peak"] / (r["package"] + r["kv"]))
            rows.append(r)
    print(f"\nresident, {pkg}: peak RSS above the started libraries / (package bytes at the level + KV);"
          f" records released once the sessions exist (default) or kept by them (before)")
    print(f"{'level':>5} {'records':>9} {'peak MiB':>9} {'package MiB':>12} {'KV MiB':>7} {'ratio':>6} {'tok/s':>6}")
    for r in rows:
        print(f"{r['level']:5d} {r['records']:>9} {r['peak'] / 2**20:9.0f} {r['package'] / 2**20:12.0f} "
              f"{r['kv'] / 2**20:7.1f} {r['ratio']:6.2f} {r['tok_s']:6.1f}")
    return {"package": str(pkg), "rows": rows}


SPEED_CHILD = r"""
import json, sys, time
import numpy as np
from edgemoe.runtime.engine import Runtime
pkg, level, threads, tokens, reps, prefill = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rt = Runtime(pkg, level=level, threads=threads, context=max(prefill, 16 + tokens) + 8)
rng = np.random.default_rng(0)
decode, pre = [], []
for r in range(reps):
    rt.reset()
    rt.step([(0, rng.integers(5, 1000, 16).tolist())])
    tok = 7
    t = time.perf_counter()
    for _ in range(tokens):
        tok = int(rt.step([(0, [tok])])[0][-1].argmax())
    decode.append(tokens / (time.perf_counter() - t))
for r in range(reps if prefill else 0):
    rt.reset()
    ids = rng.integers(5, 1000, prefill).tolist()
    t = time.perf_counter()
    rt.step([(0, ids)])
    pre.append(prefill / (time.perf_counter() - t))
print(json.dumps({"decode": decode, "prefill": pre}))
"""

LLAMA_TYPES = {8: "Q8_0", 4: "Q4_0", 2: "Q2_K"}


def _gguf(ckpt: Path, name: str, qtype: str, args) -> Path:
    """The checkpoint as a GGUF of ``qtype`` (llama.cpp's converter to f16, then llama-quantize),
    made once under bench_out/."""
    import llamacpp_compare as lc

    out = OUT / f"{name}_{qtype.lower()}.gguf"
    if out.exists():
        return out
    f16 = OUT / f"{name}_f16.gguf"
    if not f16.exists():
        print(f"converting {ckpt} to {f16.name} ...", flush=True)
        lc.convert(Path(args.llama_dir), f16, "f16", ckpt)
    print(f"quantizing {out.name} ...", flush=True)
    subprocess.run([str(Path(args.llama_bin) / "llama-quantize"), str(f16), str(out), qtype],
                   check=True, capture_output=True)
    return out


def _llama_bench(args, gguf: Path, threads: int, prefill: bool) -> float:
    cmd = [str(Path(args.llama_bin) / "llama-bench"), "-m", str(gguf), "-t", str(threads),
           "-r", str(args.reps), "-o", "json"]
    cmd += ["-p", str(args.prefill), "-n", "0"] if prefill else ["-p", "0", "-n", str(args.tokens)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(p.stdout)[0]["avg_ts"])


def bench_speed(args) -> dict:
    """Resident decode (and prefill) tok/s against llama.cpp on the same checkpoint, per level and
    thread count: level 8 vs Q8_0, 4 vs Q4_0, 2 vs Q2_K. edgemoe runs each configuration in a fresh
    process (onnxruntime experts, the package's int8 dense graphs), greedy after a 16-token prompt;
    llama-bench runs ``-n TOKENS`` (decode) and ``-p PREFILL -n 0``. Medians of --reps."""
    import statistics

    if args.model == "olmoe":
        pkg, name = olmoe_package(args.layers), f"olmoe-{args.layers}l"
    else:
        pkg, name = qwen3_package(args.layers), f"qwen3-{args.layers}l"
    ckpt = pkg.parent / "hf"
    rows = []
    for level in [int(x) for x in args.levels.split(",")]:
        gguf = _gguf(ckpt, name, LLAMA_TYPES[level], args)
        for threads in [int(x) for x in args.threads.split(",")]:
            p = subprocess.run([sys.executable, "-c", SPEED_CHILD, str(pkg), str(level), str(threads),
                                str(args.tokens), str(args.reps), str(args.prefill if args.prefill_too else 0)],
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if p.returncode:
                raise SystemExit(p.stderr[-3000:])
            ours = json.loads(p.stdout.strip().splitlines()[-1])
            r = {"level": level, "llama_type": LLAMA_TYPES[level], "threads": threads,
                 "edgemoe_decode": statistics.median(ours["decode"]),
                 "llama_decode": _llama_bench(args, gguf, threads, False)}
            if args.prefill_too:
                r.update(edgemoe_prefill=statistics.median(ours["prefill"]),
                         llama_prefill=_llama_bench(args, gguf, threads, True))
            r["decode_ratio"] = r["edgemoe_decode"] / r["llama_decode"]
            rows.append(r)
            print(f"  level {level} / {r['llama_type']}, {threads} thread(s): edgemoe {r['edgemoe_decode']:.1f} "
                  f"llama.cpp {r['llama_decode']:.1f} tok/s", flush=True)
    print(f"\n{pkg}: resident decode tok/s ({args.tokens} tokens after 16) and prefill tok/s "
          f"({args.prefill}-token prompt); medians of {args.reps}")
    head = f"{'level':>5} {'llama.cpp':>9} {'threads':>7} {'edgemoe':>8} {'llama.cpp':>9} {'ratio':>6}"
    if args.prefill_too:
        head += f" {'prefill edgemoe':>15} {'llama.cpp':>9} {'ratio':>6}"
    print(head)
    for r in rows:
        line = (f"{r['level']:5d} {r['llama_type']:>9} {r['threads']:7d} {r['edgemoe_decode']:8.1f} "
                f"{r['llama_decode']:9.1f} {r['decode_ratio']:6.2f}")
        if args.prefill_too:
            line += (f" {r['edgemoe_prefill']:15.1f} {r['llama_prefill']:9.1f} "
                     f"{r['edgemoe_prefill'] / r['llama_prefill']:6.2f}")
        print(line)
    return {"package": str(pkg), "model": args.model, "layers": args.layers, "rows": rows}


class _Timed:
    """A proxy of an onnxruntime session (or anything with ``run``-like methods) adding the wall
    time of its calls to ``acc[key]``."""

    def __init__(self, inner, acc: dict, key: str):
        self._inner, self._acc, self._key = inner, acc, key

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not name.startswith("run"):
            return attr

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return attr(*a, **kw)
            finally:
                self._acc[self._key] += time.perf_counter() - t
        return timed


def _per_expert_moe(rt):
    """The engine's MoE step before the grouped call (one ``run`` per expert, the sum per expert),
    kept here to measure it beside the grouped one in the same process."""
    import edgemoe.runtime.engine as engine

    def moe(layer, x, logits):
        experts, weights = engine.route(logits, rt.arch)
        rt.last_routing.append(experts)
        out = np.zeros_like(x)
        for e in np.unique(experts):
            rows, slot = np.nonzero(experts == e)
            out[rows] += weights[rows, slot, None] * rt.backend.run(rt._experts[(layer, int(e))], x[rows])
        return out
    return moe


def bench_layer(args) -> dict:
    """Where a resident decode token goes at batch 1 (embedding, layer graphs, routing, experts,
    the MoE layer's other Python, LM head), with the MoE step as one call per expert (before) and as
    the grouped call (after), side by side in one process; medians over --steps tokens."""
    import edgemoe.runtime.engine as engine
    from edgemoe.runtime.engine import Runtime

    pkg = Path(args.package) if args.package else olmoe_package(args.layers)
    rows = []
    for backend in args.backends.split(","):
        try:
            rt = Runtime(pkg, level=args.level, backend=backend)
        except Exception as e:     # noqa: BLE001  (tvm without compiled kernels: say so, go on)
            print(f"{backend}: skipped ({e})")
            continue
        acc = dict.fromkeys(("embed", "head", "layer graphs", "routing", "experts", "moe"), 0.0)
        grouped = rt._moe
        real_route, real_group = engine.route, engine.run_group
        rt._embed = _Timed(rt._embed, acc, "embed")
        rt._head = _Timed(rt._head, acc, "head")
        rt._layers = [_Timed(s, acc, "layer graphs") for s in rt._layers]
        backend_run = rt.backend.run

        def timed(fn, key):
            def f(*a, **kw):
                t = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    acc[key] += time.perf_counter() - t
            return f
        engine.route = timed(real_route, "routing")
        engine.run_group = timed(real_group, "experts")
        rt.backend.run = timed(backend_run, "experts")
        moe_layers = len(rt.arch.moe_layers)
        try:
            for mode, moe in (("per-expert", _per_expert_moe(rt)), ("grouped", grouped)):
                rt._moe = timed(moe, "moe")
                if mode == "per-expert":
                    rt.backend.run = timed(backend_run, "experts")
                else:                           # run_group's own calls to run are inside "experts"
                    rt.backend.run = backend_run
                for rep in range(args.reps):
                    rt.reset()
                    rt.step([(0, list(range(1, 17)))])
                    per = []
                    tok = 5
                    for _ in range(args.steps):
                        for k in ("embed", "head", "layer graphs", "routing", "experts", "moe"):
                            acc[k] = 0.0
                        t = time.perf_counter()
                        rt.step([(0, [tok])])
                        total = time.perf_counter() - t
                        tok = (tok * 7 + 3) % 1000
                        per.append({**acc, "total": total})
                    med = {k: float(np.median([p[k] for p in per])) for k in per[0]}
                    med["moe python"] = med["moe"] - med["experts"] - med["routing"]
                    med["other python"] = med["total"] - med["moe"] - med["embed"] - med["head"] - med["layer graphs"]
                    rows.append({"backend": backend, "mode": mode, "rep": rep, "level": args.level,
                                 **{k: v * 1e3 for k, v in med.items()},
                                 "moe python per layer us": (med["moe python"] + med["routing"]) / moe_layers * 1e6,
                                 "tok_s": 1 / med["total"]})
        finally:
            engine.route, engine.run_group = real_route, real_group
            rt.close()
    cols = ["total", "embed", "layer graphs", "routing", "experts", "moe python", "other python", "head"]
    print(f"\n{pkg}, level {args.level}, batch 1, decode after a 16-token prompt: ms per token "
          f"(medians of {args.steps}); Python per MoE layer = routing + the MoE step's Python")
    print(f"{'backend':>7} {'mode':>10} " + " ".join(f"{c:>12}" for c in cols) + f" {'py/layer us':>11} {'tok/s':>6}")
    for r in rows:
        print(f"{r['backend']:>7} {r['mode']:>10} " + " ".join(f"{r[c]:12.2f}" for c in cols)
              + f" {r['moe python per layer us']:11.0f} {r['tok_s']:6.1f}")
    return {"package": str(pkg), "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("context")
    c.add_argument("--layers", type=int, default=2)
    c.add_argument("--level", type=int, default=8)
    c.add_argument("--steps", type=int, default=16)
    c.add_argument("--model", choices=["olmoe", "tiny-kv10"], default="olmoe")
    c.add_argument("--llama-bench", default=None, help="llama-bench binary: its figures beside ours")
    c.add_argument("--gguf", default=None, help="the same model as GGUF (for --llama-bench)")
    b = sub.add_parser("batch")
    b.add_argument("--layers", type=int, default=2)
    b.add_argument("--level", type=int, default=8)
    b.add_argument("--tokens", type=int, default=16)
    b.add_argument("--batches", default="1,2,4,8,16")
    b.add_argument("--budget-backend", default=None)
    q = sub.add_parser("policies")
    q.add_argument("--layers", type=int, default=2)
    q.add_argument("--tokens", type=int, default=24)
    q.add_argument("--batches", default="1,4,16")
    q.add_argument("--budget", default="50%")
    h = sub.add_parser("headline")
    h.add_argument("--layers", type=int, default=24)
    h.add_argument("--budget", default="3GiB")
    h.add_argument("--levels", default="4,auto")
    h.add_argument("--tokens", type=int, default=16)
    h.add_argument("--llama-bench", default=None)
    h.add_argument("--gguf", default=None)
    h.add_argument("--llama-tokens", type=int, default=4)
    s = sub.add_parser("sweep")
    s.add_argument("--budgets", default="50%")
    r = sub.add_parser("resident")
    r.add_argument("--layers", type=int, default=4)
    r.add_argument("--levels", default="8,4,2")
    r.add_argument("--package", default=None, help="a package to measure (default: the OLMoE-shaped one)")
    y = sub.add_parser("layer")
    y.add_argument("--layers", type=int, default=4)
    y.add_argument("--level", type=int, default=8)
    y.add_argument("--steps", type=int, default=32)
    y.add_argument("--reps", type=int, default=2, help="alternations of the two modes")
    y.add_argument("--backends", default="ort,tvm")
    y.add_argument("--package", default=None, help="a package to measure (default: the OLMoE-shaped one)")
    v = sub.add_parser("speed")
    v.add_argument("--model", choices=["olmoe", "qwen3"], default="olmoe")
    v.add_argument("--layers", type=int, default=4)
    v.add_argument("--levels", default="8,4,2")
    v.add_argument("--threads", default="1,2")
    v.add_argument("--tokens", type=int, default=64)
    v.add_argument("--reps", type=int, default=3)
    v.add_argument("--prefill", type=int, default=512)
    v.add_argument("--no-prefill", dest="prefill_too", action="store_false")
    v.add_argument("--llama-bin", required=True, help="folder with llama-bench and llama-quantize")
    v.add_argument("--llama-dir", required=True, help="llama.cpp's source (its convert_hf_to_gguf.py)")
    args = ap.parse_args()
    info = cpu_info()
    print(f"CPU: {info['model']}, {info['cores']} cores, {' '.join(info['features'])}")
    res = {"context": bench_context, "batch": bench_batch, "policies": bench_policies,
           "headline": bench_headline, "sweep": bench_sweep, "resident": bench_resident,
           "layer": bench_layer, "speed": bench_speed}[args.what](args)
    res["cpu"] = info
    OUT.mkdir(exist_ok=True)
    path = OUT / f"engine_{args.what}.json"
    path.write_text(json.dumps(res, indent=2, default=str))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
