"""Budgeted runtime benchmark: the budget holds, level 8 is exact, loading overlaps compute, and how
the policies compare on bytes read (against belady's offline optimum on the same routing trace).

Runs on the built-in demo model (trained on real text) by default; every configuration runs in a
fresh subprocess so its peak RSS (VmHWM) is its own. Prints a table and writes JSON.

    python benchmarks/budget_bench.py [--package PKG] [--tokens 64] [--json bench_out/budget.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT_CHARS = 600


def _vm(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def worker(args: dict) -> dict:
    """One configuration in this process: prefill the prompt, decode ``tokens`` greedily."""
    import numpy as np

    from edgemoe.runtime.engine import Runtime
    from edgemoe.runtime.memory import pin_malloc_mmap_threshold, start_libraries

    pin_malloc_mmap_threshold()
    start_libraries()   # baseline: after imports and the libraries' start-up (see memory.py)
    base = _vm("VmRSS")
    rt = Runtime(args["package"], level=args["level"], budget=args["budget"], policy=args["policy"],
                 backend=args.get("backend"), trace=args.get("trace"),
                 policy_args=_policy_args(args))
    text = Path(args["text"]).read_text()[:PROMPT_CHARS]
    ids = rt.encode(text)[: args["prompt_tokens"]]
    t0 = time.perf_counter()
    logits = [rt.forward(ids)]
    t1 = time.perf_counter()
    step_times, step_bytes, nxt = [], [], int(np.argmax(logits[-1][-1]))
    for _ in range(args["tokens"]):
        b0 = rt.stats()["expert_bytes_read"]
        s = time.perf_counter()
        logits.append(rt.forward([nxt]))
        step_times.append(time.perf_counter() - s)
        step_bytes.append(rt.stats()["expert_bytes_read"] - b0)
        nxt = int(np.argmax(logits[-1][-1]))
    st = rt.stats()
    rt.close()
    out = {"prefill_s": t1 - t0, "decode_step_median_s": statistics.median(step_times),
           "decode_step_s": step_times, "decode_step_bytes": step_bytes,
           "decode_tokens": len(step_times), "rss_base": base, "rss_peak": _vm("VmHWM"),
           "logits_sha": _digest(logits), "stats": st}
    return out


def _policy_args(args):
    if args["policy"] in ("belady", "static"):
        from edgemoe.runtime.trace import accesses, heat_profile, read_trace
        _, records = read_trace(args["replay"])
        return {"future": accesses(records)} if args["policy"] == "belady" else \
            {"profile": heat_profile(records)}
    return None


def _digest(arrays) -> str:
    import hashlib
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()


def run_worker(cfg: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                       text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"worker failed for {cfg}:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def disk_bandwidth(pkg: Path) -> float:
    """Sequential O_DIRECT read bandwidth (bytes/s) of the package's record files."""
    import mmap
    files = sorted(pkg.glob("experts/*/records.bin"))
    total, t = 0, 0.0
    buf = mmap.mmap(-1, 1 << 20)
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        s = time.perf_counter()
        off = 0
        while True:
            n = os.preadv(fd, [buf], off)
            if n <= 0:
                break
            off += n
        t += time.perf_counter() - s
        total += off
        os.close(fd)
    return total / t if t else float("inf")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--package", type=Path, help="default: the built-in demo model (exported once)")
    p.add_argument("--text", type=Path, help="prompt text (default: the demo model's held-out split)")
    p.add_argument("--tokens", type=int, default=48, help="decode steps per configuration")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--budgets", default="25%,50%,75%")
    p.add_argument("--backend", choices=("planes", "tvm"),
                   help="expert kernels for every run (default: what a budgeted run picks)")
    p.add_argument("--json", type=Path, default=Path("bench_out/budget.json"))
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from edgemoe.demo import ASSET, builtin_package
    from edgemoe.package.reader import Package
    from edgemoe.runtime.engine import _budget_backend

    pkg = args.package or builtin_package()
    text = args.text or ASSET / "heldout.txt"
    package = Package(pkg)
    # every run, the resident reference included, on the backend a budgeted run picks (the
    # package's tvm kernels for this machine if compiled, else planes): exactness and the compute
    # bound are then measured against the same kernels
    backend = args.backend or _budget_backend(package)
    common = {"package": str(pkg), "text": str(text), "tokens": args.tokens,
              "prompt_tokens": args.prompt_tokens, "backend": backend}
    rows, tmp = [], Path(tempfile.mkdtemp())
    resident = run_worker({**common, "level": 8, "budget": None, "policy": "hebf"})
    bw = disk_bandwidth(Path(pkg))
    for budget in args.budgets.split(","):
        trace = tmp / f"trace-{budget.strip('%')}.jsonl"
        res = {"hebf": run_worker({**common, "level": 8, "budget": budget, "policy": "hebf",
                                   "trace": str(trace)})}
        for pol in ("lru", "lfu", "static", "belady"):
            res[pol] = run_worker({**common, "level": 8, "budget": budget, "policy": pol,
                                   "replay": str(trace)})
        res["hebf-auto"] = run_worker({**common, "level": "auto", "budget": budget, "policy": "hebf"})
        for pol, r in res.items():
            st = r["stats"]
            steps = st["steps"]
            bytes_tok = st["expert_bytes_read"] / max(steps, 1)
            rows.append({
                "budget": budget, "policy": pol, "budget_bytes": st["budget"]["budget"],
                "expert_cache_bytes": st["budget"]["experts"], "cache_peak_bytes": st["cache_peak_bytes"],
                "rss_above_base": r["rss_peak"] - r["rss_base"],
                "rss_ratio": (r["rss_peak"] - r["rss_base"]) / st["budget"]["budget"],
                "exact_vs_resident": r["logits_sha"] == resident["logits_sha"] if pol != "hebf-auto" else None,
                "bytes_per_token": bytes_tok, "hit_rate": st["hit_rate"],
                "decode_ms": 1e3 * r["decode_step_median_s"], "level_mix": st["level_mix"],
                "decode_bytes_per_token": statistics.median(r["decode_step_bytes"]),
                "_steps": list(zip(r["decode_step_s"], r["decode_step_bytes"])),
                "prefetch_recall": st["prefetch_recall"],
            })
    compute_ms = 1e3 * resident["decode_step_median_s"]
    for row in rows:
        # per decode step: its time against max(the resident step's compute, its own expert bytes
        # read / the disk's bandwidth); the median of those ratios (prefill's reads excluded)
        steps = row.pop("_steps")
        row["overlap_bound_ms"] = max(compute_ms, 1e3 * row["decode_bytes_per_token"] / bw)
        row["overlap_ratio"] = statistics.median(t / max(compute_ms / 1e3, b / bw) for t, b in steps)
    for budget in args.budgets.split(","):
        bel = next(r for r in rows if r["budget"] == budget and r["policy"] == "belady")
        for r in rows:
            if r["budget"] == budget:
                r["bytes_vs_belady"] = r["bytes_per_token"] / bel["bytes_per_token"] \
                    if bel["bytes_per_token"] else None

    hdr = (f"{'budget':>6} {'policy':>9} {'budget MiB':>10} {'cache pk/cap':>12} {'RSS/budget':>10} "
           f"{'exact':>5} {'KiB/tok':>8} {'vs belady':>9} {'hit':>5} {'ms/tok':>7} {'bound':>6} "
           f"{'ratio':>5}  levels")
    print(f"package {pkg}: dense {package.dense_bytes() / 2**20:.1f} MiB, experts at 8 bits "
          f"{package.level_bytes(8) / 2**20:.1f} MiB; disk {bw / 2**20:.0f} MiB/s; backend {backend}; "
          f"resident compute {compute_ms:.2f} ms/token")
    print(hdr)
    for r in rows:
        print(f"{r['budget']:>6} {r['policy']:>9} {r['budget_bytes'] / 2**20:10.1f} "
              f"{r['cache_peak_bytes'] / max(r['expert_cache_bytes'], 1):12.3f} {r['rss_ratio']:10.2f} "
              f"{str(r['exact_vs_resident'])[:5]:>5} {r['bytes_per_token'] / 1024:8.1f} "
              f"{(r['bytes_vs_belady'] or 0):9.2f} {r['hit_rate']:5.2f} {r['decode_ms']:7.2f} "
              f"{r['overlap_bound_ms']:6.2f} {r['overlap_ratio']:5.2f}  {r['level_mix']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"package": str(pkg), "backend": backend, "disk_bytes_per_s": bw,
                                     "resident_decode_ms": compute_ms, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
