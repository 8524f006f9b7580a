"""What a forecast replays: a recorded routing trace plus the facts and host timings needed to time it
again under another budget or on another board, without the package's weights.

``edgemoe profile`` writes them into the trace's header line under ``"profile"`` (the runtime's
readers ignore unknown header keys, so the file still replays with ``belady``/``static``). A plain
``edgemoe run --trace`` trace has the routing but not the timings; replaying it says how to record one.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgemoe.errors import BudgetError, ConfigError
from edgemoe.runtime.budget import fmt_size, parse_size
from edgemoe.runtime.trace import read_trace

META_KEY = "profile"
META_VERSION = 1


def package_id(pkg) -> str:
    """The id the runtime writes into trace headers, from the manifest alone."""
    return pkg.package_id


def package_facts(pkg) -> dict:
    """Sizes and shapes a forecast needs (no weights): layers, experts, chunk bytes, FLOPs."""
    a = pkg.arch
    return {"num_layers": a.num_layers, "moe_layers": list(a.moe_layers), "num_experts": a.num_experts,
            "top_k": a.top_k, "hidden_size": a.hidden_size, "intermediate_size": a.intermediate_size,
            "ladder": list(pkg.quant.ladder), "chunk_bytes": [c.length for c in pkg.layout.chunks],
            "expert_bytes": {str(b): pkg.level_bytes(b) for b in pkg.quant.ladder},
            "dense_bytes": pkg.dense_bytes(),
            # y = x W^T over every expert matrix: 2 N K FLOPs per token
            "expert_flops": 2 * sum(n * k for _, n, k in pkg.layout.matrices)}


@dataclass(frozen=True)
class Workload:
    """A recorded run, ready to replay: per step its kind, tokens and per-layer routing."""

    package_id: str
    facts: dict
    plan: dict                  # the recorded BudgetPlan (fixed parts, context)
    config: dict                # the recorded budget, policy, level
    timing: dict                # host timings (see timing.host_timing)
    host: dict                  # the host DeviceProfile the timings were measured on
    steps: tuple                # (kind, tokens, ((layer, ((expert, tokens), ...)), ...)) per step
    records: tuple              # the trace's per-(step, layer) records, as recorded
    prefetch_recall: float | None
    rss: dict                   # the recorded run's process memory

    @property
    def fixed_bytes(self) -> int:
        return self.plan["dense"] + self.plan["kv_cache"] + self.plan["work"]

    def resolve_budget(self, budget, level=None) -> tuple[int, int]:
        """(total, expert cache bytes) of ``budget`` for this package, as ``plan_budget`` does."""
        f = self.facts
        if isinstance(budget, str) and budget.strip().endswith("%"):
            total = self.fixed_bytes + parse_size(budget, reference=f["expert_bytes"][str(f["ladder"][-1])])
        else:
            total = parse_size(budget)
        minimum = self.minimum(level)
        if total < minimum:
            raise BudgetError(f"budget {fmt_size(total)} is below the minimum {fmt_size(minimum)} for "
                              f"this package (fixed part {fmt_size(self.fixed_bytes)} for "
                              f"{self.plan['context']} tokens of context); raise the budget to at "
                              f"least {fmt_size(minimum)}")
        return total, total - self.fixed_bytes

    def minimum(self, level=None) -> int:
        f = self.facts
        cb = f["chunk_bytes"]
        prefix = lambda bits: sum(cb[: f["ladder"].index(bits) + 1])   # noqa: E731
        one = max(f["top_k"] * prefix(f["ladder"][0]),
                  prefix(int(level)) if level not in (None, "auto") else 0)
        return self.fixed_bytes + one


def write_meta(trace_path, meta: dict, keep_steps: int | None = None) -> None:
    """Add the profiler's ``meta`` to a runtime trace's header line (atomically), keeping only the
    records of the first ``keep_steps`` steps (the measured prompts, not a perplexity pass)."""
    path = Path(trace_path)
    lines = path.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header[META_KEY] = {"version": META_VERSION, **meta}
    body = lines[1:]
    if keep_steps is not None:
        body = [x for x in body if x.strip() and json.loads(x)["step"] < keep_steps]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(header) + "\n")
        f.writelines(body)
    os.replace(tmp, path)


def load_workload(trace_path, expect_package: str | None = None) -> Workload:
    """A ``Workload`` from a trace written by ``edgemoe profile``; ``expect_package`` (a package id)
    refuses a trace recorded from another package."""
    header, records = read_trace(trace_path)
    if expect_package is not None and header.get("package") != expect_package:
        raise ConfigError(f"{trace_path} was recorded from another package ({header.get('package')!r:.60}"
                          f"...), not this one; record a trace of this package with `edgemoe profile "
                          f"PKG --out DIR` and replay DIR/traces/*.jsonl")
    meta = header.get(META_KEY)
    if not isinstance(meta, dict):
        raise ConfigError(f"{trace_path} has the routing but not the timings a forecast needs (it was "
                          f"recorded by `edgemoe run --trace`); record one with `edgemoe profile PKG "
                          f"--budgets B --out DIR` and replay DIR/traces/<budget>.jsonl")
    if meta.get("version") != META_VERSION:
        raise ConfigError(f"{trace_path}: profile meta version {meta.get('version')} is not "
                          f"{META_VERSION}; record the trace again with this edgemoe")
    if not records:
        raise ConfigError(f"{trace_path} has no routing records; record a longer run")
    facts = meta["facts"]
    kinds = meta["step_kinds"]
    by_step: dict = {}
    for r in records:
        by_step.setdefault(r["step"], []).append(r)
    steps = []
    for s in sorted(by_step):
        layers = []
        for r in sorted(by_step[s], key=lambda r: r["layer"]):
            toks = r.get("tokens") or [1] * len(r["experts"])
            layers.append((r["layer"], tuple(sorted(zip(r["experts"], toks)))))
        n_tok = max(1, round(sum(t for _, t in layers[0][1]) / facts["top_k"])) if layers else 1
        kind = kinds[s] if s < len(kinds) else ("prefill" if n_tok > 1 else "decode")
        steps.append((kind, n_tok, tuple(layers)))
    return Workload(package_id=header.get("package", ""), facts=facts, plan=meta["plan"],
                    config=meta["config"], timing=meta["timing"], host=meta["host"],
                    steps=tuple(steps), records=tuple(records),
                    prefetch_recall=meta.get("prefetch_recall"), rss=meta.get("rss", {}))
