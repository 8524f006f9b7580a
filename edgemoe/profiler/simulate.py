"""Replay a recorded routing through a policy at another cache size: which chunks each layer reads,
at which level each expert computes, what is prefetched (no files, no kernels).

It mirrors ``runtime/budgeted.py``: the policy (a pure ``schedulers`` object) plans each layer
against a ``CacheView``; drops apply first; a read that does not fit evicts the least recently used
experts this layer does not need; prefetches go in only if they fit; heat is the runtime's EMA.
Prefetch predictions are the next MoE layer's real experts, thinned to the prefetch recall the
recorded run achieved (its router-based predictor is right that often), the rest filled with wrong
guesses, so that bytes and stalls are neither flattered nor punished.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from edgemoe.runtime.budgeted import HEAT_DECAY
from edgemoe.schedulers import make_policy
from edgemoe.schedulers.base import CacheView, LayerRequest


@dataclass
class LayerPlan:
    layer: int
    reads: list = field(default_factory=list)       # (key, chunk index, bytes), in order
    compute: list = field(default_factory=list)     # (expert, bits, tokens, hit)
    prefetch: list = field(default_factory=list)    # (key, chunk index, bytes)


@dataclass
class StepPlan:
    kind: str
    tokens: int
    layers: list
    cache_used: int                                  # bytes held at the end of the step


def _h(*xs) -> int:
    return zlib.crc32(repr(xs).encode())


class CacheSim:
    def __init__(self, policy: str, capacity: int, facts: dict, level=None, recall: float | None = 1.0,
                 policy_args: dict | None = None):
        self.facts = facts
        self.ladder = tuple(facts["ladder"])
        self.chunk_bytes = tuple(facts["chunk_bytes"])
        self.capacity = int(capacity)
        self.level = None if level == "auto" else (self.ladder[-1] if level is None else int(level))
        keys = [(layer, e) for layer in facts["moe_layers"] for e in range(facts["num_experts"])]
        self.policy = make_policy(policy, experts=keys, **(policy_args or {}))
        self.recall = recall
        self.levels: dict = {}
        self.heat: dict = {}
        self._use: dict = {}
        self.last_use: dict = {}
        self.uses: dict = {}
        self.peak = 0

    def _prefix(self, bits: int) -> int:
        return 0 if not bits else sum(self.chunk_bytes[: self.ladder.index(bits) + 1])

    @property
    def used(self) -> int:
        return sum(self._prefix(b) for b in self.levels.values())

    def _predict(self, step: int, layer: int, nxt) -> tuple:
        """Predicted experts of the next MoE layer ``nxt`` = (layer, experts) or None."""
        if nxt is None or self.recall is None:
            return ()
        nl, experts = nxt
        real = sorted(experts, key=lambda e: _h(step, nl, e))
        keep = round(self.recall * len(real))
        wrong = sorted((e for e in range(self.facts["num_experts"]) if e not in experts),
                       key=lambda e: _h(step, nl, e, "x"))[: len(real) - keep]
        return tuple((nl, e) for e in sorted(real[:keep] + wrong))

    def layer(self, step: int, layer: int, needed, n_tokens: int, nxt=None) -> LayerPlan:
        needed = tuple(sorted((int(e), int(c)) for e, c in needed))
        view = CacheView(self.capacity, self.used, dict(self.levels), self.ladder, self.chunk_bytes,
                         self.heat, self.last_use, self.uses, frozenset())
        pred = self._predict(step, layer, nxt)
        plan = self.policy.plan(LayerRequest(step, layer, needed, self.level, pred), view)
        for key, keep in plan.drops:
            if keep:
                self.levels[key] = keep
            else:
                self.levels.pop(key, None)
        out = LayerPlan(layer)
        waiting = {(layer, e) for e, _ in needed}
        before = dict(self.levels)
        for key, idx in plan.loads:
            n = self.chunk_bytes[idx]
            while self.used + n > self.capacity:           # the engine's forced eviction (LRU)
                victims = [k for k in self.levels if k not in waiting and k != key]
                if not victims:
                    break
                self.levels.pop(min(victims, key=lambda k: (self.last_use.get(k, -1), k)))
            self.levels[key] = max(self.levels.get(key, 0), self.ladder[idx])
            out.reads.append((key, idx, n))
            self.peak = max(self.peak, self.used)
        counts = dict(needed)
        for e, bits in plan.compute:
            out.compute.append((e, bits, counts.get(e, 1), before.get((layer, e), 0) >= bits))
        for key, idx in plan.prefetch:
            have = self.ladder.index(self.levels[key]) + 1 if self.levels.get(key) else 0
            n = self.chunk_bytes[idx]
            if idx == have and self.used + n <= self.capacity:
                self.levels[key] = self.ladder[idx]
                out.prefetch.append((key, idx, n))
        self.peak = max(self.peak, self.used)
        for e, c in needed:
            key = (layer, e)
            self._use[key] = self._use.get(key, 0.0) + c / n_tokens
            self.uses[key] = self.uses.get(key, 0) + 1
            self.last_use[key] = step
        return out

    def end_step(self):
        for k in self.heat:
            self.heat[k] *= HEAT_DECAY
        for k, v in self._use.items():
            self.heat[k] = self.heat.get(k, 0.0) + (1 - HEAT_DECAY) * v
        self._use.clear()


def simulate(workload, capacity: int, policy: str | None = None, level="recorded") -> list[StepPlan]:
    """Per step of ``workload``, what the runtime would read and compute with an expert cache of
    ``capacity`` bytes under ``policy`` (default: the recorded one) at ``level`` (default: recorded)."""
    policy = policy or workload.config["policy"]
    level = workload.config["level"] if level == "recorded" else level
    args = None
    if policy in ("belady", "static"):
        from edgemoe.runtime.trace import accesses, heat_profile
        recs = list(workload.records)
        args = {"future": accesses(recs)} if policy == "belady" else {"profile": heat_profile(recs)}
    sim = CacheSim(policy, capacity, workload.facts, level, workload.prefetch_recall, args)
    out = []
    for s, (kind, tokens, layers) in enumerate(workload.steps):
        plans = []
        for j, (layer, needed) in enumerate(layers):
            nxt = (layers[j + 1][0], {e for e, _ in layers[j + 1][1]}) if j + 1 < len(layers) else None
            plans.append(sim.layer(s, layer, needed, tokens, nxt))
        sim.end_step()
        out.append(StepPlan(kind, tokens, plans, sim.used))
    return out
