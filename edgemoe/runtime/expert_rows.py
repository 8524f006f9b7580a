"""A layer's routing as expert-major rows, and the weighted sum back (vectorised numpy).

``experts [T, k]`` (each token's chosen experts, distinct per token) become one row per
(token, slot) pair, grouped by expert: ``order [T*k]`` lists the flat pairs expert by expert
(stable: token order inside an expert), ``ids [n]`` the distinct experts in that order and
``bounds [n + 1]`` where each one's rows start. The experts' outputs ``ys [T*k, H]`` in that order
are put back per pair and summed with the routing weights by ``einsum`` (its C loop adds the k
slots in order for each element: the same bits as a slot-by-slot sum, and a row's sum is the same
whatever else is in the batch, which a batched matmul does not promise; checked in the tests). No
per-expert Python beyond the grouped call itself, and few numpy calls: between two experts' kernels
the caches are cold, where each numpy call costs 3-7x its warm time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExpertRows:
    ids: np.ndarray       # [n] distinct experts, ascending
    order: np.ndarray     # [T*k] flat (token, slot) indices, grouped by expert
    bounds: np.ndarray    # [n + 1] row offsets of each expert's group
    tokens: int           # T
    k: int

    @classmethod
    def of(cls, experts: np.ndarray) -> "ExpertRows":
        t, k = experts.shape
        flat = experts.reshape(-1)
        order = np.argsort(flat, kind="stable")
        ranked = flat[order]
        if t == 1:      # one token's experts are distinct: one row each
            return cls(ranked, order, np.arange(k + 1), t, k)
        starts = np.flatnonzero(np.concatenate(([True], ranked[1:] != ranked[:-1])))
        return cls(ranked[starts], order, np.append(starts, flat.size), t, k)

    def counts(self) -> np.ndarray:
        """[n] rows (tokens) routed to each expert of ``ids``."""
        return np.diff(self.bounds)

    def gather(self, x: np.ndarray) -> np.ndarray:
        """x [T, H] -> xs [T*k, H]: each pair's token row, expert by expert."""
        return x[self.order // self.k]

    def combine(self, ys: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """ys [T*k, H] (in ``order``) and weights [T, k] -> sum_j weights[t, j] * y[t, j]: [T, H]."""
        full = np.empty_like(ys)
        full[self.order] = ys
        return np.einsum("tk,tkh->th", weights.astype(ys.dtype, copy=False),
                         full.reshape(self.tokens, self.k, -1))
