"""`edgemoe serve` under concurrent clients, beside llama.cpp's llama-server on the same model.

For each server and each number of concurrent clients (default 1, 2, 4, 8), every client sends
``--requests`` streamed /v1/completions requests one after another (greedy, ``ignore_eos``, a
different prompt each): total generated tokens per second of wall time, and the median time to
first token (request sent -> first streamed chunk). Servers:

- edgemoe resident (every expert in memory) and under ``--budget 50%`` (the fixed part plus half
  the experts), ``--parallel 8``, one onnxruntime thread;
- llama-server ``--parallel 8 -t 1`` on the same checkpoint converted to GGUF (f16 for the demo:
  its dense weights as shipped; Q8_0 for the realistic shape: like edgemoe's level 8),
  started with ``-c`` = 8 x the context per sequence (llama-server splits its context over slots).

Models: ``demo`` (the built-in 22M model, level 8) and ``olmoe`` (a synthetic checkpoint with
OLMoE-1B-7B layer shapes at ``--layers`` layers; its tokenizer is the demo's, written into the
checkpoint so that both servers take text). The peak RSS of each server process is read from
/proc (VmHWM) at the end. Prints a table and writes bench_out/serve_bench_<model>.json.

    python benchmarks/serve_bench.py --model demo [--llama-server PATH/llama-server --llama-dir DIR]
    python benchmarks/serve_bench.py --model olmoe --layers 4 --llama-server ... --llama-dir ...
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench_out"
sys.path.insert(0, str(REPO / "benchmarks"))

from engine_bench import cpu_info  # noqa: E402

WORDS = ("and the LORD said unto Moses go in unto Pharaoh and tell him thus saith the LORD God of "
         "the Hebrews let my people go that they may serve me in the wilderness").split()


def prompt(i: int, words: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(words))


class Server:
    def __init__(self, cmd: list[str], port: int, ready: str, env=None):
        self.port = port
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.log = []
        deadline = time.time() + 600
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + "".join(self.log[-30:]))
            self.log.append(line)
            if re.search(ready, line):
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server never became healthy")

    def peak_rss(self) -> int:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def budget_figures(self) -> dict:
        """edgemoe's budget and the process's peak RSS above its baseline, from /metrics."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/metrics")
        m = {}
        for line in c.getresponse().read().decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                m[k] = float(v)
        if "edgemoe:budget_bytes" not in m:
            return {}
        above = m["edgemoe:process_peak_resident_bytes"] - m["edgemoe:process_baseline_bytes"]
        return {"budget_bytes": int(m["edgemoe:budget_bytes"]), "peak_above_baseline_bytes": int(above),
                "peak_over_budget": above / m["edgemoe:budget_bytes"]}

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_request(port: int, text: str, max_tokens: int) -> tuple[float, int, float]:
    """-> (seconds to the first chunk, tokens generated, seconds in all)."""
    body = json.dumps({"prompt": text, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "ignore_eos": True, "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    first, chunks, usage = None, 0, None
    for raw in r:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        obj = json.loads(line[6:])
        if obj.get("usage"):
            usage = obj["usage"]["completion_tokens"]
        if obj.get("choices") and obj["choices"][0].get("text"):
            chunks += 1
            if first is None:
                first = time.perf_counter() - t0
    c.close()
    return first or 0.0, usage if usage is not None else chunks, time.perf_counter() - t0


def load(port: int, clients: int, requests: int, words: int, max_tokens: int) -> dict:
    ttft, tokens = [], []
    lock = threading.Lock()

    def client(k):
        for j in range(requests):
            f, n, _ = one_request(port, prompt(k * requests + j, words), max_tokens)
            with lock:
                ttft.append(f)
                tokens.append(n)

    one_request(port, prompt(999, words), 4)            # warm-up
    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(tokens), "tokens": sum(tokens), "wall_s": wall,
            "tokens_per_s": sum(tokens) / wall, "ttft_median_s": statistics.median(ttft),
            "ttft_max_s": max(ttft)}


def demo_model(args):
    from edgemoe.demo import builtin_checkpoint, builtin_package
    return builtin_package(), builtin_checkpoint(), "f16"


def olmoe_model(args):
    """The OLMoE-shaped synthetic checkpoint of engine_bench, with the demo's tokenizer."""
    import engine_bench as eb
    import export_scale as xs
    from edgemoe.demo import ASSET

    pkg, ckpt = eb._paths(f"olmoe-{args.layers}l-tok")
    if not (pkg / "manifest.yaml").exists():
        if eb._fresh(ckpt):
            print(f"writing a synthetic checkpoint ({args.layers} layers of OLMoE-1B-7B shapes) ...", flush=True)
            xs.write_checkpoint(ckpt, args.layers, shard_mb=2000)
            eb.redraw_embedding(ckpt, std=1.0)
        shutil.copy(ASSET / "tokenizer.json", ckpt / "tokenizer.json")
        from edgemoe.exporters.export import export
        from edgemoe.quant.spec import QuantSpec
        print("exporting ...", flush=True)
        export(ckpt, pkg, QuantSpec())
    return pkg, ckpt, "q8_0"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["demo", "olmoe"], default="demo")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--prompt-words", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--ctx", type=int, default=256, help="context per sequence")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--llama-server", type=Path, default=None)
    ap.add_argument("--llama-dir", type=Path, default=None, help="llama.cpp source (for the GGUF)")
    ap.add_argument("--gguf", type=Path, default=None, help="a GGUF of the same model (else converted)")
    ap.add_argument("--skip", default="", help="comma-separated configurations to skip")
    args = ap.parse_args()
    conc = [int(c) for c in args.concurrency.split(",")]
    pkg, ckpt, outtype = (demo_model if args.model == "demo" else olmoe_model)(args)
    configs = [("edgemoe resident", ["--level", "8"]), ("edgemoe 50% budget", ["--level", "8", "--budget", "50%"])]
    rows, port = [], 18700
    for name, extra in configs:
        if name in args.skip.split(","):
            continue
        s = Server([sys.executable, "-m", "edgemoe.cli", "serve", str(pkg), "--port", str(port),
                    "--parallel", str(args.parallel), "--ctx-size", str(args.ctx), "--max-queue", "64", *extra],
                   port, r"listening on", env={"OMP_NUM_THREADS": "1"})
        try:
            for c in conc:
                rows.append({"server": name, **load(port, c, args.requests, args.prompt_words, args.max_tokens)})
                print(rows[-1], flush=True)
            fig = s.budget_figures()
            for r in rows:
                if r["server"] == name:
                    r["peak_rss_bytes"] = s.peak_rss()
                    r.update(fig)
            if fig:
                print(f"{name}: budget {fig['budget_bytes'] / 2**20:.0f} MiB, peak RSS above the baseline "
                      f"{fig['peak_above_baseline_bytes'] / 2**20:.0f} MiB ({fig['peak_over_budget']:.3f}x)")
        finally:
            s.stop()
        port += 1
    if args.llama_server is not None:
        gguf = args.gguf
        if gguf is None:
            import llamacpp_compare as lc
            gguf = OUT / f"serve_{args.model}_{outtype}.gguf"
            if not gguf.exists():
                f16 = lc.convert(args.llama_dir, OUT / f"serve_{args.model}_f16.gguf", "f16", ckpt)
                if outtype != "f16":
                    q = args.llama_server.parent / "llama-quantize"
                    subprocess.run([str(q), str(f16), str(gguf), outtype.upper()], check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = f"llama-server {outtype}"
        s = Server([str(args.llama_server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                    "-np", str(args.parallel), "-c", str(args.ctx * args.parallel), "-t", "1", "-tb", "1",
                    "--no-webui"], port, r"listening|server is listening|HTTP server")
        try:
            for c in conc:
                rows.append({"server": name, **load(port, c, args.requests, args.prompt_words, args.max_tokens)})
                print(rows[-1], flush=True)
            for r in rows:
                if r["server"] == name:
                    r["peak_rss_bytes"] = s.peak_rss()
        finally:
            s.stop()
    print(f"\n{args.model}: {args.requests} requests per client, {args.prompt_words}-word prompts, "
          f"{args.max_tokens} tokens each, greedy; CPU {cpu_info()}")
    print(f"{'server':24} {'clients':>7} {'tok/s':>8} {'TTFT med (s)':>13} {'TTFT max':>9} {'peak RSS':>10}")
    for r in rows:
        print(f"{r['server']:24} {r['clients']:7d} {r['tokens_per_s']:8.1f} {r['ttft_median_s']:13.3f} "
              f"{r['ttft_max_s']:9.3f} {r['peak_rss_bytes'] / 2**20:8.0f} MiB")
    OUT.mkdir(exist_ok=True)
    out = OUT / f"serve_bench_{args.model}.json"
    out.write_text(json.dumps({"cpu": cpu_info(), "args": {k: str(v) for k, v in vars(args).items()},
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
