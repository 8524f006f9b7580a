"""The `edgemoe` command: a thin click group; every command is one library call."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edgemoe import __version__
from edgemoe.errors import EdgeMoEError


class _Group(click.Group):
    """Turn every EdgeMoEError into a one-line message and exit code 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeMoEError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgemoe")
def main():
    """edgemoe: run mixture-of-experts language models on small devices.

    \b
    Typical flow:
      edgemoe export ./Mixtral-checkpoint -o mixtral.edgemoe     (workstation)
      edgemoe inspect mixtral.edgemoe
      edgemoe run mixtral.edgemoe --prompt "Hello" --level 4     (device)
      edgemoe demo                                                (built-in model)
    """


def _size(n: float) -> str:
    """Bytes as llama.cpp / Ollama print them: KiB, MiB or GiB (binary)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.2f} {unit}"
    return f"{int(n)} B"


def _bar(label: str):
    """A click progress bar driven by export's (stage, done, total) callback."""
    state = {}

    def cb(stage, done, total):
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr,
                                             show_pos=True, item_show_func=lambda s: s)
            state["bar"].__enter__()
            state["done"] = 0
        state["bar"].update(done - state["done"], stage)
        state["done"] = done
        if done >= total:
            state["bar"].__exit__(None, None, None)

    return cb


@main.command()
@click.argument("src")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="package folder to write")
@click.option("--ladder", default="2,4,8", show_default=True,
              help="levels (bits) of the matryoshka ladder, increasing, ending at 8")
@click.option("--group-size", default=64, show_default=True, type=int,
              help="quantization group along the input dim (16..256, power of two)")
@click.option("--scale-dtype", default="float16", show_default=True,
              type=click.Choice(["float16", "float32"]), help="dtype of per-group scales/offsets")
@click.option("--experts", "expert_mode", default="matryoshka", show_default=True,
              type=click.Choice(["matryoshka", "float32"]),
              help="float32 stores experts unquantized (exact parity with the checkpoint)")
@click.option("--dense", "dense_dtype", default=None,
              type=click.Choice(["float32", "int8", "int4"]),
              help="dense weights (attention, embedding, LM head): int8 groups of --group-size "
                   "(~1/4 the memory of float32, about 2x the decode speed on real shapes; the "
                   "router stays float32), int4 (attention and LM head at 4 bits, the embedding "
                   "int8: faster again, less accurate), or float32 as in the checkpoint (exact)  "
                   "[default: int8; float32 with --experts float32]")
@click.option("--dry-run", is_flag=True, help="print the planned files and sizes; write nothing")
@click.option("--overwrite", is_flag=True, help="replace an existing package at -o")
@click.option("-j", "--jobs", type=click.IntRange(1), default=None,
              help="layers exported at once, one process each (about one layer of source weights "
                   "in memory per job)  [default: the CPU cores]")
@click.option("--resume", is_flag=True,
              help="continue an interrupted export into the same -o: the layers it finished are "
                   "checked (length, sha256) and kept, the rest redone")
@click.option("--json", "as_json", is_flag=True, help="machine-readable summary")
def export(src, out, ladder, group_size, scale_dtype, expert_mode, dense_dtype, dry_run, overwrite,
           jobs, resume, as_json):
    """Export a Hugging Face MoE checkpoint folder SRC to an .edgemoe package.

    SRC is a checkpoint folder (config.json, *.safetensors sharded or not; fp32, fp16, bf16,
    block-scaled FP8, gpt-oss's MXFP4 experts; optionally tokenizer.json) or a hub id such as
    Qwen/Qwen3-30B-A3B already in the Hugging Face cache (`huggingface-cli download ID` first;
    nothing is downloaded here). With --dry-run, a folder holding only config.json is enough: the
    sizes follow from its shapes.

    Supported model types: {types}.
    """
    from edgemoe.exporters.export import export as do_export, plan_export
    from edgemoe.quant.dense import DenseQuant, default_dense
    from edgemoe.quant.spec import QuantSpec, parse_ladder

    spec = (QuantSpec.float32() if expert_mode == "float32" else
            QuantSpec(ladder=parse_ladder(ladder), group_size=group_size, scale_dtype=scale_dtype))
    dense = DenseQuant(dense_dtype, group_size) if dense_dtype else default_dense(spec)
    if dry_run:
        plan, _, _ = plan_export(src, spec, dense, allow_config_only=True)
        a, summary = plan.arch, plan.summary()
        levels = summary["levels"]
        if as_json:
            click.echo(json.dumps(summary, indent=2))
            return
        click.echo(f"{plan.family}: {a.num_layers} layers ({len(a.moe_layers)} MoE), {a.num_experts} "
                   f"experts (top-{a.top_k}), {plan.params[0] / 1e9:.2f}B parameters, "
                   f"{plan.params[1] / 1e9:.2f}B active; would write to {out}"
                   + (" (sizes from config.json alone: no weights here)" if plan.config_only else "") + ":")
        if len(plan.files) <= 40:
            for p, n in plan.files:
                click.echo(f"  {_size(n):>10}  {p}")
        click.echo(f"  {_size(plan.total_bytes):>10}  total on disk (every level's bits)")
        click.echo(f"  {_size(plan.fixed_bytes):>10}  fixed part: dense graphs ({dense.dtype}) + tokenizer, "
                   f"resident at every level")
        for b, v in levels.items():
            click.echo(f"  {_size(v['package_bytes']):>10}  resident at level {b}: fixed + "
                       f"{_size(v['expert_bytes'])} of experts")
        click.echo(f"  {_size(plan.kv_bytes_per_token('f16')):>10}  KV cache per token of context (f16; "
                   f"{_size(plan.kv_bytes_per_token('int8'))} int8)")
        if a.sliding_layers:
            click.echo(f"  {_size(plan.kv_window_bytes('f16')):>10}  KV cache of the {len(a.sliding_layers)} "
                       f"sliding-window layers ({a.sliding_window} tokens), fixed (f16)")
        return
    jobs = jobs or os.cpu_count() or 1
    try:
        path = do_export(src, out, spec, overwrite=overwrite, progress=None if as_json else _bar("exporting"),
                         dense=dense, jobs=jobs, resume=resume)
    except KeyboardInterrupt:
        partial = Path(out).with_name(Path(out).name + ".partial")
        if partial.exists():
            click.echo(f"interrupted; the finished layers are kept in {partial}: run the same command "
                       f"with --resume to continue", err=True)
        raise
    if as_json:
        click.echo(json.dumps({"package": str(path)}))
    else:
        click.echo(f"wrote {path}")



def _export_help() -> str:
    from edgemoe.exporters.families import supported_model_types
    return export.help.replace("{types}", ", ".join(supported_model_types()))


export.help = _export_help()

@main.command()
@click.argument("package", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--verify", is_flag=True, help="also check every file's and expert chunk's sha256")
def inspect(package, as_json, verify):
    """Show a package's architecture, sizes per level and files."""
    from edgemoe.package.inspect import describe

    info = describe(package, verify=verify)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    a = info["arch"]
    click.echo(f"{package}: {a['family']}, {a['num_layers']} layers, hidden {a['hidden_size']}, "
               f"{a['num_experts']} experts (top-{a['top_k']}), vocab {a['vocab_size']}")
    q = info["quant"]
    click.echo(f"quant: {q['scheme']} ladder {q['ladder']} group {q['group_size']} "
               f"scales {q['scale_dtype']}")
    d = info["dense"]
    click.echo(f"dense graphs: {info['dense_bytes'] / 2**20:.2f} MiB ({d['dtype']}"
               + (f", group {d['group_size']})" if d["dtype"] != "float32" else ")"))
    for lv in info["levels"]:
        click.echo(f"experts at level {lv['bits']:>2}: {lv['bytes'] / 2**20:9.2f} MiB "
                   f"({lv['bytes_per_expert']:,} B per expert)")
    kv = info["kv_bytes_per_token"]
    click.echo("KV cache per token of context: " + ", ".join(f"{t} {n / 1024:.1f} KiB" for t, n in kv.items())
               + f" ({kv.get('f16', 0) * 4096 / 2**20:.0f} MiB for 4096 tokens at f16)")
    click.echo(f"files: {info['n_files']} ({info['total_bytes'] / 2**20:.2f} MiB on disk)")
    if verify:
        click.echo(f"verified: {info['verified_bytes']:,} bytes match their sha256")


class _Level(click.ParamType):
    name = "BITS|auto"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a number of bits or 'auto'", param, ctx)


LEVEL = _Level()
THREADS = click.option("--threads", "-t", default=1, show_default=True, type=click.IntRange(1),
                       help="compute threads (as llama.cpp's -t): the dense graphs' and, resident, "
                            "a layer's experts shared among them")
KV_DTYPE = click.option("--kv-dtype", default="f16", show_default=True,
                        type=click.Choice(["f16", "f32", "int8"]),
                        help="KV cache element type: f16 (half of f32's bytes), f32 (exact), int8 (a "
                             "quarter; per-channel scales calibrated at export)")


@main.command()
@click.argument("package", type=click.Path())
@click.option("--prompt", required=True, help="text to continue (needs the package's tokenizer)")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1))
@click.option("--level", type=LEVEL, default=None,
              help="expert bits (a ladder level, default the highest), or 'auto' under --budget")
@click.option("--budget", default=None,
              help="memory budget for everything (1.5GiB, 512MiB, or NN%: the fixed part plus NN% "
                   "of the experts); default: all experts resident")
@click.option("--policy", default="hebf", show_default=True,
              type=click.Choice(["hebf", "lru", "lfu"]), help="expert scheduling policy (with --budget)")
@click.option("--context", default=512, show_default=True, type=click.IntRange(1),
              help="tokens of KV cache the budget reserves (without --budget the cache grows)")
@KV_DTYPE
@click.option("--trace", type=click.Path(dir_okay=False), default=None,
              help="record the routing trace (JSON lines) here (with --budget)")
@click.option("--greedy", is_flag=True, help="greedy decoding (default: sample)")
@click.option("--temperature", default=0.8, show_default=True, type=float)
@click.option("--top-k", default=40, show_default=True, type=int)
@click.option("--top-p", default=0.95, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--backend", default=None,
              type=click.Choice(["ort", "planes", "tvm", "hls", "reference"]),
              help="expert kernels (default: ort resident, planes under --budget; tvm needs "
                   "`edgemoe compile PKG --device host`; hls emulates the FPGA's integer path)")
@THREADS
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of streaming")
def run(package, prompt, max_new_tokens, level, budget, policy, context, kv_dtype, trace, greedy,
        temperature, top_k, top_p, seed, backend, threads, as_json):
    """Generate text from PACKAGE, streaming tokens as they come."""
    from edgemoe.runtime.engine import Runtime
    from edgemoe.runtime.sampling import SamplingConfig

    rt = Runtime(package, level=level, backend=backend, budget=budget, policy=policy,
                 context=context, trace=trace, kv_dtype=kv_dtype, threads=threads)
    sampling = SamplingConfig(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=seed)
    try:
        if as_json:
            r = rt.generate(prompt, max_new_tokens, sampling)
            click.echo(json.dumps({"prompt": prompt, "text": r.text, "ids": r.ids,
                                   "prefill_s": r.prefill_seconds, "decode_s": r.decode_seconds,
                                   "decode_tokens_per_s": r.decode_tokens_per_s,
                                   "stats": rt.stats()}))
            return
        from edgemoe.runtime.streaming import stream_text

        r = stream_text(rt, prompt, max_new_tokens, sampling, click.echo)
        st = rt.stats()
        extra = (f", hit rate {st['hit_rate']:.0%}, levels {st['level_mix']}" if budget else "")
        click.echo(f"\n[{len(r.ids)} tokens, {r.decode_tokens_per_s:.1f} tok/s decode, "
                   f"{st['expert_bytes_read'] / 2**20:.1f} MiB of experts read{extra}]", err=True)
    finally:
        rt.close()


@main.command("eval")
@click.argument("package", type=click.Path())
@click.option("--text", "text_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="UTF-8 text file to score")
@click.option("--level", type=LEVEL, default=None,
              help="expert bits (a ladder level, default the highest), or 'auto' under --budget")
@click.option("--budget", default=None, help="memory budget (as for `run`); default all resident")
@click.option("--policy", default="hebf", show_default=True, type=click.Choice(["hebf", "lru", "lfu"]))
@click.option("--window", default=256, show_default=True, type=click.IntRange(2),
              help="tokens per window (each window starts a fresh KV cache)")
@click.option("--max-tokens", default=None, type=click.IntRange(2), help="score only this many tokens")
@click.option("--exact", is_flag=True, help="fp32 expert compute instead of int8 activations")
@KV_DTYPE
@THREADS
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def eval_cmd(package, text_file, level, budget, policy, window, max_tokens, exact, kv_dtype, threads,
             as_json):
    """Perplexity and bits per byte of PACKAGE on a text file."""
    from edgemoe.runtime.engine import Runtime
    from edgemoe.runtime.evaluate import evaluate

    rt = Runtime(package, level=level, exact=exact, budget=budget, policy=policy,
                 context=window, kv_dtype=kv_dtype, threads=threads)
    with open(text_file, encoding="utf-8", errors="replace") as f:
        text = f.read()
    bar = None if as_json else _bar("scoring")
    res = evaluate(rt, text, window=window, max_tokens=max_tokens,
                   progress=(lambda d, t: bar("window", d, t)) if bar else None)
    stats = rt.stats()
    rt.close()
    if as_json:
        click.echo(json.dumps({**res.to_dict(), "budget": budget, "stats": stats}, indent=2))
    else:
        mix = f", levels used {stats['level_mix']}" if budget else ""
        click.echo(f"level {res.level or 'auto'}{mix}: perplexity {res.perplexity:.3f}, {res.bits_per_byte:.4f} bits/byte "
                   f"over {res.tokens:,} tokens ({res.windows} windows, {res.seconds:.1f} s)")


@main.command()
@click.option("--prompt", default=None, help="text to continue (default: 'In the beginning')")
@click.option("--max-new-tokens", default=80, show_default=True, type=click.IntRange(1))
@click.option("--level", type=LEVEL, default="auto", show_default=True,
              help="expert bits (2, 4, 8) or auto (the scheduler picks per expert)")
@click.option("--budget", default=None,
              help="memory budget: a size (e.g. 24MiB) or NN% (the fixed part plus that share of the "
                   "experts); default: half the model's size (its fp16 checkpoint), or the smallest "
                   "budget that runs +5% where the run's KV cache and buffers need more")
@click.option("--greedy", is_flag=True, help="greedy decoding (default: sample, seed 0)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def demo(prompt, max_new_tokens, level, budget, greedy, as_json):
    """Run the built-in model (a small Mixtral trained on the World English Bible), offline.

    The first run exports it into ~/.cache/edgemoe (or $EDGEMOE_CACHE); later runs reuse it.
    """
    from edgemoe.demo import DEFAULT_PROMPT, run_demo
    from edgemoe.runtime.sampling import SamplingConfig

    sampling = SamplingConfig(greedy=greedy, temperature=0.8, top_k=40, top_p=0.95, seed=0)
    echo = (lambda *a, **k: None) if as_json else click.echo
    report = run_demo(prompt or DEFAULT_PROMPT, max_new_tokens, level, budget, sampling, echo,
                      progress=None if as_json else _bar("exporting the built-in model"))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    mib = 2 ** 20
    click.echo("\n")
    click.echo(f"  {report['tokens']} tokens: first after {report['time_to_first_token_s']:.2f} s, "
               f"then {report['decode_tokens_per_s']:.1f} tokens/s")
    click.echo(f"  budget {report['budget_bytes'] / mib:.1f} MiB = "
               f"{report['budget_bytes'] / report['model_bytes']:.0%} of the model's "
               f"{report['model_bytes'] / mib:.1f} MiB (dense weights, tokenizer, KV cache "
               f"and buffers {report['fixed_bytes'] / mib:.1f} MiB + expert cache "
               f"{report['expert_cache_bytes'] / mib:.1f} MiB for {report['package_expert_bytes'] / mib:.1f} "
               f"MiB of 8-bit experts); process peak RSS {report['peak_rss_bytes'] / mib:.0f} MiB")
    click.echo(f"  expert hit rate {report['hit_rate']:.0%}, {report['expert_bytes_read'] / mib:.1f} MiB "
               f"read, levels used (token-expert pairs): {report['level_mix']}")
    click.echo(f"  package: {report['package']}")


@main.command()
@click.option("--devices-dir", type=click.Path(file_okay=False), default=None,
              help="an extra folder of device YAML files (after the built-in ones and $EDGEMOE_DEVICES)")
@click.option("--calibrate", "do_calibrate", is_flag=True,
              help="measure this machine first (as `edgemoe calibrate`)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def devices(devices_dir, do_calibrate, as_json):
    """List the device profiles `edgemoe profile --device` knows."""
    from edgemoe.devices import HOST, load_devices, user_dir

    if do_calibrate:
        from edgemoe.profiler.calibrate import calibrate as do_cal
        path, _ = do_cal(progress=None if as_json else (lambda s: click.echo(f"measuring {s}...", err=True)))
        if not as_json:
            click.echo(f"wrote {path}", err=True)
    devs = load_devices(devices_dir)
    if as_json:
        click.echo(json.dumps({n: {**d.to_dict(), "source": d.source} for n, d in devs.items()}, indent=2))
        return
    gb = 1e9
    click.echo(f"{'name':<22} {'memory':>8} {'mem GB/s':>8} {'storage':>7} {'read MB/s':>9} "
               f"{'lat us':>6} {'ort':>6} {'planes':>6}  targets")
    for n, d in sorted(devs.items(), key=lambda kv: (kv[0] != HOST, kv[0])):
        t = d.targets
        tgt = ", ".join(x for x in (t.ort_providers[0] if t.ort_providers else None, t.tvm_target,
                                    t.hls_part) if x)
        click.echo(f"{n:<22} {d.memory_total / 2**30:6.1f}Gi {d.memory_bandwidth / gb:8.1f} "
                   f"{d.storage.kind:>7} {d.storage.read_bandwidth / 1e6:9.0f} "
                   f"{d.storage.read_latency * 1e6:6.0f} {d.throughput('ort'):6.1f} "
                   f"{d.throughput('planes'):6.2f}  {tgt}")
    host = devs.get(HOST)
    if host is not None and not host.calibrated:
        click.echo(f"note: host is the built-in conservative default; run `edgemoe calibrate` to measure "
                   f"this machine (writes {user_dir() / 'host.yaml'})")
    click.echo("compute columns: effective GFLOP/s of the runtime's dense (ort) and expert (planes) kernels")


@main.command()
@click.option("--dir", "folder", type=click.Path(file_okay=False), default=None,
              help="folder on the storage that holds your packages (default: $EDGEMOE_CACHE)")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="where to write host.yaml (default: $EDGEMOE_DEVICES or ~/.config/edgemoe/devices)")
@click.option("--size", default="128MiB", show_default=True, help="temporary file read for the storage test")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def calibrate(folder, out_dir, size, as_json):
    """Measure this machine (storage, memory, kernels) into the `host` device profile."""
    from edgemoe.profiler.calibrate import calibrate as do_cal
    from edgemoe.runtime.budget import parse_size

    path, m = do_cal(folder, out_dir, parse_size(size),
                     progress=None if as_json else (lambda s: click.echo(f"measuring {s}...", err=True)))
    if as_json:
        click.echo(json.dumps({"path": str(path), **{k: v for k, v in m.items()}}, indent=2, default=str))
        return
    click.echo(f"storage {m['read_bandwidth'] / 1e6:.0f} MB/s, {m['read_latency'] * 1e6:.0f} us per read; "
               f"memory {m['memory_bandwidth'] / 1e9:.1f} GB/s; sha256 {m['sha256'] / 1e9:.2f} GB/s")
    click.echo(f"kernels: ort {m['ort']:.1f} GFLOP/s, planes "
               + ", ".join(f"{b}-bit {v:.2f}" for b, v in sorted(m["planes"].items()))
               + f" GFLOP/s; I/O contention {m['contention']:.2f}")
    click.echo(f"wrote {path}")


@main.command()
@click.argument("package", type=click.Path(), required=False)
@click.option("--device", default="host", show_default=True,
              help="device profile to report for (`edgemoe devices` lists them); other than host, "
                   "the numbers are forecasts from this machine's measurements")
@click.option("--budgets", default=None,
              help="comma-separated budgets, e.g. 25%,50%,1GiB [default: 25%,50%,100%; with "
                   "--replay, the recorded one]")
@click.option("--policy", "policies", default=None,
              help="scheduling policies, comma-separated (hebf, lru, lfu) [default: hebf]")
@click.option("--level", type=LEVEL, default=None,
              help="expert bits (a ladder level, default the highest), or 'auto'")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="prompts, one per line (a line of integers is token ids) [default: 'In the beginning']")
@click.option("--new-tokens", default=32, show_default=True, type=click.IntRange(1),
              help="greedy decode steps per prompt")
@click.option("--context", default=512, show_default=True, type=click.IntRange(2),
              help="tokens of KV cache the budget reserves")
@click.option("--eval-text", type=click.Path(dir_okay=False), default=None,
              help="UTF-8 text to score: adds perplexity per budget")
@click.option("--eval-tokens", default=1024, show_default=True, type=click.IntRange(2),
              help="score only this many tokens of --eval-text")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="folder for report.json, report.txt, PNG plots and the traces")
@click.option("--target-tps", type=float, default=None,
              help="recommend the smallest budget (and level mode) reaching this decode tokens/s")
@click.option("--replay", type=click.Path(dir_okay=False), default=None,
              help="forecast from a trace recorded by `edgemoe profile --out` (no weights needed)")
@click.option("--devices-dir", type=click.Path(file_okay=False), default=None,
              help="an extra folder of device YAML files")
@click.option("--no-plots", is_flag=True, help="skip the PNGs (no matplotlib needed)")
@click.option("--in-process", is_flag=True,
              help="run every budget in this process (faster start; each run's peak RSS is still "
                   "its own, but memory freed by earlier runs may linger, and numpy keeps this "
                   "process's BLAS threads: isolated runs use OMP_NUM_THREADS=1 unless you set it)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def profile(package, device, budgets, policies, level, prompts_file, new_tokens, context, eval_text,
            eval_tokens, out, target_tps, replay, devices_dir, no_plots, in_process, as_json):
    """Throughput, latency, memory and quality of PACKAGE per budget, measured or forecast.

    \b
    edgemoe profile PKG --budgets 25%,50%,1GiB --out prof/           (this machine)
    edgemoe profile PKG --device jetson-orin-nano-8gb --budgets 2GiB  (forecast for a board)
    edgemoe profile --replay prof/traces/hebf-50pct.jsonl --device raspberry-pi-5-8gb
    """
    from edgemoe.profiler.report import print_report
    from edgemoe.profiler.sweep import (DEFAULT_PROMPTS, ProfileRequest, check_request,
                                        parse_budgets, parse_policies, read_prompts, run_profile,
                                        total_steps)

    req = ProfileRequest(
        package=package, device=device,
        budgets=parse_budgets(budgets) if budgets else (() if replay else ("25%", "50%", "100%")),
        policies=parse_policies(policies) if policies else (() if replay else ("hebf",)),
        level=level, prompts=read_prompts(prompts_file) if prompts_file else DEFAULT_PROMPTS,
        new_tokens=new_tokens, context=context, eval_text=eval_text, eval_tokens=eval_tokens,
        out=out, target_tps=target_tps, replay=replay, devices_dir=devices_dir,
        isolate=not in_process, plots=not no_plots)
    check_request(req)
    n = total_steps(req)
    if as_json or not n:
        report = run_profile(req)
    else:
        with click.progressbar(length=n, label="profiling", file=sys.stderr, show_pos=True) as bar:
            report = run_profile(req, progress=bar.update)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        print_report(report, click.echo)

@main.command("compile")
@click.argument("package", type=click.Path())
@click.option("--device", "devices", multiple=True, required=True,
              help="a device profile (`edgemoe devices`), a TVM preset (host, aarch64, jetson-orin, "
                   "jetson-xavier, mali) or an FPGA board (zcu102, kv260); repeatable")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="write kernels/<device>/ here instead of inside the package")
@click.option("--activations", type=click.Choice(["auto", "int8", "float32"]), default="auto",
              show_default=True,
              help="TVM CPU kernels: int8 activations (x86 AVX-512 VNNI or AVX2, aarch64 "
                   "dotprod or plain NEON; about 2% error per expert, like onnxruntime's fast "
                   "path) or float32 (exact); auto = int8 wherever the CPU has integer SIMD")
def compile_cmd(package, devices, out, activations):
    """Build ahead-of-time expert kernels of PACKAGE for boards: TVM libraries (CPU, CUDA, OpenCL)
    or, for FPGA boards, an HLS project with its C-simulation testbench and Vitis script."""
    from edgemoe.backends.compile import compile_for_device

    for device in devices:
        path = compile_for_device(package, device, out=out, progress=_bar(f"compiling {device}"),
                                  activations=activations)
        click.echo(f"{device}: {path}")


@main.command()
@click.argument("package", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0 for every interface: then set --api-key)")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free one, printed at start-up)")
@click.option("--parallel", "-np", default=4, show_default=True, type=click.IntRange(1),
              help="sequences decoded together (KV cache slots); more requests wait in the queue")
@click.option("--ctx-size", "-c", default=2048, show_default=True, type=click.IntRange(2),
              help="tokens of context per sequence (prompt + max_tokens); the budget reserves a KV "
                   "cache of this size for each slot")
@click.option("--budget", default=None,
              help="memory budget for the whole server (1.5GiB, 512MiB, or NN%: the fixed part plus "
                   "NN% of the experts); default: all experts resident")
@click.option("--level", type=LEVEL, default=None,
              help="expert bits (a ladder level, default the highest), or 'auto' under --budget")
@click.option("--policy", default="hebf", show_default=True,
              type=click.Choice(["hebf", "lru", "lfu"]), help="expert scheduling policy (with --budget)")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(0),
              help="requests that may wait for a slot; beyond it: 503 with Retry-After")
@click.option("--api-key", default=None, envvar="EDGEMOE_API_KEY",
              help="require 'Authorization: Bearer KEY' on every route but /health "
                   "(or set EDGEMOE_API_KEY)")
@click.option("--cors-origins", default=None,
              help="comma-separated origins a browser may call from (e.g. http://localhost:3000, or "
                   "*); default: no CORS headers")
@click.option("--alias", multiple=True,
              help="model name(s) clients use (default: the package folder's name); repeatable")
@KV_DTYPE
@click.option("--backend", default=None, type=click.Choice(["ort", "planes", "tvm", "hls"]),
              help="expert kernels (as for `run`)")
@THREADS
def serve(package, host, port, parallel, ctx_size, budget, level, policy, max_queue, api_key,
          cors_origins, alias, kv_dtype, backend, threads):
    """Serve PACKAGE over an OpenAI-compatible HTTP API (needs `pip install 'edgemoe[serve]'`).

    \b
    Routes: POST /v1/chat/completions, POST /v1/completions (streaming as
    server-sent events), GET /v1/models, GET /health, GET /metrics (Prometheus),
    POST /tokenize, POST /detokenize.
    \b
    Example:
      edgemoe serve model.edgemoe --budget 2GiB --parallel 4
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hello"}]}'
    """
    from edgemoe.serve.server import ServeConfig, serve as run_server

    origins = tuple(o.strip() for o in cors_origins.split(",") if o.strip()) if cors_origins else ()
    run_server(ServeConfig(package, host=host, port=port, parallel=parallel, ctx_size=ctx_size,
                           budget=budget, level=level, policy=policy, max_queue=max_queue,
                           api_key=api_key, cors_origins=origins, alias=tuple(alias),
                           kv_dtype=kv_dtype, backend=backend, threads=threads))


@main.command()
@click.argument("package", type=click.Path())
@click.option("--system", default=None, help="a system message that starts the conversation")
@click.option("--max-new-tokens", default=512, show_default=True, type=click.IntRange(1),
              help="longest reply")
@click.option("--ctx-size", "-c", default=2048, show_default=True, type=click.IntRange(2),
              help="tokens of context for the whole conversation")
@click.option("--budget", default=None, help="memory budget (as for `run`); default: all resident")
@click.option("--level", type=LEVEL, default=None,
              help="expert bits (a ladder level, default the highest), or 'auto' under --budget")
@click.option("--policy", default="hebf", show_default=True, type=click.Choice(["hebf", "lru", "lfu"]))
@click.option("--greedy", is_flag=True, help="greedy decoding (default: sample)")
@click.option("--temperature", default=0.8, show_default=True, type=float)
@click.option("--top-k", default=40, show_default=True, type=int)
@click.option("--top-p", default=0.95, show_default=True, type=float)
@click.option("--min-p", default=0.05, show_default=True, type=float)
@click.option("--seed", default=None, type=int, help="sampling seed (default: random)")
@KV_DTYPE
@THREADS
def chat(package, system, max_new_tokens, ctx_size, budget, level, policy, greedy, temperature,
         top_k, top_p, min_p, seed, kv_dtype, threads):
    """Chat with PACKAGE in the terminal, with its chat template (as `ollama run`).

    Type a message and Enter; /reset forgets the conversation, /exit or Ctrl-D leaves, Ctrl-C stops
    a reply. Each turn reuses the previous turns' KV cache.
    """
    from edgemoe.chat import ChatSession, run_chat
    from edgemoe.runtime.chat_template import ChatTemplate
    from edgemoe.runtime.engine import Runtime
    from edgemoe.runtime.sampling import SamplingConfig

    sampling = SamplingConfig(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                              min_p=min_p, seed=seed)
    from edgemoe.package.reader import Package

    pkg = Package(package)
    ctx_size = min(ctx_size, pkg.arch.max_position)
    rt = Runtime(pkg, level=level, budget=budget, policy=policy, context=ctx_size, kv_dtype=kv_dtype,
                 threads=threads)
    try:
        template = ChatTemplate.of_package(rt.pkg)
        if template.is_fallback:
            click.echo("[the package has no chat template: using the plain System:/User:/Assistant: "
                       "fallback]", err=True)
        session = ChatSession(rt, template, system, max_new_tokens, sampling, context=ctx_size)

        def write(text):
            click.echo(text, nl=False)
            sys.stdout.flush()

        run_chat(session, lambda p: input(p), write, lambda m: click.echo(m, err=True))
    finally:
        rt.close()


if __name__ == "__main__":
    main()
