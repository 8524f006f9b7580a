"""Export at scale: ``--jobs 1`` against ``--jobs 2`` on a synthetic DeepSeek-shaped FP8 checkpoint
of several GB, the memory per job, and an export killed mid-way then resumed against an
uninterrupted one (records byte-identical).

The checkpoint: DeepSeek-V2-Lite / Moonlight shapes (hidden 2048, latent attention with kv_lora 512
and rope 64 over 16 heads, 64 routed experts of 1408 and 2 shared, top-6, the first layer dense)
as ``deepseek_v3`` with ``--layers`` decoder layers, every Linear weight of the layers FP8 e4m3
with float32 128x128 block scales (``weight_scale_inv``, ``quantization_config``), as the official
FP8 releases; embeddings and norms bf16; one safetensors shard per layer. Each export runs in its
own process (``python -m edgemoe.cli export``); its peak RSS is its VmHWM, the workers' their own
(``stats["job_peak_rss"]``). Prints a table and writes JSON.

    python benchmarks/export_parallel.py [--layers 5] [--workdir /tmp] [--json bench_out/export_parallel.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
H, HEADS, R, DR, DN, DV, E, I, SHARED, VOCAB, DENSE_I = 2048, 16, 512, 64, 128, 128, 64, 1408, 2, 102400, 10944


def config(layers: int) -> dict:
    return {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": VOCAB,
            "hidden_size": H, "intermediate_size": DENSE_I, "moe_intermediate_size": I,
            "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
            "n_shared_experts": SHARED, "n_routed_experts": E, "num_experts_per_tok": 6,
            "routed_scaling_factor": 2.446, "kv_lora_rank": R, "q_lora_rank": None,
            "qk_rope_head_dim": DR, "qk_nope_head_dim": DN, "v_head_dim": DV, "n_group": 1, "topk_group": 1,
            "first_k_dense_replace": 1, "norm_topk_prob": True, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6, "rope_theta": 50000.0, "tie_word_embeddings": False,
            "num_nextn_predict_layers": 0,
            "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "weight_block_size": [128, 128]}}


def layer_tensors(i: int) -> dict[str, tuple[int, ...]]:
    a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
    t = {a + "q_proj.weight": (HEADS * (DN + DR), H), a + "kv_a_proj_with_mqa.weight": (R + DR, H),
         a + "kv_b_proj.weight": (HEADS * (DN + DV), R), a + "o_proj.weight": (H, HEADS * DV)}
    if i == 0:
        t.update({m + f"{p}_proj.weight": s for p, s in (("gate", (DENSE_I, H)), ("up", (DENSE_I, H)),
                                                          ("down", (H, DENSE_I)))})
    else:
        for e in range(E):
            t.update({m + f"experts.{e}.{p}_proj.weight": s for p, s in
                      (("gate", (I, H)), ("up", (I, H)), ("down", (H, I)))})
        si = SHARED * I
        t.update({m + f"shared_experts.{p}_proj.weight": s for p, s in (("gate", (si, H)), ("up", (si, H)),
                                                                         ("down", (H, si)))})
    return t


def write_checkpoint(folder: Path, layers: int) -> int:
    """One shard per layer (FP8 weights + scales, bf16 norms) and one for the rest; returns bytes."""
    import torch
    from safetensors.torch import save_file
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    index = {}
    for i in range(layers):
        out = {}
        for name, (n, k) in layer_tensors(i).items():
            w = torch.randn(n, k, generator=g) * 0.02
            gn, gk = -(-n // 128), -(-k // 128)
            pad = torch.zeros(gn * 128, gk * 128)
            pad[:n, :k] = w
            blocks = pad.reshape(gn, 128, gk, 128)
            scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
            out[name] = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn).reshape(gn * 128, gk * 128)[:n, :k].contiguous()
            out[name + "_scale_inv"] = scale.contiguous()
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
        out[p + "post_attention_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
        out[p + "self_attn.kv_a_layernorm.weight"] = torch.ones(R, dtype=torch.bfloat16)
        if i:
            out[p + "mlp.gate.weight"] = (torch.randn(E, H, generator=g) * 0.02).to(torch.bfloat16)
            out[p + "mlp.gate.e_score_correction_bias"] = torch.randn(E, generator=g) * 0.01
        shard = f"model-{i:05d}.safetensors"
        save_file(out, folder / shard, metadata={"format": "pt"})
        index.update({n: shard for n in out})
        del out
    rest = {"model.embed_tokens.weight": (torch.randn(VOCAB, H, generator=g) * 0.02).to(torch.bfloat16),
            "lm_head.weight": (torch.randn(VOCAB, H, generator=g) * 0.02).to(torch.bfloat16),
            "model.norm.weight": torch.ones(H, dtype=torch.bfloat16)}
    save_file(rest, folder / "model-rest.safetensors", metadata={"format": "pt"})
    index.update({n: "model-rest.safetensors" for n in rest})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (folder / "config.json").write_text(json.dumps(config(layers)))
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


CHILD = """
import json, sys, time
from edgemoe.exporters.export import export
stats = {}
t = time.perf_counter()
export(sys.argv[1], sys.argv[2], jobs=int(sys.argv[3]), resume=sys.argv[4] == "1", stats=stats)
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - t, "main_peak_rss": hwm, **stats}))
"""


def run(src: Path, out: Path, jobs: int, resume: bool = False, kill_after_layers: int | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(out), str(jobs), "1" if resume else "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    if kill_after_layers is not None:       # SIGKILL (no cleanup at all) once that many are journaled
        journal = out.with_name(out.name + ".partial") / "export-journal.yaml"
        import yaml
        while p.poll() is None:
            try:
                if len((yaml.safe_load(journal.read_text()) or {}).get("layers") or {}) >= kill_after_layers:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                    return {"killed": True}
            except (OSError, yaml.YAMLError):
                pass
            time.sleep(0.2)
    stdout, stderr = p.communicate()
    if p.returncode:
        raise SystemExit(f"export failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def records_digest(pkg: Path) -> dict:
    return {str(f.relative_to(pkg)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(pkg.rglob("*")) if f.is_file() and f.name != "manifest.yaml"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--json", type=Path, default=REPO / "bench_out" / "export_parallel.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgemoe-export-", dir=args.workdir))
    try:
        t = time.perf_counter()
        src_bytes = write_checkpoint(work / "ckpt", args.layers)
        print(f"checkpoint: {args.layers} layers, {src_bytes / 1e9:.2f} GB FP8 + bf16, written in "
              f"{time.perf_counter() - t:.0f}s; CPU cores {os.cpu_count()}", flush=True)
        rows = {}
        for jobs in (1, 2):
            r = run(work / "ckpt", work / f"j{jobs}.edgemoe", jobs)
            r["source_mb_s"] = src_bytes / 1e6 / r["seconds"]
            rows[f"jobs {jobs}"] = r
            print(f"jobs {jobs}: {r['seconds']:.1f}s, {r['source_mb_s']:.0f} MB/s of source, main peak RSS "
                  f"{r['main_peak_rss'] / 2**20:.0f} MiB"
                  + (f", per job {r['job_peak_rss'] / 2**20:.0f} MiB" if "job_peak_rss" in r else ""), flush=True)
        same_jobs = records_digest(work / "j1.edgemoe") == records_digest(work / "j2.edgemoe")
        shutil.rmtree(work / "j2.edgemoe")
        killed = run(work / "ckpt", work / "r.edgemoe", 1, kill_after_layers=max(1, args.layers // 2))
        resumed = run(work / "ckpt", work / "r.edgemoe", 1, resume=True)
        same_resume = records_digest(work / "j1.edgemoe") == records_digest(work / "r.edgemoe")
        result = {"layers": args.layers, "source_bytes": src_bytes, "cpu_count": os.cpu_count(), **rows,
                  "speedup_jobs2": rows["jobs 1"]["seconds"] / rows["jobs 2"]["seconds"],
                  "jobs_byte_identical": same_jobs, "killed": killed, "resumed": resumed,
                  "resume_byte_identical": same_resume}
        print(f"speed-up with 2 jobs: {result['speedup_jobs2']:.2f}x; byte-identical: jobs {same_jobs}, "
              f"killed (SIGKILL after {max(1, args.layers // 2)} layers) and resumed {same_resume} "
              f"({resumed.get('layers_resumed')} layers kept, resume took {resumed['seconds']:.1f}s)")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
