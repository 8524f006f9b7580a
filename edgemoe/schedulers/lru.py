"""lru: every expert at one level (the fixed level, or the top one); evict the least recently used."""
from __future__ import annotations

from edgemoe.schedulers.base import CacheView, LayerRequest, Plan, simple_plan


class LRU:
    name = "lru"

    def plan(self, req: LayerRequest, view: CacheView) -> Plan:
        bits = req.fixed_level or view.ladder[-1]
        return simple_plan(req, view, bits, lambda k: (view.last_use.get(k, -1), k))
