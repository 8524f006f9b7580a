"""The scheduling protocol: pure decisions, no I/O, no kernels.

Each MoE layer step, the engine asks the policy for a ``Plan`` given the router's choice
(``LayerRequest``) and a read-only ``CacheView``; it then drops, loads and computes as planned.
Shared helpers here keep each policy module to what makes it different: which level to compute
at, which chunks to read in which order, and which experts to give up when space is short.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

Key = tuple[int, int]   # (layer, expert)


@dataclass(frozen=True)
class LayerRequest:
    step: int                                   # decode/prefill step counter (monotone)
    layer: int
    needed: tuple[tuple[int, int], ...]         # (expert, tokens routed to it) this layer needs now
    fixed_level: int | None = None              # --level K; None = auto (the policy picks)
    predicted: tuple[Key, ...] = ()             # experts predicted for upcoming layers (prefetch)


@dataclass(frozen=True)
class CacheView:
    capacity: int
    used: int                                   # resident + in flight
    levels: Mapping[Key, int]                   # bits resident once in-flight reads land
    ladder: tuple[int, ...]
    chunk_bytes: tuple[int, ...]                # bytes of chunk i (page-padded)
    heat: Mapping[Key, float] = field(default_factory=dict)
    last_use: Mapping[Key, int] = field(default_factory=dict)
    uses: Mapping[Key, int] = field(default_factory=dict)
    busy: frozenset = frozenset()               # keys with reads in flight (cannot be dropped now)

    def prefix(self, bits: int) -> int:
        return 0 if bits == 0 else sum(self.chunk_bytes[: self.ladder.index(bits) + 1])


@dataclass(frozen=True)
class Plan:
    drops: tuple[tuple[Key, int], ...]          # (key, bits to keep; 0 = evict), applied first
    loads: tuple[tuple[Key, int], ...]          # chunk reads (key, chunk index), in this order
    compute: tuple[tuple[int, int], ...]        # (expert, bits) in compute order
    prefetch: tuple[tuple[Key, int], ...] = ()  # chunk reads for later layers, after ``loads``


class Heat(dict):
    """Per-expert heat: an EMA over steps of the share of a step's tokens routed to the expert."""

    def __init__(self, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self._step: dict = {}

    def use(self, key: Key, share: float) -> None:
        self._step[key] = self._step.get(key, 0.0) + share

    def end_step(self) -> None:
        for k in self:
            self[k] *= self.decay
        for k, v in self._step.items():
            self[k] = self.get(k, 0.0) + (1 - self.decay) * v
        self._step.clear()


class Policy(Protocol):
    name: str

    def plan(self, req: LayerRequest, view: CacheView) -> Plan: ...


def chunk_reads(key: Key, have: int, want: int, ladder) -> list[tuple[Key, int]]:
    """The chunk indices that take ``key`` from ``have`` bits to ``want`` bits."""
    lo = ladder.index(have) + 1 if have else 0
    return [(key, i) for i in range(lo, ladder.index(want) + 1)] if want else []


def make_room(view: CacheView, need: int, protect: set, victims,
              targets: Mapping[Key, int] | None = None) -> tuple[list[tuple[Key, int]], int]:
    """Free ``need`` bytes: first downgrade experts above their target (no I/O), then walk
    ``victims`` (best victim first; a list, or a callable returning one, so the sort is only paid
    when room is short) evicting. Returns (drops, bytes freed)."""
    free = view.capacity - view.used
    drops, freed = [], 0
    if free >= need:
        return drops, 0
    if callable(victims):
        victims = victims()
    levels = dict(view.levels)
    if targets:
        for key in victims:
            t = targets.get(key, 0)
            if key in protect or key in view.busy or levels.get(key, 0) <= max(t, 0):
                continue
            keep = t if t else 0
            gain = view.prefix(levels[key]) - view.prefix(keep)
            drops.append((key, keep))
            freed += gain
            levels[key] = keep
            if free + freed >= need:
                return drops, freed
    for key in victims:
        if key in protect or key in view.busy or not levels.get(key):
            continue
        freed += view.prefix(levels[key])
        drops.append((key, 0))
        levels[key] = 0
        if free + freed >= need:
            break
    return drops, freed


def simple_plan(req: LayerRequest, view: CacheView, bits: int, victim_order: Callable[[Key], tuple]
                ) -> Plan:
    """A fixed-level plan: load each needed expert to ``bits`` (in request order), evicting by
    ``victim_order`` (smallest first) when short of space; shared by lru, lfu and belady."""
    keys = [(req.layer, e) for e, _ in req.needed]
    loads, need = [], 0
    for key in keys:
        have = view.levels.get(key, 0)
        r = chunk_reads(key, have, bits, view.ladder) if have < bits else []
        loads += r
        need += sum(view.chunk_bytes[i] for _, i in r)
    drops, _ = make_room(view, need, set(keys),
                         lambda: sorted((k for k in view.levels if k not in keys), key=victim_order))
    return Plan(tuple(drops), tuple(loads), tuple((e, bits) for e, _ in req.needed))


def assign_levels(keys_by_heat: list[Key], view: CacheView, capacity: int) -> dict[Key, int]:
    """Hottest-expert-bit-first level targets: every expert (hottest first) gets the lowest level
    while it fits in ``capacity``; then the hottest get the next level, and so on. Experts that do
    not fit even at the lowest level get 0 (streamed at the lowest level, kept only when hot)."""
    levels = {k: 0 for k in keys_by_heat}
    left = capacity
    prev = 0
    for bits in view.ladder:
        step = view.prefix(bits) - view.prefix(prev)
        for k in keys_by_heat:
            if levels[k] != prev:
                continue
            if step > left:
                break
            levels[k] = bits
            left -= step
        prev = bits
    return levels
