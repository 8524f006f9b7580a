"""static: per-expert levels fixed once from a heat profile (as EdgeMoE does), evicting LRU.

The profile is a map (layer, expert) -> heat, e.g. routing counts from a recorded trace of a
calibration run; levels come from the same bit-first assignment hebf uses, but never change.
"""
from __future__ import annotations

from edgemoe.schedulers.base import (CacheView, Key, LayerRequest, Plan, assign_levels, chunk_reads,
                                     make_room)


class Static:
    name = "static"

    def __init__(self, profile: dict[Key, float]):
        self.profile = dict(profile)
        self._levels: dict[Key, int] | None = None

    def plan(self, req: LayerRequest, view: CacheView) -> Plan:
        if self._levels is None:
            order = sorted(self.profile, key=lambda k: (-self.profile[k], k))
            self._levels = assign_levels(order, view, int(view.capacity * 0.9))
        keys = [(req.layer, e) for e, _ in req.needed]
        want = {k: req.fixed_level or self._levels.get(k, 0) or view.ladder[0] for k in keys}
        loads = []
        for k in keys:
            have = view.levels.get(k, 0)
            if have < want[k]:
                loads += chunk_reads(k, have, want[k], view.ladder)
        need = sum(view.chunk_bytes[i] for _, i in loads)
        drops, _ = make_room(view, need, set(keys),
                             lambda: sorted((k for k in view.levels if k not in keys),
                                            key=lambda k: (view.last_use.get(k, -1), k)))
        return Plan(tuple(drops), tuple(loads), tuple((k[1], max(want[k], 0)) for k in keys))
