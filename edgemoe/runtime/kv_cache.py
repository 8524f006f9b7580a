"""The KV cache: per layer, K and V buffers [slots, KVH, capacity, D], preallocated and written in
place by the layer graphs (onnxruntime's GroupQueryAttention takes each buffer as both its past and
its present), so a decode step never copies the past. One slot per sequence of a batch.

Element types: float16 (the default: half of float32's bytes), float32 (exact: the parity tests) and
int8 (per-channel scales fixed per layer, calibrated at export). Slots in use are kept packed at the
low end (``release`` moves the last one into the gap), so the sequences that decode together are one
contiguous run of slots and one graph call per layer serves them all.

A sliding-window layer (gpt-oss) holds only its window: its buffers have ``window_capacity`` rows
whatever the context, and GroupQueryAttention's windowed cache (``sliding_window_cache``) keeps the
most recent positions at rows [0, L) and evicts ``WINDOW_SLACK + 1`` of them at once when full.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgemoe.arch import MoEArch
from edgemoe.errors import BudgetError, ConfigError
from edgemoe.package.graph_io import KV_DTYPES, KV_NUMPY, kv_bytes_per_token, kv_head_dim, kv_row_bytes

GROW_FROM = 256          # tokens a growable cache starts with; it doubles when a sequence needs more
WINDOW_SLACK = 32        # rows a windowed layer holds beyond its window: eviction every 33 tokens


def window_capacity(window: int) -> int:
    """Rows of a sliding layer's KV buffers (GroupQueryAttention needs at least the window)."""
    return int(window) + WINDOW_SLACK


def window_rows(tokens: int, capacity: int, window: int) -> int:
    """Rows [0, L) a windowed cache of ``capacity`` holds after ``tokens`` positions (onnxruntime's
    contract: L = T up to the capacity, then T - G * ceil((T - C) / G) with G = C - W + 1)."""
    if tokens <= capacity:
        return int(tokens)
    g = capacity - window + 1
    return int(tokens - g * -(-(tokens - capacity) // g))


def check_kv_dtype(kv_dtype: str) -> str:
    if kv_dtype not in KV_DTYPES:
        raise ConfigError(f"unknown KV cache type {kv_dtype!r}; choose one of {', '.join(KV_DTYPES)}")
    return kv_dtype


class KVCache:
    """K/V of ``slots`` sequences for ``capacity`` positions each.

    ``growable``: the capacity doubles (one copy of the filled cache) when a sequence would pass it,
    up to ``max_capacity`` (without a budget); otherwise a longer sequence is refused (the budget
    reserved exactly this cache).
    """

    def __init__(self, arch: MoEArch, capacity: int, slots: int = 1, kv_dtype: str = "f16",
                 growable: bool = False, max_capacity: int | None = None):
        self.arch, self.slots, self.kv_dtype = arch, int(slots), check_kv_dtype(kv_dtype)
        self.dtype = np.dtype(KV_NUMPY[kv_dtype])
        self.growable, self.max_capacity = growable, int(max_capacity or arch.max_position)
        self.lengths = np.zeros(self.slots, dtype=np.int64)    # tokens held per slot
        self.used = 0                                          # slots 0..used-1 belong to sequences
        self._alloc(int(capacity))

    def layer_capacity(self, layer: int, capacity: int | None = None) -> int:
        """Rows of ``layer``'s buffers: the cache's capacity, or a sliding layer's window's."""
        w = self.arch.window(layer)
        return window_capacity(w) if w else int(self.capacity if capacity is None else capacity)

    def held_rows(self, layer: int, tokens: int) -> int:
        """Rows of ``layer``'s buffers that hold a sequence of ``tokens`` positions."""
        w = self.arch.window(layer)
        return window_rows(tokens, window_capacity(w), w) if w else int(tokens)

    def _alloc(self, capacity: int, keep_windowed: bool = False):
        a = self.arch
        heads, dim = a.kv_heads_and_dim
        shape = lambda i: (self.slots, heads, self.layer_capacity(i, capacity), kv_head_dim(dim))  # noqa: E731
        old = (self.k, self.v) if keep_windowed else None
        # np.zeros maps untouched pages: memory becomes resident as positions fill
        self.k = [old[0][i] if old and a.window(i) else np.zeros(shape(i), self.dtype)
                  for i in range(a.num_layers)]
        # latent attention: one buffer is K and V (the layer graph reads both from it)
        self.v = [k if a.attention == "mla" else old[1][i] if old and a.window(i)
                  else np.zeros(shape(i), self.dtype) for i, k in enumerate(self.k)]
        self.capacity = capacity
        self._views: dict = {}

    # ---- slots ----
    def acquire(self) -> int:
        """A free slot (the lowest), emptied."""
        if self.used >= self.slots:
            raise BudgetError(f"all {self.slots} KV cache slots are in use; raise the batch size "
                              f"(max_batch / --parallel) or wait for a sequence to finish")
        slot = self.used
        self.used += 1
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> int | None:
        """Free ``slot``; the last slot in use moves into it (its filled prefix is copied once) so
        the slots in use stay packed. Returns the slot that moved into ``slot``, or None."""
        last = self.used - 1
        if not 0 <= slot <= last:
            raise ConfigError(f"KV cache slot {slot} is not in use")
        moved = None
        if slot != last:
            n = int(self.lengths[last])
            for i in range(self.arch.num_layers):
                rows = self.held_rows(i, n)
                for buf in {id(b): b for b in (self.k[i], self.v[i])}.values():
                    buf[slot, :, :rows] = buf[last, :, :rows]
            self.lengths[slot] = n
            moved = last
        self.lengths[last] = 0
        self.used -= 1
        return moved

    def reset(self):
        """Forget every sequence (slot 0 becomes the only slot in use)."""
        self.lengths[:] = 0
        self.used = 1

    # ---- positions ----
    def reserve(self, slot: int, new_tokens: int):
        """Make room for ``new_tokens`` more in ``slot`` (grows a growable cache)."""
        need = int(self.lengths[slot]) + new_tokens
        if need <= self.capacity:
            return
        if not self.growable or need > self.max_capacity:
            raise BudgetError(f"sequence of {need} tokens exceeds the {self.capacity}-token KV cache "
                              f"that was reserved; raise --context or shorten the prompt")
        cap = self.capacity
        while cap < need:
            cap *= 2
        cap = min(cap, self.max_capacity)
        old_k, old_v, n = self.k, self.v, int(self.lengths.max())
        self._alloc(cap, keep_windowed=True)      # windowed layers keep their buffers
        for new, old in zip((*self.k, *self.v), (*old_k, *old_v)):
            if new is not old:      # (an MLA layer's V is its K: copied twice, harmlessly)
                new[:, :, :n] = old[:, :, :n]

    def can_truncate(self, slot: int, tokens: int) -> bool:
        """Whether ``slot`` can be cut back to its first ``tokens`` positions in place: always for
        full layers; a windowed layer only while it still holds what the shorter prefix would
        (L(T - k) == L(T) - k, onnxruntime's rollback rule)."""
        n = int(self.lengths[slot])
        return all(self.held_rows(i, tokens) == self.held_rows(i, n) - (n - tokens)
                   for i in self.arch.sliding_layers)

    def advance(self, slot: int, new_tokens: int):
        self.lengths[slot] += new_tokens

    def ortvalues(self, layer: int, lo: int, hi: int):
        """K and V of slots lo..hi-1 of a layer as onnxruntime values over the buffers (no copy)."""
        key = (layer, lo, hi)
        v = self._views.get(key)
        if v is None:
            k = ort.OrtValue.ortvalue_from_numpy(self.k[layer][lo:hi])
            v = self._views[key] = (k, k if self.v[layer] is self.k[layer] else
                                    ort.OrtValue.ortvalue_from_numpy(self.v[layer][lo:hi]))
        return v

    # ---- sizes ----
    def nbytes(self) -> int:
        """Bytes of the buffers (reserved; pages become resident as they fill)."""
        return sum(b.nbytes for b in {id(b): b for b in (*self.k, *self.v)}.values())

    @staticmethod
    def bytes_per_token(arch: MoEArch, kv_dtype: str = "f16") -> int:
        """K and V of one more position, every full-attention layer (windowed ones are fixed)."""
        return kv_bytes_per_token(arch, check_kv_dtype(kv_dtype))

    @staticmethod
    def bytes_for(arch: MoEArch, tokens: int, kv_dtype: str = "f16", slots: int = 1) -> int:
        """Bytes a full cache of ``tokens`` positions in each of ``slots`` sequences takes (a
        sliding layer's at most its window's rows)."""
        per_layer = kv_row_bytes(arch, check_kv_dtype(kv_dtype))
        rows = sum(min(tokens, window_capacity(arch.window(i))) if arch.window(i) else tokens
                   for i in range(arch.num_layers))
        return per_layer * rows * slots
