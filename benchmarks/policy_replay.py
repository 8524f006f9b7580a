"""Policies on recorded routing traces: bytes read per token at 25/50/75% budgets (fixed level 8),
against belady's offline optimum on the same trace. Traces come from the trained demo model reading
its held-out text (teacher forced: a prompt prefill, then one token per step), not from random
weights, whose routing says nothing about hot experts. Prints a table and writes JSON.

The last rows are not policies but bounds for online ones: hebf's eviction rule given what no
online policy has. ``hebf*`` knows each expert's hindsight statistics over the whole trace (the
probability it is routed to given the steps since its last use); ``hebf*+Nt`` also knows the exact
routing of the next N tokens (all layers). If even these read more than 1.2x belady's bytes, the
gap is the price of not knowing the future, not of the heuristic.

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
from edgemoe.schedulers.base import CacheView, LayerRequest, Plan
from edgemoe.schedulers.hebf import HEBF
from edgemoe.schedulers.replay import replay, steps_from_trace


POLICIES = ("hebf", "lru", "lfu", "static", "belady")
BOUNDS = {"hebf*": 0, "hebf*+1t": 1, "hebf*+2t": 2, "hebf*+4t": 4}   # name -> tokens known ahead
NAMES = POLICIES + tuple(BOUNDS)


def record(pkg, text: str, prompt: int, tokens: int, start: int, path: Path):
    rt = Runtime(pkg, level=8, budget="100%", prefetch=False, trace=path)
    ids = rt.encode(text)[start:start + prompt + tokens]
    rt.forward(ids[:prompt])
    for t in ids[prompt:]:
        rt.forward([t])
    rt.close()


class Clairvoyant(HEBF):
    """hebf with hindsight: per (expert, steps since its last use, capped at ``max_age``) the
    share of steps of the whole trace on which it was used; with ``tokens`` > 0, the experts of the
    next ``tokens * n_layers`` (layer, step) requests are kept as predicted (the exact routing of
    the next ``tokens`` tokens).
    """

    def __init__(self, experts, steps, tokens: int, max_age: int = 6):
        """``steps``: the trace as ``steps_from_trace`` groups it (the sequence replayed)."""
        super().__init__(experts)
        self._seq = [(layer, experts_) for step in steps for layer, experts_, _ in step]
        self._tokens, self._max_age = tokens, max_age
        self._n = len(self._layers)
        hits, seen, last = {}, {}, {}
        for s, step in enumerate(steps):
            for layer, experts, _ in step:
                for key in self._experts:
                    if key[0] != layer:
                        continue
                    a = min(s - last.get(key, -max_age), max_age)
                    seen[(key, a)] = seen.get((key, a), 0) + 1
                    hits[(key, a)] = hits.get((key, a), 0) + ((key[1] in experts))
                for e in experts:
                    last[(layer, e)] = s
        self._p = {f: hits[f] / seen[f] for f in seen}
        self._t, self._step, self._last = -1, 0, {}

    def plan(self, req: LayerRequest, view: CacheView) -> Plan:
        self._t += 1
        self._step = req.step
        for e, _ in req.needed:
            self._last[(req.layer, e)] = req.step
        if self._tokens:
            ahead = self._seq[self._t + 1:self._t + 1 + self._tokens * self._n]
            req = LayerRequest(req.step, req.layer, req.needed, req.fixed_level,
                               tuple((layer, e) for layer, ex in ahead for e in ex))
        return super().plan(req, view)

    def _worth(self, key, layer, view, predicted=frozenset()):
        """1 / expected layer-steps to the next use, from the hindsight reuse probabilities."""
        if key in predicted:
            return float("inf")
        here = self._layers.index(layer)
        d = (self._layers.index(key[0]) - here - 1) % self._n + 1
        age = (self._step + (0 if key[0] > layer else 1)) - self._last.get(key, -self._max_age)
        alive, wait = 1.0, 0.0
        for j in range(64):
            p = self._p.get((key, min(age + j, self._max_age)), 0.0)
            wait += alive * p * (d + self._n * j)
            alive *= 1 - p
        return 1.0 / (wait + alive * (d + self._n * 64))


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
            for name in POLICIES:
                kw = {"experts": sorted(pkg.experts), "future": accesses(records),
                      "profile": heat_profile(records)}
                pol = make_policy(name, **{k: v for k, v in kw.items()
                                           if (k, name) in {("experts", "hebf"), ("future", "belady"),
                                                            ("profile", "static")}})
                res[name] = replay(pol, steps, cap, pkg.quant.ladder, chunks, level=8,
                                   top_k=pkg.arch.top_k)
            for name, ahead in BOUNDS.items():
                res[name] = replay(Clairvoyant(sorted(pkg.experts), steps, ahead), steps, cap,
                                   pkg.quant.ladder, chunks, level=8, top_k=pkg.arch.top_k)
            bel = res["belady"]
            for name, r in res.items():
                rows.append({"trace": t, "budget": f"{share:.0%}", "policy": name,
                             "bytes_per_token": r.bytes_per_step,
                             "decode_bytes_per_token": r.bytes_per_decode_step,
                             "vs_belady": r.bytes_per_step / bel.bytes_per_step,
                             "decode_vs_belady": (r.bytes_per_decode_step / bel.bytes_per_decode_step
                                                  if bel.bytes_per_decode_step else None)})
    print(f"{'budget':>6} {'policy':>8} {'KiB/token':>10} {'vs belady':>9} {'decode KiB/tok':>14} "
          f"{'vs belady':>9}   (median over {args.traces} traces of {args.prompt}+{args.tokens} tokens)")
    summary = []
    for share in ("25%", "50%", "75%"):
        for name in NAMES:
            sel = [r for r in rows if r["budget"] == share and r["policy"] == name]
            med = lambda k: sorted(x[k] for x in sel if x[k] is not None)[len(sel) // 2] \
                if any(x[k] is not None for x in sel) else float("nan")  # noqa: E731
            s = {"budget": share, "policy": name, **{k: med(k) for k in
                 ("bytes_per_token", "vs_belady", "decode_bytes_per_token", "decode_vs_belady")}}
            summary.append(s)
            print(f"{share:>6} {name:>8} {s['bytes_per_token'] / 1024:10.1f} {s['vs_belady']:9.2f} "
                  f"{s['decode_bytes_per_token'] / 1024:14.1f} {s['decode_vs_belady']:9.2f}")
    print("hebf* / hebf*+Nt: hebf's rule with hindsight reuse statistics / and the exact routing of "
          "the next N tokens (bounds for online policies, not policies)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
