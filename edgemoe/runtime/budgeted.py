"""Experts under a memory budget: cache + loader + policy, driven one MoE layer at a time.

Per layer: route -> ask the policy for a plan (pure) -> drop what it gives up (no I/O) -> queue the
chunk reads it orders -> compute each expert as soon as the chunks of its level have landed, while
later reads continue in the I/O threads -> queue the prefetch of predicted experts.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque

import numpy as np

from edgemoe.errors import BudgetError
from edgemoe.package.reader import Package
from edgemoe.runtime.cache import ExpertCache
from edgemoe.runtime.events import Event
from edgemoe.runtime.expert_rows import ExpertRows
from edgemoe.runtime.loader import Loader
from edgemoe.schedulers.base import CacheView, Heat, LayerRequest


HEAT_DECAY = 0.99  # per step: heat follows roughly the last hundred tokens' routing (best of 0.9-0.999 on a 336-token trace)


class BudgetedExperts:
    def __init__(self, pkg: Package, backend, capacity: int, policy, level: int | None,
                 io_threads: int = 2, direct: bool = True, read_delay_s: float = 0.0, trace=None,
                 events=None):
        self.pkg, self.backend, self.policy, self.level = pkg, backend, policy, level
        self.cache = ExpertCache(capacity, pkg.layout)
        self.loader = Loader(pkg, threads=io_threads, direct=direct, read_delay_s=read_delay_s,
                             events=events)
        self.events = events
        self.trace = trace
        self.step = 0
        self.heat = Heat(HEAT_DECAY)
        self.uses: dict = defaultdict(int)
        self.last_use: dict = {}
        self.stats = defaultdict(float)
        self.level_mix: dict = defaultdict(int)

    # ---- helpers ----
    def _view(self) -> CacheView:
        c = self.cache
        busy = frozenset(k for k, e in c.entries.items() if e.pending)
        return CacheView(c.capacity, c.used, c.levels(), c.ladder,
                         tuple(ch.length for ch in self.pkg.layout.chunks), self.heat,
                         self.last_use, self.uses, busy)

    def _harvest(self):
        """Land every finished read, in chunk order per expert (prefetches included)."""
        for key, e in list(self.cache.entries.items()):
            while e.pending:
                idx = len(e.chunks)
                fut = e.pending.get(idx)
                if fut is None or not fut.done():
                    break
                self.cache.land(key, idx, fut.result())

    def _ensure(self, key, bits) -> bool:
        """Wait until ``key`` holds level ``bits``; True if nothing had to be waited for."""
        e = self.cache.entries[key]
        want = self.cache.ladder.index(bits) + 1
        hit = True
        while len(e.chunks) < want:
            idx = len(e.chunks)
            fut = e.pending[idx]
            t0 = time.perf_counter()
            if not fut.done():
                hit = False
            self.cache.land(key, idx, self.loader.wait(fut))
            if self.events is not None and not hit:
                self.events(Event("wait", t0, time.perf_counter(), self.step, key[0], key[1], bits))
        return hit

    def _pump(self, queue: deque, waiting: set, force: bool = False) -> bool:
        """Submit queued reads while they fit. With ``force``, when the head does not fit, evict
        (least recently used first; experts still to compute this layer and reads in flight are
        never dropped) until it does. Returns whether anything was submitted or is in flight."""
        progressed = False
        while queue:
            key, idx = queue[0]
            n = self.cache.chunk_bytes(idx)
            if n > self.cache.free and force:
                victims = sorted((k for k, e in self.cache.entries.items()
                                  if k not in waiting and k != key and not e.pending),
                                 key=lambda k: (self.cache.entries[k].last_use, k))
                for v in victims:
                    if n <= self.cache.free:
                        break
                    self.cache.downgrade(v, 0)
            if n > self.cache.free:
                break
            self.cache.reserve(key, idx, self.loader.submit(*key, idx))
            queue.popleft()
            progressed = True
        if not progressed and force:
            # nothing fits: let a read in flight land (it may belong to a prefetch) and retry
            for key, e in list(self.cache.entries.items()):
                if e.pending:
                    idx = len(e.chunks)
                    self.cache.land(key, idx, self.loader.wait(e.pending[idx]))
                    return True
        return progressed

    # ---- the step ----
    def compute(self, layer: int, x: np.ndarray, experts: np.ndarray, weights: np.ndarray,
                predicted: tuple = ()) -> np.ndarray:
        """x [T, H] routed to experts [T, k] with weights [T, k] -> sum of weighted expert outputs."""
        self._harvest()
        rows = ExpertRows.of(experts)
        slot_of = {e: i for i, e in enumerate(rows.ids.tolist())}
        needed = tuple(zip(rows.ids.tolist(), rows.counts().tolist()))
        req = LayerRequest(self.step, layer, needed, self.level, tuple(predicted))
        plan = self.policy.plan(req, self._view())
        for key, keep in plan.drops:
            self.cache.downgrade(key, keep)
        bytes0 = self.loader.bytes_read
        queue = deque(plan.loads)
        waiting = {(layer, e) for e, _ in plan.compute}       # still to compute this layer
        self._pump(queue, waiting)
        xs = rows.gather(x)
        ys = np.zeros_like(xs)        # expert-major rows; summed once at the end, so the sum is
        t_compute, hits, used_bits = 0.0, [], []   # the resident runtime's, whatever the order
        for e, bits in plan.compute:
            key = (layer, e)
            want = self.cache.ladder.index(bits) + 1
            while True:   # the plan's reads may not all fit at once: stream them as room frees up
                entry = self.cache.entries.get(key)
                if entry is not None and len(entry.chunks) + len(entry.pending) >= want:
                    break
                if not self._pump(queue, waiting, force=True):
                    raise BudgetError(f"cannot fit layer {layer} expert {e} at {bits} bits in the "
                                      f"{self.cache.capacity:,}-byte expert cache; raise --budget")
            hits.append(self._ensure(key, bits))
            entry = self.cache.entries[key]
            handle = entry.handles.get(bits)
            if handle is None:
                handle = entry.handles[bits] = self.backend.load(self.pkg, layer, e, bits,
                                                                 entry.chunks[:want])
            lo, hi = rows.bounds[slot_of[e]], rows.bounds[slot_of[e] + 1]
            t0 = time.perf_counter()
            ys[lo:hi] = self.backend.run(handle, xs[lo:hi])
            t1 = time.perf_counter()
            t_compute += t1 - t0
            if self.events is not None:
                self.events(Event("compute", t0, t1, self.step, layer, e, bits, int(hi - lo)))
            used_bits.append(bits)
            self.level_mix[bits] += int(hi - lo)
            entry.last_use, entry.uses = self.step, entry.uses + 1
            waiting.discard(key)
            self._pump(queue, waiting)
        for key, idx in plan.prefetch:
            e = self.cache.entries.get(key)
            have = len(e.chunks) + len(e.pending) if e else 0
            if idx == have and self.cache.chunk_bytes(idx) <= self.cache.free:
                self.cache.reserve(key, idx, self.loader.submit(*key, idx))
        for e, c in needed:
            key = (layer, e)
            self.heat.use(key, c / len(x))
            self.uses[key] += 1
            self.last_use[key] = self.step
        self.stats["expert_calls"] += len(plan.compute)
        self.stats["hits"] += sum(hits)
        self.stats["compute_s"] += t_compute
        if self.trace is not None:
            count = dict(needed)
            self.trace.layer(self.step, layer, [e for e, _ in plan.compute],
                             [count[e] for e, _ in plan.compute], used_bits, hits,
                             self.loader.bytes_read - bytes0, t_compute)
        return rows.combine(ys, weights)

    def end_step(self):
        """Close a forward step: fold this step's routing into the heat (EMA over steps)."""
        if self.events is not None:
            now = time.perf_counter()
            self.events(Event("memory", now, now, self.step, nbytes=self.cache.used))
        self.heat.end_step()
        self.step += 1

    def close(self):
        self.loader.close()
