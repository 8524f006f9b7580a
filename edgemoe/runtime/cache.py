"""Byte-bounded expert cache: experts held at a level as a list of record chunks.

A resident expert at level ``ladder[j]`` holds chunks 0..j. Downgrading drops tail chunks (no I/O,
memory returned at once); evicting drops them all. Chunks being read count against the capacity from
the moment they are requested (``reserve``), so resident + in-flight bytes never exceed it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgemoe.errors import BudgetError

Key = tuple[int, int]  # (layer, expert)


@dataclass
class Entry:
    chunks: list = field(default_factory=list)   # landed chunk buffers, in order
    pending: dict = field(default_factory=dict)  # chunk index -> Future
    handles: dict = field(default_factory=dict)  # compute bits -> backend handle
    last_use: int = -1
    uses: int = 0


class ExpertCache:
    def __init__(self, capacity: int, layout):
        self.capacity = int(capacity)
        self.layout = layout
        self.ladder = layout.spec.ladder
        self.entries: dict[Key, Entry] = {}
        self._levels: dict[Key, int] = {}   # key -> target bits, kept up to date (schedulers read it)
        self.used = 0            # bytes of landed + pending chunks
        self.peak = 0

    # ---- read-only view for schedulers ----
    def level(self, key: Key) -> int:
        """Bits resident (landed) for ``key``; 0 if none."""
        e = self.entries.get(key)
        return self.ladder[len(e.chunks) - 1] if e and e.chunks else 0

    def target(self, key: Key) -> int:
        """Bits resident once pending reads land; 0 if none."""
        e = self.entries.get(key)
        if not e:
            return 0
        n = len(e.chunks) + len(e.pending)
        return self.ladder[n - 1] if n else 0

    def levels(self) -> dict[Key, int]:
        """key -> bits resident once pending reads land (a live dict: read it, do not change it)."""
        return self._levels

    def _sync(self, key: Key) -> None:
        bits = self.target(key)
        if bits:
            self._levels[key] = bits
        else:
            self._levels.pop(key, None)

    def chunk_bytes(self, index: int) -> int:
        return self.layout.chunks[index].length

    @property
    def free(self) -> int:
        return self.capacity - self.used

    # ---- mutation (engine only) ----
    def reserve(self, key: Key, index: int, future) -> None:
        n = self.chunk_bytes(index)
        if n > self.free:
            raise BudgetError(f"expert cache over capacity: {self.used} + {n} > {self.capacity}")
        e = self.entries.setdefault(key, Entry())
        e.pending[index] = future
        self.used += n
        self.peak = max(self.peak, self.used)
        self._sync(key)

    def land(self, key: Key, index: int, buf: Any) -> None:
        e = self.entries[key]
        e.pending.pop(index)
        if index != len(e.chunks):   # chunks land in order per expert (the engine waits in order)
            raise RuntimeError(f"chunk {index} of {key} landed out of order")
        e.chunks.append(buf)

    def downgrade(self, key: Key, bits: int) -> int:
        """Keep only the chunks of level ``bits`` (0 = evict). Returns bytes freed. Landed chunks only."""
        e = self.entries.get(key)
        if not e or e.pending:
            return 0
        keep = 0 if bits == 0 else self.ladder.index(bits) + 1
        freed = sum(self.chunk_bytes(i) for i in range(keep, len(e.chunks)))
        del e.chunks[keep:]
        for b in [b for b in e.handles if b > bits]:
            del e.handles[b]
        self.used -= freed
        if not e.chunks:
            del self.entries[key]
        self._sync(key)
        return freed
