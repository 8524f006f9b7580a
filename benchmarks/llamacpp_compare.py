"""edgemoe against llama.cpp under the same memory limit (cgroup v1), on the built-in demo model.

Both runtimes decode greedily, one thread, in a child cgroup whose ``memory.limit_in_bytes`` is
the process's own start-up memory plus the same model budget (default: 50% of the model's size,
the size of llama.cpp's f16 GGUF of the demo model, which matches the shipped fp16 checkpoint):

- llama.cpp (``llama-bench -p 0 -n N -t 1``, mmap as by default): its start-up memory is measured
  as the cgroup's peak in an unlimited run minus the GGUF's size (binary, libraries, compute and
  KV buffers), so the limit leaves it exactly the budget for the model's pages;
- edgemoe: a worker joins the cgroup before importing anything, imports, starts its libraries,
  and reports; the limit is then set to the cgroup's usage at that point + the budget (the same
  allowance as llama.cpp's), and the worker runs ``Runtime(budget=...)`` and decodes.

Before each run the model files are evicted from the page cache (posix_fadvise DONTNEED), so both
start cold. Needs root (cgroup v1 memory controller at /sys/fs/cgroup/memory) and a llama.cpp
build. Prints a table and writes JSON.

Getting llama.cpp here without network access beyond PyPI (the vendored source of the
llama-cpp-python sdist; about 10 minutes on 2 cores for llama-bench alone):

    pip download --no-deps --no-binary :all: llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz
    cd llama_cpp_python-*/vendor/llama.cpp
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \\
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF && ninja -C build llama-bench
    pip install ./gguf-py

The GGUF is made by ``--convert-from LLAMA_CPP_DIR`` (llama.cpp's own convert_hf_to_gguf.py run on
the demo checkpoint; its tokenizer is a byte-level BPE with the GPT-2 pre-tokenizer, which the
converter is told since it cannot identify an unknown tokenizer by hash), or given with --gguf.

    python benchmarks/llamacpp_compare.py --llama-bench PATH/llama-bench --convert-from LLAMA_CPP_DIR
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
ASSET = Path(__file__).resolve().parents[1] / "edgemoe" / "assets" / "tiny-moe"

# Run by ``python llamacpp_compare.py --convert ...``: llama.cpp's converter with the vocabulary
# path forced to GPT-2-style BPE (what the demo tokenizer is).
_CONVERT = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
import conversion.base as base
def _not_spm(self):
    raise FileNotFoundError("byte-level BPE tokenizer: use the gpt2 vocab path")
base.TextModel._set_vocab_sentencepiece = _not_spm
base.TextModel._set_vocab_llama_hf = _not_spm
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
script = sys.argv[1] + "/convert_hf_to_gguf.py"
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def convert(llama_dir: Path, out: Path, outtype: str, checkpoint: Path = ASSET) -> Path:
    """A checkpoint (default: the demo's) -> GGUF with llama.cpp's converter (needs transformers,
    torch, gguf). A checkpoint without a tokenizer (the synthetic ones of the benchmarks) borrows
    the demo's byte-level BPE; the converter pads its vocabulary to the model's with [PAD] tokens."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "ckpt"
        src.mkdir()
        for f in Path(checkpoint).iterdir():
            if f.suffix in (".json", ".safetensors") and f.name != "tokenizer_config.json":
                os.symlink(f.resolve(), src / f.name)
        if not (src / "tokenizer.json").exists():
            os.symlink(ASSET / "tokenizer.json", src / "tokenizer.json")
        (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
        script = Path(tmp) / "convert.py"
        script.write_text(_CONVERT)
        subprocess.run([sys.executable, str(script), str(llama_dir), str(src), "--outtype", outtype,
                        "--outfile", str(out)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out


class Cgroup:
    """A child memory cgroup (v1); ``usage``/``peak``/``failcnt`` read its counters."""

    def __init__(self, name: str):
        self.path = CGROUP_ROOT / f"edgemoe_{name}_{os.getpid()}"
        self.path.mkdir()

    def set_limit(self, nbytes: int):
        (self.path / "memory.limit_in_bytes").write_text(str(int(nbytes)))

    def _read(self, f: str) -> int:
        return int((self.path / f).read_text())

    usage = property(lambda self: self._read("memory.usage_in_bytes"))
    peak = property(lambda self: self._read("memory.max_usage_in_bytes"))
    failcnt = property(lambda self: self._read("memory.failcnt"))

    def join_fn(self):
        procs = str(self.path / "cgroup.procs")
        return lambda: Path(procs).write_text(str(os.getpid()))

    def close(self):
        try:
            self.path.rmdir()
        except OSError:
            pass


def evict(*paths: Path):
    for p in paths:
        for f in ([p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run_llama(bench: Path, gguf: Path, tokens: int, limit: int | None, timeout: int) -> dict:
    cg = Cgroup("llama")
    try:
        if limit:
            cg.set_limit(limit)
        evict(gguf)
        p = subprocess.run([str(bench), "-m", str(gguf), "-p", "0", "-n", str(tokens), "-t", "1",
                            "-r", "1", "-o", "json"], preexec_fn=cg.join_fn(), capture_output=True,
                           text=True, timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"llama-bench failed ({p.returncode}): {p.stderr[-2000:]}")
        (r,) = json.loads(p.stdout)
        return {"tokens_per_s": r["avg_ts"], "cgroup_peak": cg.peak, "limit": limit, "failcnt": cg.failcnt}
    finally:
        cg.close()


def _worker(package: str, budget: int | None, tokens: int, prompt: str):
    """In the cgroup: import, start the libraries, report, wait for the limit, then decode."""
    import time

    import numpy as np

    from edgemoe.demo import run_context
    from edgemoe.runtime.engine import Runtime
    from edgemoe.runtime.memory import pin_malloc_mmap_threshold, start_libraries

    pin_malloc_mmap_threshold()
    start_libraries()
    print("READY", flush=True)
    sys.stdin.readline()                       # the parent has set the limit
    rt = Runtime(package, level="auto" if budget else 8, budget=budget,
                 backend=None if budget else "ort", context=run_context(prompt, tokens))
    ids = rt.encode(prompt)
    nxt = int(np.argmax(rt.forward(ids)[-1]))
    steps = []
    for _ in range(tokens):
        t = time.perf_counter()
        nxt = int(np.argmax(rt.forward([nxt])[-1]))
        steps.append(time.perf_counter() - t)
    st = rt.stats()
    rt.close()
    print(json.dumps({"step_median_s": statistics.median(steps), "step_mean_s": statistics.mean(steps),
                      "hit_rate": st.get("hit_rate"), "level_mix": st.get("level_mix"),
                      "budget_plan": st.get("budget")}), flush=True)


def run_edgemoe(package: Path, budget: int | None, tokens: int, prompt: str, timeout: int) -> dict:
    cg = Cgroup("edgemoe")
    try:
        evict(package)
        p = subprocess.Popen([sys.executable, __file__, "--worker", str(package), str(budget or 0),
                              str(tokens), prompt], preexec_fn=cg.join_fn(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "READY"
        base = cg.usage
        limit = int(base + budget) if budget else None
        if limit:
            cg.set_limit(limit)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"edgemoe worker failed ({p.returncode})")
        r = json.loads(out.strip().splitlines()[-1])
        r.update(tokens_per_s=1 / r["step_median_s"], cgroup_base=base, cgroup_peak=cg.peak,
                 limit=limit, failcnt=cg.failcnt)
        return r
    finally:
        cg.close()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        package, budget, tokens, prompt = sys.argv[2:6]
        _worker(package, int(budget) or None, int(tokens), prompt)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bench", type=Path, required=True, help="path to a built llama-bench")
    ap.add_argument("--gguf", type=Path, help="the demo model as an f16 GGUF (else --convert-from)")
    ap.add_argument("--convert-from", type=Path, help="llama.cpp source folder (convert_hf_to_gguf.py)")
    ap.add_argument("--package", type=Path, help="edgemoe package (default: the built-in demo's)")
    ap.add_argument("--fraction", type=float, default=0.5, help="budget as a share of the model size")
    ap.add_argument("--tokens", type=int, default=32, help="decode tokens per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration (median reported)")
    ap.add_argument("--prompt", default="In the beginning")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--json", type=Path, default=Path("bench_out/llamacpp_compare.json"))
    a = ap.parse_args()
    if os.geteuid() != 0 or not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        sys.exit("error: needs root and the cgroup v1 memory controller at /sys/fs/cgroup/memory "
                 "(run as root on a machine with cgroup v1, or in a privileged container)")
    if a.gguf is None:
        if a.convert_from is None:
            sys.exit("error: give --gguf MODEL.gguf or --convert-from LLAMA_CPP_DIR")
        a.gguf = convert(a.convert_from, Path(tempfile.mkdtemp()) / "tiny-moe-f16.gguf", "f16")
    if a.package is None:
        from edgemoe.demo import builtin_package
        a.package = builtin_package()
    model = a.gguf.stat().st_size
    budget = int(a.fraction * model)

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    rows = {}
    rows["llama.cpp unlimited"] = [run_llama(a.llama_bench, a.gguf, a.tokens, None, a.timeout)
                                   for _ in range(a.repeats)]
    overhead = med(rows["llama.cpp unlimited"], "cgroup_peak") - model
    rows["llama.cpp limited"] = [run_llama(a.llama_bench, a.gguf, a.tokens, overhead + budget, a.timeout)
                                 for _ in range(a.repeats)]
    rows["edgemoe resident"] = [run_edgemoe(a.package, None, a.tokens, a.prompt, a.timeout)
                                for _ in range(a.repeats)]
    rows["edgemoe budget"] = [run_edgemoe(a.package, budget, a.tokens, a.prompt, a.timeout)
                              for _ in range(a.repeats)]
    mib = 2 ** 20
    print(f"model: {a.gguf.name} {model / mib:.1f} MiB; budget {a.fraction:.0%} = {budget / mib:.1f} MiB; "
          f"llama.cpp start-up memory {overhead / mib:.1f} MiB; {a.tokens} decode tokens, 1 thread, "
          f"median of {a.repeats}")
    print(f"{'configuration':22s} {'tok/s':>9s} {'cgroup limit MiB':>17s} {'cgroup peak MiB':>16s} {'failcnt':>9s}")
    for name, runs in rows.items():
        lim = runs[0]["limit"]
        print(f"{name:22s} {med(runs, 'tokens_per_s'):9.1f} {(lim / mib if lim else float('nan')):17.1f} "
              f"{med(runs, 'cgroup_peak') / mib:16.1f} {med(runs, 'failcnt'):9.0f}")
    summary = {
        "llama_collapse": med(rows["llama.cpp unlimited"], "tokens_per_s") / med(rows["llama.cpp limited"], "tokens_per_s"),
        "edgemoe_vs_llama_limited": med(rows["edgemoe budget"], "tokens_per_s") / med(rows["llama.cpp limited"], "tokens_per_s"),
        "llama_unlimited_vs_edgemoe_resident": med(rows["llama.cpp unlimited"], "tokens_per_s") / med(rows["edgemoe resident"], "tokens_per_s"),
    }
    print(f"llama.cpp limited is {summary['llama_collapse']:.0f}x slower than unlimited; edgemoe at the "
          f"same budget decodes {summary['edgemoe_vs_llama_limited']:.1f}x faster than limited llama.cpp; "
          f"unlimited llama.cpp is {summary['llama_unlimited_vs_edgemoe_resident']:.1f}x faster than "
          f"resident edgemoe")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"model_bytes": model, "budget": budget, "fraction": a.fraction,
                                  "llama_overhead": overhead, "tokens": a.tokens, "runs": rows,
                                  "summary": summary}, indent=2, default=str))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
