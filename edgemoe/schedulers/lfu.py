"""lfu: every expert at one level; evict the least frequently used (ties: least recently)."""
from __future__ import annotations

from edgemoe.schedulers.base import CacheView, LayerRequest, Plan, simple_plan


class LFU:
    name = "lfu"

    def plan(self, req: LayerRequest, view: CacheView) -> Plan:
        bits = req.fixed_level or view.ladder[-1]
        return simple_plan(req, view, bits,
                           lambda k: (view.uses.get(k, 0), view.last_use.get(k, -1), k))
