"""Router logits -> (experts, weights) per token, for every routing kind of MoEArch (numpy).

Ties break toward the lower expert index, as torch.topk does on CPU.
"""
from __future__ import annotations

import numpy as np

from edgemoe.arch import MoEArch


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """indices [T, k] of the k largest, descending (stable: lower index first on ties)."""
    return np.argsort(-x, axis=-1, kind="stable")[:, :k]


def _sparsemixer_step(scores: np.ndarray, masked: np.ndarray, eps: float):
    """One PhiMoE step: pick argmax of ``masked``, weight = its softmax over the thresholded set."""
    top = masked.max(axis=-1, keepdims=True)                       # [T, 1]
    idx = masked.argmax(axis=-1)[:, None]
    factor = np.maximum(np.abs(scores), top)
    drop = (top - scores) / factor > 2 * eps
    gated = np.where(drop, -np.inf, masked)
    return idx, np.take_along_axis(_softmax(gated), idx, axis=-1)


def route(logits: np.ndarray, arch: MoEArch) -> tuple[np.ndarray, np.ndarray]:
    """logits [T, E] float32 -> experts [T, k] int64, weights [T, k] float32 (times routed_scaling)."""
    logits = logits.astype(np.float32)
    k = arch.top_k
    if arch.routing == "softmax_topk":
        probs = _softmax(logits)
        idx = _topk(probs, k)
        w = np.take_along_axis(probs, idx, axis=-1)
        if arch.norm_topk_prob:
            w = w / w.sum(axis=-1, keepdims=True)
    elif arch.routing == "topk_softmax":
        idx = _topk(logits, k)
        w = _softmax(np.take_along_axis(logits, idx, axis=-1))
    else:  # sparsemixer (top-2)
        i1, w1 = _sparsemixer_step(logits, logits, arch.router_jitter_noise)
        masked = logits.copy()
        np.put_along_axis(masked, i1, -np.inf, axis=-1)
        i2, w2 = _sparsemixer_step(logits, masked, arch.router_jitter_noise)
        idx, w = np.concatenate([i1, i2], -1), np.concatenate([w1, w2], -1)
    return idx.astype(np.int64), (w * arch.routed_scaling).astype(np.float32)
