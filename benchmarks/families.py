"""Every supported family: parity on its tiny random model, and the flagship checkpoints' sizes.

    python benchmarks/families.py parity [--seeds 3] [--families a,b] [--json bench_out/families_parity.json]
    python benchmarks/families.py sizes  [--json bench_out/families_sizes.json]

``parity``: per family (tests/tiny_models.py) and seed, the unquantized package's largest logits
error against transformers over a 16-token prefill and 16 cached decode steps, whether 32 greedy
tokens are identical, and level-8 top-1 agreement over 256 teacher-forced positions (exact fp32
experts and onnxruntime's int8-activation fast path), dense float32 so the experts' error is alone.
``sizes``: ``edgemoe export --dry-run`` on the config-only flagship folders in
``benchmarks/flagship_configs``: parameters, the fixed part, the resident size per level, KV per
token. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIPS = ROOT / "benchmarks" / "flagship_configs"


def parity(seeds: int, only: list[str] | None = None) -> list[dict]:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models
    from edgemoe.exporters.export import export
    from edgemoe.quant.dense import FLOAT32
    from edgemoe.quant.spec import QuantSpec
    from edgemoe.runtime.engine import Runtime

    rows = []
    for fam in sorted(only or tiny_models.FAMILIES):
        for seed in range(seeds):
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                model = tiny_models.build(fam, d / "hf", seed=seed)
                f32 = export(d / "hf", d / "f32.edgemoe", QuantSpec.float32())
                q = export(d / "hf", d / "q.edgemoe", QuantSpec(), dense=FLOAT32)
                v = model.config.vocab_size
                ids = np.random.default_rng(1).integers(0, v, 32)
                with torch.no_grad():
                    ref = model(torch.tensor(ids[None])).logits[0].numpy()
                rt = Runtime(f32, kv_dtype="f32")
                got = np.concatenate([rt.forward(ids[:16])] + [rt.forward(ids[t:t + 1]) for t in range(16, 32)])
                prompt = np.random.default_rng(2).integers(0, v, 8)
                with torch.no_grad():
                    hf = model.generate(torch.tensor(prompt[None]), max_new_tokens=32, min_new_tokens=32,
                                        do_sample=False, eos_token_id=None, pad_token_id=0)[0, 8:].tolist()
                ours = Runtime(f32, kv_dtype="f32").generate(prompt.tolist(), max_new_tokens=32,
                                                            stop_at_eos=False).ids
                ids = np.random.default_rng(3).integers(0, v, 256)
                with torch.no_grad():
                    top = model(torch.tensor(ids[None])).logits[0].numpy().argmax(-1)
                exact = float((Runtime(q, level=8, exact=True).forward(ids).argmax(-1) == top).mean())
                fast = float((Runtime(q, level=8).forward(ids).argmax(-1) == top).mean())
            rows.append({"family": fam, "seed": seed, "max_abs_err": float(np.abs(got - ref).max()),
                         "greedy_identical": ours == hf, "level8_top1_exact": exact,
                         "level8_top1_fast": fast})
            print(f"{fam:18s} seed {seed}  err {rows[-1]['max_abs_err']:.2e}  greedy "
                  f"{'same' if ours == hf else 'DIFFERS'}  level-8 top-1 exact {exact:.3f} fast {fast:.3f}",
                  flush=True)
    return rows


def sizes() -> list[dict]:
    from click.testing import CliRunner

    from edgemoe.cli import main
    rows = []
    for d in sorted(FLAGSHIPS.iterdir()):
        r = CliRunner().invoke(main, ["export", str(d), "-o", "/nonexistent", "--dry-run", "--json"])
        if r.exit_code:
            raise SystemExit(f"{d.name}: {r.output}")
        s = json.loads(r.output)
        rows.append({"checkpoint": d.name.replace("--", "/"), "family": s["family"],
                     "params_b": s["params_total"] / 1e9, "active_b": s["params_active"] / 1e9,
                     "fixed_gib": s["fixed_bytes"] / 2**30,
                     **{f"level{b}_gib": v["package_bytes"] / 2**30 for b, v in s["levels"].items()},
                     "kv_kib_per_token": s["kv_bytes_per_token"]["f16"] / 1024,
                     "kv_window_mib": s["kv_window_bytes"]["f16"] / 2**20})
    print(f"{'checkpoint':34s} {'family':15s} {'params':>8s} {'active':>7s} {'fixed':>7s} "
          f"{'L2':>7s} {'L4':>7s} {'L8':>7s} {'KV/tok':>8s}")
    for r in rows:
        print(f"{r['checkpoint']:34s} {r['family']:15s} {r['params_b']:7.1f}B {r['active_b']:6.2f}B "
              f"{r['fixed_gib']:6.2f}G {r['level2_gib']:6.1f}G {r['level4_gib']:6.1f}G "
              f"{r['level8_gib']:6.1f}G {r['kv_kib_per_token']:6.0f}KiB"
              + (f" (+{r['kv_window_mib']:.1f} MiB windows)" if r["kv_window_mib"] else ""))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["parity", "sizes"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--families", default=None, help="comma-separated (parity; default every family)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = parity(args.seeds, args.families and args.families.split(",")) if args.what == "parity" else sizes()
    out = args.json or ROOT / "bench_out" / f"families_{args.what}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
