"""hebf, hottest-expert-bit-first (the default).

- Levels: with ``--level K`` every expert computes at K. With ``auto``, targets come from
  ``assign_levels`` over the experts ordered by heat: all experts get the lowest level while the
  cache allows, then the hottest climb a level, and so on; an expert computes at its target (the
  lowest level if it has none), or higher if it is already resident higher.
- Loads: the chunks this layer needs, lowest chunk index first and, within a chunk index, hottest
  expert first (most tokens routed to it in this step, then heat), so every needed expert becomes
  computable as early as possible and the experts most of the batch waits on come first.
- Compute: experts already resident first (they hide the first reads), then in the order their
  last needed chunk was queued: each runs as soon as its chunk lands while the next reads proceed.
- Room: drop tail chunks of experts above their target first (no I/O), then evict the expert
  expected to be needed last (``_worth``: a Belady estimate from heat and layer order); experts
  predicted for the next layer are kept.
- Prefetch: the predicted experts of the next layer, lowest chunk only, if it fits without evicting
  anything hotter than them.
"""
from __future__ import annotations

from edgemoe.schedulers.base import (CacheView, Key, LayerRequest, Plan, assign_levels, chunk_reads,
                                     make_room)

REASSIGN_EVERY = 16      # steps between recomputing the level targets from heat
AUTO_SHARE = 0.9         # of the cache given to level targets; the rest is streaming room


class HEBF:
    name = "hebf"

    def __init__(self, experts: list[Key] | None = None):
        self._experts = experts or []
        self._layers = sorted({layer for layer, _ in self._experts})
        self._targets: dict[Key, int] = {}
        self._assigned_at = -REASSIGN_EVERY

    def _heat_order(self, view: CacheView, keys) -> list[Key]:
        return sorted(keys, key=lambda k: (-view.heat.get(k, 0.0), k))

    def targets(self, req: LayerRequest, view: CacheView) -> dict[Key, int]:
        if req.step - self._assigned_at >= REASSIGN_EVERY or not self._targets:
            keys = self._experts or sorted(set(view.heat) | set(view.levels))
            self._targets = assign_levels(self._heat_order(view, keys), view,
                                          int(view.capacity * AUTO_SHARE))
            self._assigned_at = req.step
        return self._targets

    def plan(self, req: LayerRequest, view: CacheView) -> Plan:
        keys = [(req.layer, e) for e, _ in req.needed]
        if req.fixed_level:
            want = {k: req.fixed_level for k in keys}
            targets = {}
        else:
            targets = self.targets(req, view)
            want = {k: max(targets.get(k, 0) or view.ladder[0], 0) for k in keys}
            # already resident higher: compute there (no reads); never below its target
            want = {k: max(want[k], view.levels.get(k, 0)) for k in keys}
        # hottest first: most rows routed to it in this step (a batch shares experts; at batch 1
        # every count is 1), then heat over recent steps
        count = {(req.layer, e): c for e, c in req.needed}
        by_heat = sorted(keys, key=lambda k: (-count[k], -view.heat.get(k, 0.0), k))
        reads = {k: chunk_reads(k, view.levels.get(k, 0), want[k], view.ladder)
                 if view.levels.get(k, 0) < want[k] else [] for k in keys}
        loads = sorted((r for k in by_heat for r in reads[k]),
                       key=lambda r: (r[1], by_heat.index(r[0])))
        need = sum(view.chunk_bytes[i] for _, i in loads)
        predicted = frozenset(req.predicted)
        drops, freed = make_room(
            view, need, set(keys),
            lambda: sorted((k for k in view.levels if k not in keys),
                           key=lambda k: (self._worth(k, req.layer, view, predicted),
                                          view.last_use.get(k, -1), k)),
            targets or None)
        hits = [k for k in by_heat if not reads[k]]
        last = {k: max(loads.index(r) for r in reads[k]) for k in keys if reads[k]}
        order = hits + sorted(last, key=last.get)
        prefetch = self._prefetch(req, view, targets, need - freed, set(keys))
        return Plan(tuple(drops), tuple(loads), tuple((k[1], want[k]) for k in order), prefetch)

    def _worth(self, key: Key, layer: int, view: CacheView, predicted=frozenset()) -> float:
        """1 / expected layer-steps until ``key`` is used again: its layer comes up in d steps
        (1 = the next layer) and is then chosen with probability p = heat, so the expected wait is
        d + n_layers * (1/p - 1): a Belady estimate from the routing statistics."""
        if key in predicted:
            return float("inf")
        n = max(len(self._layers), 1)
        here = self._layers.index(layer) if layer in self._layers else 0
        there = self._layers.index(key[0]) if key[0] in self._layers else here
        d = (there - here - 1) % n + 1
        p = min(view.heat.get(key, 0.0), 1.0)
        return 0.0 if p <= 0 else 1.0 / (d + n * (1.0 / p - 1.0))

    def _prefetch(self, req, view, targets, committed: int, protect: set) -> tuple:
        room = view.capacity - view.used - max(committed, 0)
        out = []
        for key in req.predicted:
            if key in protect or view.levels.get(key, 0):
                continue
            size = view.chunk_bytes[0]
            if size > room:
                break
            out.append((key, 0))
            room -= size
        return tuple(out)
