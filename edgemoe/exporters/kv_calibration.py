"""Per-channel scales of the int8 KV cache, calibrated once at export on a probe.

onnxruntime's GroupQueryAttention quantizes K and V into an int8 cache with fixed per-channel
scales [KVH*D] per layer. The exporter runs the staged package (exact f32 cache, experts at the
lowest level streamed on their record bytes under a budget of a tenth of them: K/V barely depend on
the experts' precision, and the run's memory stays bounded whatever the model's size; every expert
resident ran a 24-layer Qwen3-30B-A3B-shaped export out of 24 GiB) over a probe of tokens, takes
each channel's largest |K| and |V|, and leaves headroom for what the probe did not show (values
beyond it saturate).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PROBE_TOKENS = 96
HEADROOM = 1.5           # scale = HEADROOM * max|x| / 127
CALIBRATION_BUDGET = "10%"   # of the experts at the top level, beside the fixed part
PROBE_TEXT = ("The quick brown fox jumps over the lazy dog. In the beginning was the word, and "
              "numbers like 3.14159 or 2026 sit beside names, code such as x = f(y) + 1; and "
              "questions: what is the capital of France? Answer briefly, then explain why.")


def _probe_ids(pkg_dir: Path, rt) -> list[int]:
    ids = rt.encode(PROBE_TEXT) if rt.pkg.tokenizer_file is not None else []
    rng = np.random.default_rng(0)      # spread over the vocabulary to fill the rest
    extra = rng.integers(0, rt.arch.vocab_size, max(PROBE_TOKENS - len(ids), 0)).tolist()
    return (ids + extra)[:PROBE_TOKENS]


def calibrate_kv_scales(pkg_dir) -> bytes:
    """The staged package at ``pkg_dir`` -> scales [L, 2, KVH*D] float32 (little-endian bytes)."""
    from edgemoe.package.reader import Package
    from edgemoe.runtime.engine import Runtime

    lowest = Package(pkg_dir).quant.ladder[0]
    rt = Runtime(pkg_dir, kv_dtype="f32", backend="planes", level=lowest, context=PROBE_TOKENS,
                 budget=CALIBRATION_BUDGET, budget_or_minimum=1.2, prefetch=False)
    try:
        ids = _probe_ids(Path(pkg_dir), rt)[:rt.arch.max_position]
        rt.forward(ids)
        n = len(ids)
        out = []
        for i, (k, v) in enumerate(zip(rt.kv.k, rt.kv.v)):
            # [KVH, n, D] -> per channel (head-major, as the graph's [KVH*D] scale input); a
            # windowed layer holds its last rows only; an MLA layer's K and V are one buffer
            rows = rt.kv.held_rows(i, n)
            out.append([np.abs(b[0, :, :rows]).max(axis=1).reshape(-1) for b in (k, v)])
    finally:
        rt.close()
    s = np.asarray(out, dtype=np.float32) * (HEADROOM / 127.0)
    return np.maximum(s, np.float32(1e-8)).astype("<f4").tobytes()
