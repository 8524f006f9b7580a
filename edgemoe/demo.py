"""`edgemoe demo`: export the built-in model once (cached), then generate with live tokens and a report.

The built-in model is a small Mixtral trained by ``examples/train_tiny_moe.py`` on the World English
Bible; it ships inside the wheel as a Hugging Face checkpoint (``edgemoe/assets/tiny-moe``).
"""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgemoe.errors import PackageError
from edgemoe.quant.dense import DenseQuant

ASSET = Path(__file__).parent / "assets" / "tiny-moe"
DEFAULT_PROMPT = "In the beginning"
# int8 dense weights: a quarter of the dense memory for +0.01% held-out perplexity at level 8
# (34.116 -> 34.120), which is what lets the demo run in about half the model's size
DENSE = DenseQuant("int8", 64)


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEMOE_CACHE", Path.home() / ".cache" / "edgemoe"))


def builtin_checkpoint() -> Path:
    if not (ASSET / "config.json").exists():
        raise PackageError(f"the built-in model is missing from {ASSET}; reinstall edgemoe "
                           f"(pip install --force-reinstall edgemoe)")
    return ASSET


def model_bytes() -> int:
    """The built-in model's size as shipped: its fp16 checkpoint (what "half its size" refers to)."""
    return sum(f.stat().st_size for f in builtin_checkpoint().glob("*.safetensors"))


def builtin_package(progress=None) -> Path:
    """Export the built-in checkpoint into the cache once; later calls reuse it."""
    src = builtin_checkpoint()
    from edgemoe import __version__
    from edgemoe.package.constants import FORMAT_VERSION

    h = hashlib.sha256(f"{__version__}/{FORMAT_VERSION}/dense={DENSE.to_dict()}".encode())
    code = Path(__file__).parent          # the exporter's code, so a changed exporter re-exports
    for f in sorted([*code.glob("exporters/**/*.py"), *code.glob("package/*.py"), *code.glob("quant/*.py")]):
        h.update(hashlib.sha256(f.read_bytes()).digest())
    for f in sorted(src.iterdir()):
        if f.suffix in (".json", ".safetensors"):   # content, so retrained weights re-export
            h.update(f.name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    out = cache_dir() / f"tiny-moe-{h.hexdigest()[:12]}.edgemoe"
    if not (out / "manifest.yaml").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _export_in_child(src, out, show_progress=progress is not None)
        for old in out.parent.glob("tiny-moe-*.edgemoe"):   # exports of an older built-in model
            if old != out and (old / "manifest.yaml").exists():
                shutil.rmtree(old, ignore_errors=True)
    return out


def _export_in_child(src: Path, out: Path, show_progress: bool):
    """Export in a child process, so that the runtime which follows measures its fixed part in a
    process the exporter has not touched: the exporter's freed allocations (it loads the tokenizer,
    for one) would make a first run's measurement smaller, and so its expert cache bigger and its
    levels and text different, than every later run's."""
    cmd = [sys.executable, "-m", "edgemoe.cli", "export", str(src), "-o", str(out), "--overwrite",
           "--dense", DENSE.dtype, *([] if show_progress else ["--json"])]
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None if show_progress else subprocess.PIPE,
                       text=True)
    if p.returncode:
        detail = (p.stderr or "").strip().splitlines()[-1:] or ["see the messages above"]
        raise PackageError(f"exporting the built-in model into {out} failed ({detail[0]}); "
                           f"check that {out.parent} is writable, or set EDGEMOE_CACHE to a folder that is")


def run_context(prompt: str, max_new_tokens: int) -> int:
    """KV positions a run can need: a byte-level BPE gives at most one token per byte (+1 for BOS)."""
    return len(prompt.encode()) + 1 + max_new_tokens


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# over the smallest budget that runs, when that is above half the model: room for a few experts
MIN_SLACK = 1.05


def _runtime(pkg, level, budget, size: int, context: int):
    """The runtime under ``budget``; None: half the model's size, or (for long runs, whose KV cache
    and prefill buffers grow with the context) the smallest budget that runs plus 5%, decided in
    the same start-up that measures the fixed part (a second start in this process would measure
    less: it reuses the first one's freed memory)."""
    from edgemoe.runtime.engine import Runtime

    if budget is not None:
        return Runtime(pkg, level=level, budget=budget, context=context)
    return Runtime(pkg, level=level, budget=size // 2, context=context, budget_or_minimum=MIN_SLACK)


def run_demo(prompt: str, max_new_tokens: int, level, budget, sampling, echo, progress=None) -> dict:
    """Export (cached), generate under ``budget`` (None: half the model's size, or the smallest that
    runs +5% when that is more) with live output via ``echo``; return the report."""
    from edgemoe.runtime.streaming import stream_text

    t0 = time.perf_counter()
    pkg = builtin_package(progress)
    t_export = time.perf_counter() - t0
    size = model_bytes()
    rt = _runtime(pkg, level, budget, size, run_context(prompt, max_new_tokens))
    try:
        r = stream_text(rt, prompt, max_new_tokens, sampling, echo)
        st = rt.stats()
    finally:
        rt.close()
    plan = st["budget"]
    return {"package": str(pkg), "export_or_cache_s": round(t_export, 2), "level": level,
            "tokens": len(r.ids), "text": r.text,
            "time_to_first_token_s": round(r.prefill_seconds, 3),
            "decode_tokens_per_s": round(r.decode_tokens_per_s, 1),
            "budget_bytes": plan["budget"], "model_bytes": size, "expert_cache_bytes": plan["experts"],
            "dense_bytes": plan["dense"], "fixed_bytes": plan["budget"] - plan["experts"],
            "package_expert_bytes": rt.pkg.level_bytes(8),
            "hit_rate": st["hit_rate"], "expert_bytes_read": st["expert_bytes_read"],
            "level_mix": st["level_mix"], "prefetch_recall": st["prefetch_recall"],
            "peak_rss_bytes": peak_rss_bytes()}
