"""Replay a recorded routing sequence through a policy without running the model: bytes read per
step under a cache of a given capacity (pure: no files, no kernels).

It mirrors the engine's cache semantics: drops first, then reads; when a layer's reads do not all
fit, the least recently used experts not needed by this layer are evicted (as the engine's
streaming fallback does). Heat follows the same EMA as the runtime.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgemoe.schedulers.base import CacheView, Heat, Key, LayerRequest, Policy

HEAT_DECAY = 0.99


@dataclass(frozen=True)
class ReplayResult:
    steps: int
    bytes_total: int
    bytes_after_first: int      # excludes step 0 (the prompt's prefill)
    loads: int

    @property
    def bytes_per_step(self) -> float:
        return self.bytes_total / max(self.steps, 1)

    @property
    def bytes_per_decode_step(self) -> float:
        return self.bytes_after_first / max(self.steps - 1, 1)


def replay(policy: Policy, steps: list[list[tuple[int, tuple[int, ...], tuple[int, ...]]]],
           capacity: int, ladder: tuple[int, ...], chunk_bytes: tuple[int, ...],
           level: int | None = None, top_k: int = 2) -> ReplayResult:
    """``steps``: per step, per MoE layer in order, (layer, experts, tokens per expert); a step of
    T tokens routes k*T token-expert pairs, so an expert's share of the step is t * k / sum(t)."""
    def prefix(b):
        return sum(chunk_bytes[: ladder.index(b) + 1]) if b else 0

    levels: dict[Key, int] = {}
    heat, last, uses = Heat(HEAT_DECAY), {}, {}
    total = after_first = loads = 0
    for s, step in enumerate(steps):
        for layer, experts, tokens in step:
            used = sum(prefix(b) for b in levels.values())
            view = CacheView(capacity, used, dict(levels), ladder, chunk_bytes, heat, last, uses)
            req = LayerRequest(s, layer, tuple(zip(experts, tokens)), level)
            plan = policy.plan(req, view)
            for key, keep in plan.drops:
                if keep:
                    levels[key] = keep
                else:
                    levels.pop(key, None)
            for key, i in plan.loads:
                n = chunk_bytes[i]
                while sum(prefix(b) for b in levels.values()) + n > capacity:
                    victims = [k for k in levels if k != key and not (k[0] == layer and k[1] in experts)]
                    if not victims:
                        break
                    levels.pop(min(victims, key=lambda k: (last.get(k, -1), k)))
                levels[key] = max(levels.get(key, 0), ladder[i])
                total += n
                after_first += n if s else 0
                loads += 1
            pairs = sum(tokens) or 1
            for e, t in zip(experts, tokens):
                key = (layer, e)
                last[key], uses[key] = s, uses.get(key, 0) + 1
                heat.use(key, t * top_k / pairs)
        heat.end_step()
    return ReplayResult(len(steps), total, after_first, loads)


def steps_from_trace(records: list[dict]) -> list[list[tuple[int, tuple[int, ...], tuple[int, ...]]]]:
    """Group a trace's records into steps: [(layer, experts, tokens), ...] per step, in order."""
    steps: dict[int, list] = {}
    for r in records:
        steps.setdefault(r["step"], []).append(
            (r["layer"], tuple(r["experts"]), tuple(r.get("tokens") or [1] * len(r["experts"]))))
    return [steps[k] for k in sorted(steps)]
