"""Export throughput and peak memory on a multi-GB, sharded, OLMoE-1B-7B-shaped checkpoint.

The export is meant to be streamed: tensors are read one at a time from the safetensors shards and no
more than about one layer of source weights is held. This benchmark checks that at real model shapes:

1. It writes a synthetic OLMoE checkpoint (real OLMoE-1B-7B shapes, ``--layers`` decoder layers
   instead of 16; bf16, values ~N(0, 0.02), norm weights ~1) shard by shard with its own minimal
   safetensors writer (8-byte little-endian header length + JSON header + raw data, bf16 = the upper
   16 bits of float32), plus ``model.safetensors.index.json`` and ``config.json``. Tensor data is
   streamed to disk in slices of a pre-generated block of Gaussian samples taken at random offsets,
   so the writer holds ~64 MB, never a shard.
2. It runs ``edgemoe.exporters.export.export`` in a subprocess and measures wall time, source MB/s,
   the subprocess's peak RSS (its own ``VmHWM``, reported by the child at every progress tick and at
   the end, which attributes the peak to an export stage, cross-checked by polling
   ``/proc/PID/status``), package size on disk and expert bytes per level. ``os.wait4``'s
   ``ru_maxrss`` is reported too, but only as an upper bound: Linux records the high-water mark of
   the image a child execs from, so it includes this parent's own peak (torch, the write buffers).
3. It repeats this for smaller checkpoints (``--compare-layers``, default 2) to show whether peak RSS
   grows with checkpoint size, prints a table and PASS/FAIL against ``--rss-limit-gb`` (1.5 GiB),
   and writes JSON (``--json``).

Each checkpoint and package is deleted as soon as it is measured; the work folder (a fresh temp
folder under ``--workdir``) is removed at the end unless ``--keep``.

    python benchmarks/export_scale.py                  # 4 layers (~3.8 GB) and 2 layers (~2.1 GB)
    python benchmarks/export_scale.py --layers 2       # just the 2-layer checkpoint
    python benchmarks/export_scale.py --layers 16 --compare-layers 2,4   # real depth, ~14 GB
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# OLMoE-1B-7B (allenai/OLMoE-1B-7B-0924) shapes
HIDDEN, INTER, EXPERTS, TOP_K, HEADS, VOCAB = 2048, 1024, 64, 8, 16, 50304
STD = 0.02
MB, GIB = 1_000_000, 1 << 30


# ---------------------------------------------------------------- synthetic checkpoint
def olmoe_config(layers: int) -> dict:
    return {
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": layers,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
        "num_experts": EXPERTS, "num_experts_per_tok": TOP_K, "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5, "norm_topk_prob": False, "tie_word_embeddings": False,
        "rope_theta": 10000.0, "rope_scaling": None, "max_position_embeddings": 4096,
        "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "clip_qkv": None,
        "initializer_range": 0.02, "router_aux_loss_coef": 0.01, "output_router_logits": False,
        "pad_token_id": 1, "bos_token_id": None, "eos_token_id": 50279,
        "torch_dtype": "bfloat16", "use_cache": True,
    }


def tensor_specs(layers: int) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape, is_norm) in Hugging Face OLMoE order and naming."""
    H, I = HIDDEN, INTER
    specs = [("model.embed_tokens.weight", (VOCAB, H), False)]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [(p + "input_layernorm.weight", (H,), True),
                  (p + "post_attention_layernorm.weight", (H,), True)]
        specs += [(p + f"self_attn.{x}_proj.weight", (H, H), False) for x in "qkvo"]
        specs += [(p + "self_attn.q_norm.weight", (H,), True), (p + "self_attn.k_norm.weight", (H,), True),
                  (p + "mlp.gate.weight", (EXPERTS, H), False)]
        for e in range(EXPERTS):
            q = p + f"mlp.experts.{e}."
            specs += [(q + "gate_proj.weight", (I, H), False), (q + "up_proj.weight", (I, H), False),
                      (q + "down_proj.weight", (H, I), False)]
    specs += [("model.norm.weight", (H,), True), ("lm_head.weight", (VOCAB, H), False)]
    return specs


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (upper 16 bits, truncation) as uint16."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


class RandomSource:
    """A block of N(0, STD) bf16 samples, doubled so that any window of up to ``n`` values is one
    contiguous slice; tensor data is streamed as windows at random offsets (zero-copy writes)."""

    def __init__(self, n: int = 16 << 20, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        block = to_bf16_bits(self.rng.standard_normal(n, dtype=np.float32) * STD)
        self.n, self.pool = n, np.concatenate([block, block])

    def write(self, f, count: int):
        while count:
            k = min(count, self.n)
            off = int(self.rng.integers(0, self.n))
            f.write(memoryview(self.pool[off:off + k]))
            count -= k

    def norm(self, count: int) -> np.ndarray:
        return to_bf16_bits(1.0 + self.rng.standard_normal(count, dtype=np.float32) * STD)


def plan_shards(specs, shard_bytes: int) -> list[list]:
    shards, cur, size = [], [], 0
    for spec in specs:
        nb = 2 * _numel(spec[1])
        if cur and size + nb > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(spec)
        size += nb
    if cur:
        shards.append(cur)
    return shards


def write_shard(path: Path, specs, src: RandomSource) -> int:
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in specs:
        nb = 2 * _numel(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nb]}
        off += nb
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for _, shape, is_norm in specs:
            if is_norm:
                f.write(src.norm(_numel(shape)).tobytes())
            else:
                src.write(f, _numel(shape))
    size = path.stat().st_size
    assert size == 8 + len(hb) + off, (path, size)
    return size


def write_checkpoint(folder: Path, layers: int, shard_mb: int, seed: int = 0) -> dict:
    folder.mkdir(parents=True)
    specs = tensor_specs(layers)
    shards = plan_shards(specs, shard_mb * MB)
    src = RandomSource(seed=seed)
    weight_map, total, files = {}, 0, 0
    for k, group in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        files += write_shard(folder / name, group, src)
        for tname, shape, _ in group:
            weight_map[tname] = name
            total += 2 * _numel(shape)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(olmoe_config(layers), indent=2))
    return {"shards": len(shards), "tensors": len(specs), "tensor_bytes": total, "file_bytes": files}


def check_checkpoint(folder: Path):
    """Cross-check the hand-written shards with the safetensors library (when it is installed)."""
    try:
        from safetensors import safe_open
    except ImportError:
        return "safetensors not installed; skipped"
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    first = sorted(set(index.values()))[0]
    with safe_open(str(folder / first), framework="pt") as f:
        keys = set(f.keys())
        expect = {n for n, s in index.items() if s == first}
        assert keys == expect, "shard keys differ from the index"
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in keys}
        norm = f.get_tensor("model.layers.0.input_layernorm.weight") if (
            "model.layers.0.input_layernorm.weight" in keys) else None
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    want = {n: s for n, s, _ in tensor_specs(layers) if n in keys}
    assert shapes == want, "shapes differ"
    if norm is not None:
        assert str(norm.dtype) == "torch.bfloat16" and abs(float(norm.float().mean()) - 1) < 0.01
    return f"ok ({first}: {len(keys)} tensors read back with safetensors)"


# ---------------------------------------------------------------- measured export
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
def mem():
    d = {}
    with open('/proc/self/status') as f:
        for line in f:
            k, _, v = line.partition(':')
            if k in ('VmRSS', 'VmHWM'):
                d[k] = int(v.split()[0]) * 1024
    return d
def tick(stage, done, total):
    m = mem()
    print(json.dumps({"stage": stage, "done": done, "total": total, "t": time.perf_counter() - t0,
                      "rss": m["VmRSS"], "hwm": m["VmHWM"]}), flush=True)
from edgemoe.exporters.export import export
from edgemoe.quant.spec import QuantSpec
tick("imported", 0, 0)
t1 = time.perf_counter()
export(sys.argv[1], sys.argv[2], quant=QuantSpec(), overwrite=False, progress=tick)
print(json.dumps({"stage": "done", "export_s": time.perf_counter() - t1, "t": time.perf_counter() - t0,
                  "rss": mem()["VmRSS"], "hwm": mem()["VmHWM"]}), flush=True)
"""


def _proc_mem(pid: int) -> tuple[int, int] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            d = {}
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    d[k] = int(v.split()[0]) * 1024
        return d.get("VmRSS", 0), d.get("VmHWM", 0)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def run_export(src: Path, out: Path, verbose: bool = True) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    events, samples, err = [], [], []

    def read_out():
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            ev["wall"] = time.perf_counter() - t0
            events.append(ev)
            if verbose and ev["stage"] != "imported":
                print(f"    {ev['wall']:7.1f}s  {ev['stage']:<10} RSS {ev['rss'] / MB:7.0f} MB  "
                      f"HWM {ev['hwm'] / MB:7.0f} MB", flush=True)

    readers = [threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)]
    for r in readers:
        r.start()
    rusage = status = None
    try:
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            m = _proc_mem(proc.pid)
            if m:
                samples.append((time.perf_counter() - t0, *m))
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        os.wait4(proc.pid, 0)
        raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen from waiting
    for r in readers:
        r.join(timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"export failed (exit {proc.returncode}):\n{''.join(err)[-4000:]}")
    done = next(e for e in events if e["stage"] == "done")
    imported = next(e for e in events if e["stage"] == "imported")
    polled = max((s[2] for s in samples), default=0)
    return {"wall_s": wall, "export_s": done["export_s"],
            # the child's VmHWM counts only its own life after exec; ru_maxrss (Linux: KiB) also
            # counts the parent's high-water mark from before the exec
            "peak_rss_bytes": max(max(e["hwm"] for e in events), polled),
            "rusage_maxrss_bytes": rusage.ru_maxrss * 1024,
            "polled_hwm_bytes": polled,
            "polled_samples": len(samples),
            "import_rss_bytes": imported["rss"],
            "stages": _stage_peaks(events, samples), "events": events}


def _stage_peaks(events, samples) -> list[dict]:
    """Per progress interval: how long it took and the highest RSS seen during it (child ticks +
    parent polls). An interval ends at its stage's tick, e.g. 'embed' = reading the global weights
    and writing embed.onnx."""
    rows, prev = [], 0.0
    for ev in events:
        if ev["stage"] in ("done",):
            continue
        lo, hi = prev, ev["wall"]
        polled = [s[1] for s in samples if lo <= s[0] <= hi]
        rows.append({"stage": ev["stage"], "end_s": round(hi, 2), "dur_s": round(hi - lo, 2),
                     "peak_rss_bytes": max(polled + [ev["rss"]]), "hwm_bytes": ev["hwm"]})
        prev = hi
    return rows


# ---------------------------------------------------------------- package accounting
def package_stats(pkg: Path) -> dict:
    import yaml

    apparent = disk = nfiles = 0
    by_kind = {"dense_graphs": 0, "expert_records": 0, "expert_graphs": 0, "other": 0}
    for p in pkg.rglob("*"):
        if not p.is_file():
            continue
        st = p.stat()
        nfiles += 1
        apparent += st.st_size
        disk += st.st_blocks * 512
        rel = p.relative_to(pkg).as_posix()
        kind = ("expert_records" if rel.endswith("records.bin") else
                "expert_graphs" if rel.startswith("experts/") else
                "dense_graphs" if rel.startswith("graphs/") else "other")
        by_kind[kind] += st.st_size
    man = yaml.safe_load((pkg / "manifest.yaml").read_text())
    levels: dict[int, int] = {}
    n_records = 0
    for layer in man["experts"]:
        n = len(layer["records"])
        n_records += n
        for lv in layer["levels"]:
            levels[lv["bits"]] = levels.get(lv["bits"], 0) + n * lv["prefix_length"]
    weights = n_records * 3 * HIDDEN * INTER
    return {"files": nfiles, "apparent_bytes": apparent, "disk_bytes": disk, "by_kind": by_kind,
            "expert_records": n_records,
            "level_bytes": {str(b): v for b, v in sorted(levels.items())},
            "level_bytes_per_weight": {str(b): v / weights for b, v in sorted(levels.items())}}


# ---------------------------------------------------------------- driver
def est_bytes(layers: int) -> tuple[int, int]:
    """(source bf16 bytes, rough package bytes) for the free-space check."""
    src = 2 * sum(_numel(s) for _, s, _ in tensor_specs(layers))
    per_expert = 3 * HIDDEN * INTER * 1.2   # ~1.15 bytes/weight at the top level, page padding
    pkg = 4 * 2 * VOCAB * HIDDEN + layers * (4 * 4 * HIDDEN * HIDDEN + EXPERTS * per_expert)
    return src, int(pkg)


def measure(work: Path, layers: int, shard_mb: int, verbose: bool) -> dict:
    ckpt, pkg = work / f"olmoe-{layers}L", work / f"olmoe-{layers}L.edgemoe"
    src_est, pkg_est = est_bytes(layers)
    free = shutil.disk_usage(work).free
    if free < 1.1 * (src_est + pkg_est):
        raise SystemExit(f"not enough disk in {work}: {free / GIB:.1f} GiB free, the {layers}-layer run "
                         f"needs ~{(src_est + pkg_est) / GIB:.1f} GiB (checkpoint + package)")
    print(f"[{layers} layers] writing checkpoint ({src_est / 1e9:.2f} GB bf16, {shard_mb} MB shards) "
          f"to {ckpt} ...", flush=True)
    t = time.perf_counter()
    info = write_checkpoint(ckpt, layers, shard_mb, seed=layers)
    info["write_s"] = time.perf_counter() - t
    info["check"] = check_checkpoint(ckpt)
    print(f"    {info['shards']} shards, {info['file_bytes'] / 1e9:.2f} GB in {info['write_s']:.1f}s; "
          f"safetensors check: {info['check']}", flush=True)
    print(f"[{layers} layers] exporting in a subprocess ...", flush=True)
    try:
        r = run_export(ckpt, pkg, verbose)
        r["package"] = package_stats(pkg)
    finally:
        shutil.rmtree(pkg, ignore_errors=True)
        shutil.rmtree(pkg.with_name(pkg.name + ".partial"), ignore_errors=True)
        shutil.rmtree(ckpt, ignore_errors=True)
    r["mb_per_s"] = info["file_bytes"] / MB / r["export_s"]
    r["mb_per_s_wall"] = info["file_bytes"] / MB / r["wall_s"]
    return {"layers": layers, "checkpoint": info, **r}


def print_table(runs: list[dict]):
    levels = list(runs[0]["package"]["level_bytes"])
    cols = (["layers", "shards", "source GB", "write s", "export s", "wall s", "MB/s", "peak RSS MB",
             "polled HWM MB", "rusage MB", "package GB"] + [f"k{b} experts MB" for b in levels])
    rows = []
    for r in runs:
        p = r["package"]
        rows.append([str(r["layers"]), str(r["checkpoint"]["shards"]),
                     f"{r['checkpoint']['file_bytes'] / 1e9:.2f}", f"{r['checkpoint']['write_s']:.1f}",
                     f"{r['export_s']:.1f}", f"{r['wall_s']:.1f}", f"{r['mb_per_s']:.1f}",
                     f"{r['peak_rss_bytes'] / MB:.0f}", f"{r['polled_hwm_bytes'] / MB:.0f}",
                     f"{r['rusage_maxrss_bytes'] / MB:.0f}",
                     f"{p['apparent_bytes'] / 1e9:.2f}"]
                    + [f"{p['level_bytes'][b] / MB:.0f}" for b in levels])
    w = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print()
    print("  ".join(c.rjust(w[i]) for i, c in enumerate(cols)))
    for row in rows:
        print("  ".join(v.rjust(w[i]) for i, v in enumerate(row)))
    big = max(runs, key=lambda r: r["layers"])
    print(f"\nexpert bytes per weight ({big['layers']} layers): " + ", ".join(
        f"k{b}: {v:.3f}" for b, v in big["package"]["level_bytes_per_weight"].items()))
    print(f"\nRSS by export stage ({big['layers']} layers; an interval ends at its progress tick):")
    for s in big["stages"]:
        print(f"  {s['stage']:<10} {s['dur_s']:7.1f}s  peak RSS {s['peak_rss_bytes'] / MB:7.0f} MB  "
              f"(HWM so far {s['hwm_bytes'] / MB:.0f} MB)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the main checkpoint (OLMoE: 16)")
    ap.add_argument("--compare-layers", default="2",
                    help="comma-separated smaller layer counts also measured, to see whether peak RSS "
                         "grows with checkpoint size ('' for none)")
    ap.add_argument("--shard-mb", type=int, default=500, help="safetensors shard size (MB)")
    ap.add_argument("--workdir", default="/tmp", help="a fresh temp folder is made (and removed) in here")
    ap.add_argument("--keep", action="store_true", help="keep the temp work folder (it is empty unless "
                                                        "a run failed)")
    ap.add_argument("--json", default="bench_out/export_scale.json")
    ap.add_argument("--rss-limit-gb", type=float, default=1.5, help="acceptance limit on peak RSS (GiB)")
    ap.add_argument("--quiet", action="store_true", help="no per-stage progress lines")
    args = ap.parse_args(argv)

    counts = sorted({int(x) for x in args.compare_layers.split(",") if x.strip()} | {args.layers})
    if min(counts) < 1:
        ap.error("layer counts must be >= 1")
    limit = int(args.rss_limit_gb * GIB)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edgemoe_export_scale_", dir=args.workdir))
    print(f"work folder {work}; {shutil.disk_usage(work).free / GIB:.1f} GiB free; "
          f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` cleans up
    runs = []
    try:
        for n in sorted(counts, reverse=True):   # the main (largest) checkpoint first
            runs.append(measure(work, n, args.shard_mb, not args.quiet))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    runs.sort(key=lambda r: r["layers"])
    print_table(runs)

    peaks = [r["peak_rss_bytes"] for r in runs]
    ok = max(peaks) < limit
    print("\npeak RSS by checkpoint size: " + ", ".join(
        f"{r['layers']} layers / {r['checkpoint']['file_bytes'] / 1e9:.2f} GB -> {r['peak_rss_bytes'] / MB:.0f} MB"
        for r in runs))
    growth = None
    if len(runs) > 1:
        a, b = runs[0], runs[-1]
        growth = (b["peak_rss_bytes"] - a["peak_rss_bytes"]) / (
            (b["checkpoint"]["file_bytes"] - a["checkpoint"]["file_bytes"]) / 1e9)
        print(f"peak RSS growth: {growth / MB:+.0f} MB per GB of checkpoint "
              f"({'flat' if abs(growth) < 50 * MB else 'GROWS'})")
    print(f"{'PASS' if ok else 'FAIL'}: peak RSS {max(peaks) / MB:.0f} MB "
          f"({max(peaks) / GIB:.2f} GiB) {'<' if ok else '>='} limit {args.rss_limit_gb} GiB "
          f"({limit / MB:.0f} MB)")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    for r in runs:
        r.pop("events", None)
    out.write_text(json.dumps({
        "benchmark": "export_scale", "model": "OLMoE-1B-7B shapes (synthetic, bf16)",
        "shapes": {"hidden": HIDDEN, "intermediate": INTER, "experts": EXPERTS, "top_k": TOP_K,
                   "heads": HEADS, "vocab": VOCAB},
        "shard_mb": args.shard_mb, "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "rss_limit_bytes": limit, "pass": ok, "rss_growth_bytes_per_gb": growth, "runs": runs,
    }, indent=2))
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
