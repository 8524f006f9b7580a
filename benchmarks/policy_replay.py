"""Policies on recorded routing traces: bytes read per token at 25/50/75% budgets (fixed level 8),
against belady's offline optimum on the same trace. Traces come from the trained demo model reading
its held-out text (teacher forced: a prompt prefill, then one token per step), not from random
weights, whose routing says nothing about hot experts. Prints a table and writes JSON.

    python benchmarks/policy_replay.py [--tokens 400] [--json bench_out/policy_replay.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgemoe.demo import ASSET, builtin_package
from edgemoe.package.reader import Package
from edgemoe.runtime.engine import Runtime
from edgemoe.runtime.trace import accesses, heat_profile, read_trace
from edgemoe.schedulers import make_policy
from edgemoe.schedulers.replay import replay, steps_from_trace


def record(pkg, text: str, prompt: int, tokens: int, start: int, path: Path):
    rt = Runtime(pkg, level=8, budget="100%", prefetch=False, trace=path)
    ids = rt.encode(text)[start:start + prompt + tokens]
    rt.forward(ids[:prompt])
    for t in ids[prompt:]:
        rt.forward([t])
    rt.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=400, help="decode steps per trace")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--traces", type=int, default=3, help="traces from different held-out passages")
    p.add_argument("--json", type=Path, default=Path("bench_out/policy_replay.json"))
    args = p.parse_args(argv)
    pkg = Package(builtin_package())
    chunks = tuple(c.length for c in pkg.layout.chunks)
    full = pkg.level_bytes(8)
    text = (ASSET / "heldout.txt").read_text()
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for t in range(args.traces):
        path = tmp / f"trace{t}.jsonl"
        record(pkg, text, args.prompt, args.tokens, start=t * 5000, path=path)
        _, records = read_trace(path)
        steps = steps_from_trace(records)
        for share in (0.25, 0.5, 0.75):
            cap = int(full * share)
            res = {}
            for name in ("hebf", "lru", "lfu", "static", "belady"):
                kw = {"experts": sorted(pkg.experts), "future": accesses(records),
                      "profile": heat_profile(records)}
                pol = make_policy(name, **{k: v for k, v in kw.items()
                                           if (k, name) in {("experts", "hebf"), ("future", "belady"),
                                                            ("profile", "static")}})
                res[name] = replay(pol, steps, cap, pkg.quant.ladder, chunks, level=8,
                                   top_k=pkg.arch.top_k)
            bel = res["belady"]
            for name, r in res.items():
                rows.append({"trace": t, "budget": f"{share:.0%}", "policy": name,
                             "bytes_per_token": r.bytes_per_step,
                             "decode_bytes_per_token": r.bytes_per_decode_step,
                             "vs_belady": r.bytes_per_step / bel.bytes_per_step,
                             "decode_vs_belady": (r.bytes_per_decode_step / bel.bytes_per_decode_step
                                                  if bel.bytes_per_decode_step else None)})
    print(f"{'budget':>6} {'policy':>7} {'KiB/token':>10} {'vs belady':>9} {'decode KiB/tok':>14} "
          f"{'vs belady':>9}   (median over {args.traces} traces of {args.prompt}+{args.tokens} tokens)")
    summary = []
    for share in ("25%", "50%", "75%"):
        for name in ("hebf", "lru", "lfu", "static", "belady"):
            sel = [r for r in rows if r["budget"] == share and r["policy"] == name]
            med = lambda k: sorted(x[k] for x in sel if x[k] is not None)[len(sel) // 2] \
                if any(x[k] is not None for x in sel) else float("nan")  # noqa: E731
            s = {"budget": share, "policy": name, **{k: med(k) for k in
                 ("bytes_per_token", "vs_belady", "decode_bytes_per_token", "decode_vs_belady")}}
            summary.append(s)
            print(f"{share:>6} {name:>7} {s['bytes_per_token'] / 1024:10.1f} {s['vs_belady']:9.2f} "
                  f"{s['decode_bytes_per_token'] / 1024:14.1f} {s['decode_vs_belady']:9.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
