"""Per-layer KV cache, batch 1: K and V as [KVH, S, D] float32, grown by the layer graphs' outputs."""
from __future__ import annotations

import numpy as np

from edgemoe.arch import MoEArch


class KVCache:
    def __init__(self, arch: MoEArch):
        self.arch = arch
        self.reset()

    def reset(self):
        a = self.arch
        empty = np.zeros((a.num_kv_heads, 0, a.head_dim), dtype=np.float32)
        self._k = [empty] * a.num_layers
        self._v = [empty] * a.num_layers
        self.length = 0

    def get(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return self._k[layer], self._v[layer]

    def put(self, layer: int, k: np.ndarray, v: np.ndarray):
        """Store a layer's present K/V ([KVH, S, D], past included)."""
        self._k[layer], self._v[layer] = k, v

    def advance(self, new_tokens: int):
        self.length += new_tokens

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self._k, self._v))

    @staticmethod
    def bytes_for(arch: MoEArch, tokens: int) -> int:
        """Bytes a full cache of ``tokens`` positions takes (float32 K and V, every layer)."""
        return 2 * 4 * arch.num_layers * arch.num_kv_heads * arch.head_dim * tokens
