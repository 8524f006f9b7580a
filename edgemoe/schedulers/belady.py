"""belady: the offline optimum on a recorded routing trace (evict the expert used furthest in the
future). A bound to measure the online policies against, not a policy for a live run."""
from __future__ import annotations

import bisect
from collections import defaultdict

from edgemoe.schedulers.base import CacheView, Key, LayerRequest, Plan, simple_plan


class Belady:
    name = "belady"

    def __init__(self, future: list[tuple[int, int, tuple[int, ...]]]):
        """``future``: the recorded accesses as (step, layer, experts) in execution order."""
        self._uses: dict[Key, list[int]] = defaultdict(list)
        for t, (step, layer, experts) in enumerate(future):
            for e in experts:
                self._uses[(layer, e)].append(t)
        self._clock = -1

    def _next_use(self, key: Key) -> int:
        uses = self._uses.get(key, [])
        i = bisect.bisect_right(uses, self._clock)
        return uses[i] if i < len(uses) else 1 << 60

    def plan(self, req: LayerRequest, view: CacheView) -> Plan:
        self._clock += 1      # one request per recorded (step, layer), in the same order
        bits = req.fixed_level or view.ladder[-1]
        return simple_plan(req, view, bits, lambda k: (-self._next_use(k), k))
