"""Profiler checks: forecast accuracy on this machine, peak memory against an outside measurement,
and (optionally) a profile of a package of a few hundred MB.

1. Forecast accuracy. On the built-in demo model (trained on real text) with prompts from its
   held-out split: record one run at ``--record-budget`` (its routing trace and timings), forecast
   ``host`` decode tokens/s at each of ``--budgets`` from that trace alone, then measure each budget
   ``--rounds`` times in fresh processes, interleaved, and print predicted against the median
   measured (PASS within +/-25%). The machine is shared, so the spread of the rounds is printed too.
2. Peak memory. Run `edgemoe profile --in-process --json` for one budget under ``/usr/bin/time -v``
   (else poll the child's /proc VmHWM) and compare its "Maximum resident set size" with the peak RSS
   the profile reports (PASS within 10%); also compare, for isolated runs, the worker's own VmHWM with
   the ``wait4`` peak its parent saw.
3. ``--scale-mb N``: build a random Mixtral checkpoint of about N MB of 8-bit experts (numpy +
   safetensors, with the demo tokenizer), export it, and time `edgemoe profile` at three budgets with
   plots (``--scale-out`` keeps the report and PNGs).

    python benchmarks/profile_forecast.py [--budgets 25%,50%,100%] [--record-budget 50%]
        [--prompts 3] [--new-tokens 32] [--scale-mb 0] [--json bench_out/profile_forecast.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def held_out_prompts(n: int, chars: int = 320) -> list[str]:
    """``n`` prompts from the demo model's held-out text: paragraph starts spread over the file."""
    from edgemoe.demo import ASSET
    text = (ASSET / "heldout.txt").read_text()
    step = len(text) // (n + 1)
    out = []
    for i in range(1, n + 1):
        start = text.rfind("\n", 0, i * step) + 1
        out.append(" ".join(text[start:start + chars].split()))
    return out


# ---------------------------------------------------------------- 1. forecast accuracy
def forecast_accuracy(pkg: Path, prompts: list[str], budgets: list[str], record_budget: str,
                      new_tokens: int, work: Path, rounds: int = 3) -> dict:
    """One recorded run -> forecasts; each budget then measured ``rounds`` times, interleaved
    (budget by budget, round after round) so that a slow phase of the machine hits all budgets
    alike; the measured rate is the median of the rounds (their spread is printed)."""
    from edgemoe.devices import HOST, get_device
    from edgemoe.profiler.forecast import forecast
    from edgemoe.profiler.metrics import summarize
    from edgemoe.profiler.recorder import RunConfig, run_isolated
    from edgemoe.profiler.sweep import trace_meta
    from edgemoe.profiler.workload import load_workload, write_meta

    host = get_device(HOST)
    trace = work / "recorded.jsonl"
    cfg = dict(package=str(pkg), prompts=tuple(prompts), new_tokens=new_tokens)
    t0 = time.perf_counter()
    rec = run_isolated(RunConfig(budget=record_budget, trace=str(trace), **cfg))
    write_meta(trace, trace_meta(rec, host), keep_steps=len(rec.steps))
    recorded = summarize(rec)
    wl = load_workload(trace)
    runs = {b: [] for b in budgets}
    for _ in range(rounds):
        for b in budgets:
            runs[b].append(summarize(run_isolated(RunConfig(budget=b, **cfg))))
    rows = []
    for b in budgets:
        _, cap = wl.resolve_budget(b)
        f = forecast(wl, host, cap)
        tps = sorted(r["decode_tokens_per_s"] for r in runs[b])
        m = min(runs[b], key=lambda r: abs(r["decode_tokens_per_s"] - statistics.median(tps)))
        err = f["decode_tokens_per_s"] / statistics.median(tps) - 1
        rows.append({"budget": b, "predicted_decode_tps": f["decode_tokens_per_s"],
                     "measured_decode_tps": statistics.median(tps), "measured_rounds": tps,
                     "error": err,
                     "predicted_hit_rate": f["hit_rate"], "measured_hit_rate": m["hit_rate"],
                     "predicted_kib_per_token": f["bytes_per_token"] / 1024,
                     "measured_kib_per_token": m["bytes_per_token"] / 1024,
                     "predicted_stall": f["stall_share"], "measured_stall": m["stall_share"],
                     "predicted_ttft_s": f["time_to_first_token_s"],
                     "measured_ttft_s": m["time_to_first_token_s"]})
    return {"record_budget": record_budget, "recorded_decode_tps": recorded["decode_tokens_per_s"],
            "timing": wl.timing, "rows": rows, "seconds": time.perf_counter() - t0,
            "pass": all(abs(r["error"]) <= 0.25 for r in rows)}


def print_accuracy(res: dict) -> None:
    print(f"\nForecast accuracy (host -> host): trace recorded at {res['record_budget']} "
          f"({res['recorded_decode_tps']:.2f} tok/s there); forecasts against the median of fresh "
          f"measured runs (rounds listed)")
    print(f"{'budget':>7} {'predicted':>10} {'measured':>9} {'rounds':>19} {'error':>7}   "
          f"{'hit pred/meas':>13} "
          f"{'KiB/tok pred/meas':>19} {'stall pred/meas':>15} {'TTFT s pred/meas':>17}")
    for r in res["rows"]:
        spread = "/".join(f"{x:.0f}" for x in r["measured_rounds"])
        print(f"{r['budget']:>7} {r['predicted_decode_tps']:10.2f} {r['measured_decode_tps']:9.2f} "
              f"{spread:>19} {r['error']:+7.1%}   {r['predicted_hit_rate']:6.2f}/{r['measured_hit_rate']:<6.2f} "
              f"{r['predicted_kib_per_token']:9.1f}/{r['measured_kib_per_token']:<9.1f} "
              f"{r['predicted_stall']:7.1%}/{r['measured_stall']:<7.1%} "
              f"{r['predicted_ttft_s']:8.3f}/{r['measured_ttft_s']:<8.3f}")
    print(f"decode tok/s within +/-25% at every budget: {'PASS' if res['pass'] else 'FAIL'}")


# ---------------------------------------------------------------- 2. peak memory, outside view
def _time_v(cmd: list[str]) -> tuple[subprocess.CompletedProcess, int | None, str]:
    """Run ``cmd``; its peak RSS from /usr/bin/time -v, else from polling /proc/PID/status."""
    if Path("/usr/bin/time").exists():
        p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=ENV)
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
        return p, int(m.group(1)) * 1024 if m else None, "/usr/bin/time -v"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    peak = 0
    while proc.poll() is None:
        try:
            for line in open(f"/proc/{proc.pid}/status"):
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak or None, "/proc VmHWM polling"


def rss_check(pkg: Path, prompts_file: Path, budget: str, new_tokens: int) -> dict:
    cli = [sys.executable, "-m", "edgemoe.cli", "profile", str(pkg), "--budgets", budget,
           "--prompts", str(prompts_file), "--new-tokens", str(new_tokens), "--json"]
    p, outside, how = _time_v(cli + ["--in-process"])
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    row = json.loads(p.stdout)["rows"][0]["measured"]
    inproc = {"reported_peak_rss": row["peak_rss_bytes"], "outside_peak_rss": outside, "how": how,
              "ratio": row["peak_rss_bytes"] / outside if outside else None}
    p = subprocess.run(cli, capture_output=True, text=True, env=ENV)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    row = json.loads(p.stdout)["rows"][0]["measured"]
    iso = {"reported_peak_rss": row["peak_rss_bytes"], "outside_peak_rss": row["outside_peak_rss_bytes"],
           "how": "the parent reads the worker's /proc VmHWM",
           "ratio": row["peak_rss_bytes"] / row["outside_peak_rss_bytes"]}
    ok = all(r["ratio"] is not None and abs(r["ratio"] - 1) <= 0.10 for r in (inproc, iso))
    return {"budget": budget, "in_process": inproc, "isolated": iso, "pass": ok}


def print_rss(res: dict) -> None:
    mib = 2 ** 20
    print(f"\nPeak memory, reported by the profile vs measured from outside (budget {res['budget']}):")
    for name in ("in_process", "isolated"):
        r = res[name]
        print(f"  {name:<10} reported {r['reported_peak_rss'] / mib:8.1f} MiB   outside "
              f"{(r['outside_peak_rss'] or 0) / mib:8.1f} MiB ({r['how']})   ratio {r['ratio'] or 0:.3f}")
    print(f"within 10%: {'PASS' if res['pass'] else 'FAIL'}")


# ---------------------------------------------------------------- 3. a package of a few hundred MB
def synthetic_checkpoint(folder: Path, target_mb: int, seed: int = 0) -> dict:
    """A random Mixtral (fp16 safetensors) whose experts hold about ``target_mb`` MB at 8 bits."""
    import numpy as np
    from safetensors.numpy import save_file

    from edgemoe.demo import ASSET
    H, I, L, heads, kv, V = 512, 1536, 8, 8, 4, 4096
    E = max(2, round(target_mb * 1e6 / (L * 3 * H * I)))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    f16 = lambda *s, std=0.02: (rng.standard_normal(s, np.float32) * std).astype(np.float16)  # noqa: E731
    t = {"model.embed_tokens.weight": f16(V, H), "lm_head.weight": f16(V, H, std=0.06),
         "model.norm.weight": np.ones(H, np.float16)}
    hd = H // heads
    for i in range(L):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": np.ones(H, np.float16),
                  p + "post_attention_layernorm.weight": np.ones(H, np.float16),
                  p + "self_attn.q_proj.weight": f16(H, H), p + "self_attn.k_proj.weight": f16(kv * hd, H),
                  p + "self_attn.v_proj.weight": f16(kv * hd, H), p + "self_attn.o_proj.weight": f16(H, H),
                  p + "block_sparse_moe.gate.weight": f16(E, H, std=0.3)})
        for e in range(E):
            q = p + f"block_sparse_moe.experts.{e}."
            t.update({q + "w1.weight": f16(I, H), q + "w2.weight": f16(H, I), q + "w3.weight": f16(I, H)})
    save_file(t, str(folder / "model.safetensors"))
    cfg = json.loads((ASSET / "config.json").read_text())
    cfg.update(hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=heads,
               num_key_value_heads=kv, num_local_experts=E, vocab_size=V, dtype="float16")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(ASSET / "tokenizer.json", folder / "tokenizer.json")
    return {"experts": E, "layers": L, "hidden": H, "intermediate": I}


def scale_check(target_mb: int, prompts_file: Path, work: Path, out: Path | None,
                new_tokens: int) -> dict:
    from edgemoe.exporters.export import export
    from edgemoe.package.reader import Package
    shape = synthetic_checkpoint(work / "ckpt", target_mb)
    t0 = time.perf_counter()
    pkg = export(work / "ckpt", work / "big.edgemoe")
    t_export = time.perf_counter() - t0
    shutil.rmtree(work / "ckpt")
    size = sum(p.stat().st_size for p in Path(pkg).rglob("*") if p.is_file())
    out = out or work / "profile"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edgemoe.cli", "profile", str(pkg), "--budgets",
                        "25%,50%,100%", "--prompts", str(prompts_file), "--new-tokens", str(new_tokens),
                        "--out", str(out), "--device", "jetson-orin-nano-8gb"],
                       capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    print(p.stdout)
    return {"shape": shape, "package_bytes": size, "expert_bytes_8bit": Package(pkg).level_bytes(8),
            "export_s": t_export, "profile_s": wall, "out": str(out),
            "pngs": sorted(x.name for x in out.glob("*.png")),
            "progress_bar_seen": "profiling" in p.stderr}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="25%,50%,100%")
    ap.add_argument("--record-budget", default="50%")
    ap.add_argument("--prompts", type=int, default=4, help="held-out prompts per run")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3, help="measured runs per budget (median)")
    ap.add_argument("--scale-mb", type=int, default=0, help="also profile a ~N MB package (0: skip)")
    ap.add_argument("--scale-out", type=Path, default=None, help="keep the scale check's report here")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--json", type=Path, default=Path("bench_out/profile_forecast.json"))
    args = ap.parse_args(argv)

    from edgemoe.demo import builtin_package
    pkg = builtin_package()
    work = Path(tempfile.mkdtemp(prefix="edgemoe-profile-bench-"))
    prompts = held_out_prompts(args.prompts)
    prompts_file = work / "prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n")
    out = {"package": str(pkg), "prompts": prompts}
    ok = True
    try:
        if not args.skip_accuracy:
            out["forecast"] = forecast_accuracy(pkg, prompts, args.budgets.split(","),
                                                args.record_budget, args.new_tokens, work,
                                                args.rounds)
            print_accuracy(out["forecast"])
            ok &= out["forecast"]["pass"]
        out["rss"] = rss_check(pkg, prompts_file, args.record_budget, args.new_tokens)
        print_rss(out["rss"])
        ok &= out["rss"]["pass"]
        if args.scale_mb:
            out["scale"] = s = scale_check(args.scale_mb, prompts_file, work, args.scale_out,
                                           args.new_tokens)
            print(f"\n{s['package_bytes'] / 1e6:.0f} MB package ({s['expert_bytes_8bit'] / 1e6:.0f} MB of "
                  f"8-bit experts, {s['shape']}): exported in {s['export_s']:.0f} s, profiled at 3 budgets "
                  f"in {s['profile_s']:.0f} s; plots: {', '.join(s['pngs'])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
