"""One memory budget for everything the process holds: dense weights, KV cache, work buffers, experts.

The fixed part is computed first; the rest goes to the expert cache. A budget that cannot hold one
token's worth of experts (top-k of a layer at the lowest level) is refused, saying the minimum.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from edgemoe.errors import BudgetError
from edgemoe.package.reader import Package
from edgemoe.runtime.kv_cache import KVCache

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}
# onnxruntime's own bookkeeping per dense session (graph, kernels, allocator), measured on CPU with
# the demo model: a few hundred KiB each; counted so the budget covers what the process really holds.
ORT_SESSION_OVERHEAD = 512 * 1024


def parse_size(text, reference: int | None = None) -> int:
    """'1.5GiB', '512MiB', '2GB', '123456' -> bytes; '50%' -> that share of ``reference``."""
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip().lower().replace(" ", "")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(%|[kmg]i?b?|b)?", s)
    if not m:
        raise BudgetError(f"cannot read the budget {text!r}; write it like 1.5GiB, 512MiB, 2GB or 50%")
    value, unit = float(m.group(1)), m.group(2) or ""
    if unit == "%":
        if reference is None:
            raise BudgetError(f"a percentage budget ({text}) needs a reference size")
        return int(reference * value / 100)
    return int(value * _UNITS[unit])


def fmt_size(n: int) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class BudgetPlan:
    budget: int
    dense: int          # dense graphs as onnxruntime holds them + tokenizer (measured, or estimated)
    kv_cache: int       # K and V for ``context`` tokens, every layer
    work: int           # transient buffers: activations, logits, one dequantized matrix
    experts: int        # what is left: the expert cache (resident + in-flight chunks)
    minimum: int        # smallest budget that runs
    context: int
    outside: int = 0    # held beside the runtime in the same process (the HTTP server), measured

    def to_dict(self) -> dict:
        return asdict(self)


def work_bytes(pkg: Package, max_tokens: int, context: int | None = None) -> int:
    """Transient memory of one step: activations and logits for ``max_tokens`` tokens, attention's
    probabilities (onnxruntime's GroupQueryAttention holds [heads, tokens, context] float32 for a
    prefill chunk late in the context), plus the planes kernel's reused buffers for the widest
    expert matrix: codes and one plane (uint8), the widened look-up indices (8 bytes per packed byte)
    and the float32 matrix, ~8 bytes a weight."""
    a = pkg.arch
    context = max(context or max_tokens, max_tokens)
    acts = max_tokens * 4 * (6 * a.hidden_size + 2 * a.intermediate_size + a.vocab_size
                             + a.num_heads * context)
    widest = max(n * (-(-k // pkg.quant.group_size)) * pkg.quant.group_size
                 for _, n, k in pkg.layout.matrices)
    return acts + 8 * widest


PREFILL_CHUNK = 128   # tokens per prefill pass under a budget (bounds the activations)


def plan_budget(pkg: Package, budget, context: int = 512, prefill_chunk: int = PREFILL_CHUNK,
                level: int | None = None, measured_fixed: int = 0, kv_dtype: str = "f16",
                batch: int = 1, measured_work: int = 0, or_minimum: float = 0.0,
                outside: int = 0) -> BudgetPlan:
    """Split ``budget`` into its parts.

    ``budget`` is bytes, a size ('1.5GiB'), or 'NN%': the fixed part (dense, KV cache, work) plus
    NN% of the experts at the top level, i.e. the share of the expert weights that fits. (A share
    of the whole package would be meaningless for dense-heavy models, whose fixed part alone can
    exceed 25% of the package.) ``measured_fixed``: the resident memory the runtime measured while
    loading the dense sessions and the tokenizer; it replaces the dense estimate when larger.
    ``batch`` sequences of ``context`` tokens each get their KV cache of ``kv_dtype`` reserved.
    ``measured_work``: the transient peak the runtime measured above that over a warm-up step of
    the largest planned shape; it replaces the work estimate when larger. ``or_minimum``: a budget
    below the minimum becomes the minimum times this (> 1) instead of an error. ``outside``: memory
    the process holds beside the runtime (``edgemoe serve``'s HTTP stack), part of the fixed part.
    """
    a = pkg.arch
    n_sessions = a.num_layers + 2
    dense = max(pkg.dense_bytes() + n_sessions * ORT_SESSION_OVERHEAD, int(measured_fixed))
    kv = KVCache.bytes_for(a, context, kv_dtype, slots=batch)
    # a step carries one prefill chunk beside the other sequences' decode tokens
    work = max(work_bytes(pkg, min(prefill_chunk, context) + batch - 1, context), int(measured_work))
    outside = int(outside)
    fixed = dense + kv + work + outside
    if isinstance(budget, str) and budget.strip().endswith("%"):
        total = fixed + parse_size(budget, reference=pkg.level_bytes(pkg.quant.top_bits))
    else:
        total = parse_size(budget)
    # one token's worth: top-k experts at the lowest level, and at least one at a fixed level
    one_token = max(a.top_k * pkg.layout.prefix_length(pkg.quant.ladder[0]),
                    pkg.layout.prefix_length(level) if level else 0)
    minimum = fixed + one_token
    if total < minimum and or_minimum:
        total = int(minimum * or_minimum)
    if total < minimum:
        raise BudgetError(f"budget {fmt_size(total)} is below the minimum {fmt_size(minimum)} for this "
                          f"package (dense {fmt_size(dense)}, KV cache for "
                          f"{f'{batch} x ' if batch > 1 else ''}{context} tokens "
                          f"{fmt_size(kv)}, work {fmt_size(work)}, "
                          + (f"server {fmt_size(outside)}, " if outside else "")
                          + f"{a.top_k} experts at "
                          f"{pkg.quant.ladder[0]} bits or one at the fixed level {fmt_size(one_token)}); raise --budget to at "
                          f"least {fmt_size(minimum)} or lower --context" + (" or the batch" if batch > 1 else ""),
                          minimum=minimum)
    return BudgetPlan(total, dense, kv, work, total - fixed, minimum, context, outside)
